"""The remote segments a cold read goes through, and the ranges of their logs it spans.

A :class:`RemoteSegment` is one copy-finished catalog row with its object keys; a
:class:`SegmentRun` is the segments a read may cross, from the one holding its offset on,
without a gap; :func:`plan_ranges` cuts a byte budget into ranges over that run. The errors
are those of a segment that is not in the store, or not what its row and headers say.
"""

from __future__ import annotations

import bisect
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from partitions.batch import BATCH_HEADER, FORMAT_VERSION, BatchHeader
from partitions.catalog import RemoteSegmentRecord
from partitions.errors import CorruptLogError
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX
from partitions.partition_key import PartitionKey
from tiered_storage.layout import segment_key

# A batch header's smallest honest length field (see partitions.segment).
_MIN_BATCH_LENGTH = BATCH_HEADER.size - struct.calcsize(">QI")
_HEADER = BATCH_HEADER.size


class RemoteSegmentMissingError(CorruptLogError):
    """A copy-finished segment's object is not in the store, though its offsets are still
    above the log start: the store lost it, or something other than this server deleted it.
    (A segment that retention removed during a read answers 416 instead.)"""

    code = "remote_segment_missing"


class RemoteSegmentDamagedError(CorruptLogError):
    """A remote segment's bytes are not what its catalog row and its own headers say."""

    code = "remote_segment_damaged"


@dataclass(frozen=True, slots=True)
class RemoteSegment:
    """One copy-finished remote segment, with its object keys."""

    base_offset: int
    last_offset: int
    size: int
    max_timestamp_ms: int
    log_key: str
    index_key: str
    time_key: str

    @classmethod
    def of(cls, key: PartitionKey, row: RemoteSegmentRecord) -> RemoteSegment:
        base, epoch = row.base_offset, row.epoch  # the keys of the copy the row names
        return cls(
            base,
            row.last_offset,
            row.size_bytes,
            row.max_timestamp_ms,
            segment_key(key, base, LOG_SUFFIX, epoch),
            segment_key(key, base, INDEX_SUFFIX, epoch),
            segment_key(key, base, TIME_INDEX_SUFFIX, epoch),
        )

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


def checked_header(
    seg: RemoteSegment, header: BatchHeader, position: int, expected: int
) -> BatchHeader:
    """``header``, read at ``position`` of ``seg``, if it is a whole batch that starts at
    offset ``expected``."""
    if (
        header.version != FORMAT_VERSION
        or header.record_count < 1
        or header.batch_length < _MIN_BATCH_LENGTH + header.producer_tag_length
        or header.base_offset != expected
        or position + header.total_size > seg.size
    ):
        raise RemoteSegmentDamagedError(
            f"{seg.log_key}: no batch for offset {expected} at byte {position}"
        )
    return header


class SegmentRun:
    """The partition's remote segments from index ``first`` of ``rows`` on, while they
    start below ``end_offset`` and follow each other without a gap: made lazily, since a
    read of small segments may cross many and most reads cross one."""

    def __init__(
        self, key: PartitionKey, rows: list[RemoteSegmentRecord], first: int, end_offset: int
    ) -> None:
        self._key = key
        self._rows = rows
        self._first = first
        self._end_offset = end_offset
        self._made: list[RemoteSegment] = []

    def _make(self, i: int) -> RemoteSegment | None:
        """Segment ``i`` of the run, or None past its end."""
        while len(self._made) <= i:
            j = self._first + len(self._made)
            if j >= len(self._rows):
                return None
            row = self._rows[j]
            if row.base_offset >= self._end_offset:
                return None
            if self._made and row.base_offset != self._made[-1].next_offset:
                return None
            self._made.append(RemoteSegment.of(self._key, row))
        return self._made[i]

    def __iter__(self) -> Iterator[RemoteSegment]:
        return self._from(0)

    def after(self, seg: RemoteSegment) -> Iterator[RemoteSegment]:
        """The segments that follow ``seg`` in this run."""
        return self._from(next(n for n, made in enumerate(self._made) if made is seg) + 1)

    def _from(self, i: int) -> Iterator[RemoteSegment]:
        while (seg := self._make(i)) is not None:
            yield seg
            i += 1


def run_from(
    key: PartitionKey, rows: list[RemoteSegmentRecord], offset: int, end_offset: int
) -> SegmentRun | None:
    """The run of ``rows`` (copy-finished, by base offset) from the segment holding
    ``offset`` up to ``end_offset``, or None when no row holds ``offset``."""
    i = bisect.bisect_right(rows, offset, key=lambda r: r.base_offset) - 1
    if i >= 0 and rows[i].last_offset >= offset:
        return SegmentRun(key, rows, i, end_offset)
    return None


def uploaded_end(key: PartitionKey, rows: list[RemoteSegmentRecord], log_start: int) -> int:
    """The partition's *uploaded end*: where its copy-finished segments (``rows``, by base
    offset) stop following each other without a gap from the one holding ``log_start``.
    Every offset from the log start up to it can be read from object storage; a hole
    (a segment whose copy has not finished) ends it. ``log_start`` itself when no
    finished segment holds it."""
    end = log_start
    for seg in run_from(key, rows, log_start, sys.maxsize) or ():
        end = seg.next_offset
    return end


# Ranges ``(segment, start, end)`` of segments' logs, in reading order.
ReadPlan = list[tuple[RemoteSegment, int, int]]


def plan_ranges(
    seg: RemoteSegment, position: int, following: Iterator[RemoteSegment], max_bytes: int
) -> ReadPlan:
    """The ranges ``(segment, start, end)`` that a read of ``max_bytes`` from ``position``
    in ``seg`` spans: to each segment's end, and into the ones following, while the budget
    lasts."""
    plan: ReadPlan = []
    room = max(max_bytes, _HEADER)
    current: RemoteSegment | None = seg
    while current is not None and room > 0:
        if position < current.size:
            stop = min(current.size, position + room)
            plan.append((current, position, stop))
            room -= stop - position
        current, position = next(following, None), 0
    return plan
