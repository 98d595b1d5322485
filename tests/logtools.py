"""Helpers shared by the log tests and the crash-test child process."""

from __future__ import annotations

from partitions.batch import NewRecord, Record
from partitions.log import PartitionLog


def record(value: str, *, key: str | None = None, ts: int | None = None) -> NewRecord:
    return NewRecord(
        value=value.encode(),
        key=None if key is None else key.encode(),
        timestamp_ms=ts,
        key_is_text=key is not None,
        value_is_text=True,
    )


async def read_all(log: PartitionLog, start: int | None = None) -> list[Record]:
    """Every record from ``start`` (default: the log start) to the high watermark."""
    offset = log.start_offset if start is None else start
    out: list[Record] = []
    while offset < log.high_watermark:
        result = await log.read(offset, max_records=10_000, max_bytes=16 * 1024 * 1024)
        out.extend(result.records)
        offset = result.next_offset
    return out
