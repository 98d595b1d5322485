"""A SIGKILL in the middle of a split or merge: it happened whole or not at all."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from partitions.catalog import PartitionRecord
from partitions.catalog_sqlite import SqliteCatalog
from tests.catalog_checks import assert_lineage_invariants
from tests.servers import run_until_killed

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 15


def _run_until_killed(path: Path, seed: int, rng: random.Random) -> list[str]:
    return run_until_killed(
        "tests.catalog_crash_child",
        [str(path), str(seed)],
        ready=b"READY\n",
        prefix="DONE",
        rng=rng,
        kill_after=(0.05, 0.5),
    )


async def _partitions(path: Path) -> list[PartitionRecord]:
    catalog = await SqliteCatalog.open(path)
    try:
        return await catalog.list_partitions("acme", "orders")
    finally:
        await catalog.close()


@pytest.mark.slow
def test_a_killed_split_or_merge_is_never_half_done(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    rng = random.Random(1234)
    reported: set[int] = set()
    total_changes = 0
    for _ in range(ROUNDS):
        done = _run_until_killed(path, rng.randrange(1 << 30), rng)
        for line in done:
            reported.update(int(i) for i in line.split()[1].split(","))
        total_changes += len(done)
        partitions = asyncio.run(_partitions(path))
        assert_lineage_invariants(partitions)
        ids = {p.partition_id for p in partitions}
        # Every change the child reported committed is there...
        assert reported <= ids
        # ...and beyond them, at most the one change in flight at the kill (1 or 2 ids).
        assert len(ids - reported - {0}) <= 2
        reported = ids - {0}
    assert total_changes > 200, "the child barely ran; the test proved little"
