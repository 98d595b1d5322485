"""The small frozen value types the partition log takes and answers: its settings, what an
append or a read answers, and descriptions of its segments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from partitions.batch import BatchBytes, Record
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_name


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Per-partition storage settings (from the topic config)."""

    segment_bytes: int = 128 * 1024 * 1024
    segment_ms: int = 60 * 60 * 1000
    index_interval_bytes: int = 4096
    max_record_bytes: int = 1024 * 1024
    max_batch_bytes: int = 64 * 1024 * 1024
    # Bytes written by one group commit; a larger backlog is written by the next one.
    max_group_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "segment_bytes",
            "segment_ms",
            "index_interval_bytes",
            "max_record_bytes",
            "max_batch_bytes",
            "max_group_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.segment_bytes >= 1 << 32:
            raise ValueError("segment_bytes must be below 4 GiB (index positions are u32)")


class AppendResult(NamedTuple):
    """Where an append's records went. A named tuple: one is made for every append."""

    base_offset: int
    record_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: list[Record]
    next_offset: int
    high_watermark: int
    start_offset: int
    sealed: bool


@dataclass(frozen=True, slots=True)
class BatchRead:
    """Whole stored batches, as they are on disk.

    ``first_offset`` is the first record offset in ``data``; it may lie below the offset
    asked for, because batches are not split: a reader skips the records before it.
    """

    data: BatchBytes
    first_offset: int
    next_offset: int
    high_watermark: int
    start_offset: int
    sealed: bool


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    base_offset: int
    next_offset: int
    size_bytes: int
    active: bool
    # Known for segments described by :meth:`PartitionLog.segment_details`; else None.
    first_timestamp_ms: int | None = None
    max_timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SegmentFiles:
    """The three files of one segment (they exist while the segment is in the log)."""

    log: Path
    index: Path
    time_index: Path

    @classmethod
    def of(cls, directory: Path, base_offset: int) -> SegmentFiles:
        name = segment_name(base_offset)
        return cls(
            directory / (name + LOG_SUFFIX),
            directory / (name + INDEX_SUFFIX),
            directory / (name + TIME_INDEX_SUFFIX),
        )


@dataclass(frozen=True, slots=True)
class LogStats:
    # The log start: the first offset readers may ask for, locally or (tiered) remotely.
    start_offset: int
    end_offset: int
    # The first offset whose segment is on local disk (at or below ``start_offset`` unless
    # local retention removed uploaded segments); ``size_bytes`` counts local bytes.
    local_start_offset: int
    size_bytes: int
    segment_count: int
    sealed: bool
    group_commits: int
    appends: int
    # Seconds the writer spent in write+fsync: divided by wall time, how busy the disk was.
    sync_seconds: float
    # Times a waiting reader was woken (one per publish it saw; polling would show many).
    wait_wakeups: int
