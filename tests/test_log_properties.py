"""Property: whatever happens to the unacknowledged tail, reopening yields an acknowledged
prefix followed by whole batches of the tail, in order, with no gap."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitions.batch import NewRecord, encode_batch, with_base_offset
from partitions.log.layout import list_segment_bases, segment_name
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from tests.logtools import read_all

values_strategy = st.lists(st.binary(max_size=300), min_size=1, max_size=5)
damages = st.sampled_from(
    ["none", "truncate", "garbage", "flip", "zeros", "index_garbage", "index_truncate"]
)


async def _scenario(
    directory: Path,
    config: LogConfig,
    batches: list[list[bytes]],
    concurrency: int,
    tail: list[list[bytes]],
    damage: str,
    cut: float,
    garbage: bytes,
) -> None:
    log = await PartitionLog.open(directory, config)
    acknowledged: list[bytes] = []
    for start in range(0, len(batches), concurrency):
        group = batches[start : start + concurrency]
        results = await asyncio.gather(
            *(log.append_records([NewRecord(value=v) for v in values]) for values in group)
        )
        # Each future resolved in call order with contiguous offsets.
        for result, values in zip(results, group, strict=True):
            assert result.base_offset == len(acknowledged)
            acknowledged.extend(values)
    end = log.high_watermark
    await log.close()

    # Bytes that reached the file but were never acknowledged: what a crash leaves behind.
    last = directory / f"{segment_name(list_segment_bases(directory)[-1])}.log"
    durable_size = last.stat().st_size
    tail_bytes = b""
    offset = end
    for values in tail:
        batch = encode_batch([NewRecord(value=v) for v in values], now_ms=1, max_record_bytes=1024)
        tail_bytes += with_base_offset(batch, offset)
        offset += len(values)
    with last.open("ab") as f:
        f.write(tail_bytes)
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        del data[durable_size + int(len(tail_bytes) * cut) :]
    elif damage == "garbage":
        data += garbage
    elif damage == "flip" and tail_bytes:
        data[durable_size + int((len(tail_bytes) - 1) * cut)] ^= 0x5A
    elif damage == "zeros":
        data += bytes(len(garbage))
    last.write_bytes(bytes(data))
    index = last.with_suffix(".index")
    if damage == "index_garbage":
        index.write_bytes(index.read_bytes() + garbage)
    elif damage == "index_truncate":
        raw = index.read_bytes()
        index.write_bytes(raw[: int(len(raw) * cut)])

    reopened = await PartitionLog.open(directory, config)
    records = await read_all(reopened, 0)
    got = [r.value for r in records]
    assert [r.offset for r in records] == list(range(len(records)))
    assert got[: len(acknowledged)] == acknowledged
    # Past the acknowledged prefix: only whole tail batches, in order.
    rest = got[len(acknowledged) :]
    whole: list[bytes] = []
    prefixes = [list(whole)]
    for values in tail:
        whole.extend(values)
        prefixes.append(list(whole))
    assert rest in prefixes
    # And the log goes on from where recovery left it.
    more = await reopened.append_records([NewRecord(value=b"after")])
    assert more.base_offset == len(got)
    await reopened.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(values_strategy, min_size=1, max_size=30),
    concurrency=st.integers(min_value=1, max_value=8),
    tail=st.lists(values_strategy, min_size=1, max_size=4),
    damage=damages,
    cut=st.floats(min_value=0, max_value=1),
    garbage=st.binary(min_size=1, max_size=200),
    segment_bytes=st.integers(min_value=512, max_value=8192),
    index_interval=st.integers(min_value=32, max_value=1024),
)
def test_reopen_yields_an_acknowledged_prefix(
    batches: list[list[bytes]],
    concurrency: int,
    tail: list[list[bytes]],
    damage: str,
    cut: float,
    garbage: bytes,
    segment_bytes: int,
    index_interval: int,
) -> None:
    config = LogConfig(segment_bytes=segment_bytes, index_interval_bytes=index_interval)
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(
            _scenario(Path(directory), config, batches, concurrency, tail, damage, cut, garbage)
        )
