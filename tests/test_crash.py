"""Crash safety with real processes: SIGKILL at a random moment, many times."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from partitions.batch import Record
from partitions.log.partition_log import PartitionLog
from tests.crash_child import CONFIG
from tests.logtools import read_all
from tests.servers import run_until_killed

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 25


def _run_until_killed(directory: Path, tag: str, seed: int, rng: random.Random) -> list[str]:
    # Sometimes before the first append, mostly mid-stream.
    return run_until_killed(
        "tests.crash_child",
        [str(directory), tag, str(seed)],
        ready=b"\n",
        prefix="ACK",
        rng=rng,
        kill_after=(0.0, 0.6),
    )


async def _read_back(directory: Path) -> list[Record]:
    log = await PartitionLog.open(directory, CONFIG)
    try:
        return await read_all(log, 0)
    finally:
        await log.close()


@pytest.mark.slow
def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(0xC0FFEE)
    acknowledged: dict[int, bytes] = {}  # offset -> value prefix "producer:seq:"
    for round_no in range(ROUNDS):
        lines = _run_until_killed(tmp_path, f"r{round_no}", rng.randrange(1 << 30), rng)
        for line in lines:
            _, producer, seq, count, base = line.split()
            for i in range(int(count)):
                offset = int(base) + i
                assert offset not in acknowledged, f"offset {offset} acknowledged twice"
                acknowledged[offset] = f"{producer}:{int(seq) + i}:".encode()

        records = asyncio.run(_read_back(tmp_path))
        assert [r.offset for r in records] == list(range(len(records))), "a gap or reorder"
        for offset, prefix in acknowledged.items():
            assert offset < len(records), f"acknowledged offset {offset} lost in round {round_no}"
            assert records[offset].value.startswith(prefix), (offset, prefix)
        # Per producer, sequence numbers rise with offsets: appends kept their order.
        last_seq: dict[str, int] = {}
        for record in records:
            producer, seq, _ = record.value.split(b":", 2)
            name = producer.decode()
            assert int(seq) > last_seq.get(name, -1)
            last_seq[name] = int(seq)
    assert len(acknowledged) > 1000, "the child barely ran; the test proved little"
