"""A segment's two sparse indexes: their byte layouts, their in-memory copy, their files.

- ``.index``: the sparse offset index, entries of ``OFFSET_INDEX_ENTRY``::

      relative_offset  u32  base offset of a batch minus the segment's base offset
      position         u32  byte position of that batch in the ``.log`` file

  An entry is added before a batch once at least ``index_interval_bytes`` were appended
  since the previous entry (about every 4 KiB), so a lookup reads at most that much.
- ``.timeindex``: the time index, entries of ``TIME_INDEX_ENTRY``, one for each offset index
  entry (the two files move in lockstep)::

      max_timestamp    i64  largest record timestamp of every batch *before* the entry's
                            batch in this segment
      relative_offset  u32  the same batch as the offset index entry

  To find the first record with a timestamp at or after T, start at the last entry whose
  ``max_timestamp`` is below T: nothing before it can qualify.

Indexes are derived data: they are written as batches are appended, fsync'd when the
segment rolls, and rebuilt from the log whenever they disagree with it.
"""

from __future__ import annotations

import array
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from partitions.batch import BatchHeader
from partitions.errors import CorruptBatchError, ShortBatchError
from partitions.fileio import FileOps, pread_exact

OFFSET_INDEX_ENTRY = struct.Struct(">II")
TIME_INDEX_ENTRY = struct.Struct(">qI")

# Smaller than any i64 timestamp a batch can carry: "no record seen yet".
NO_TIMESTAMP = -(1 << 63) - 1


def _entries() -> array.array[int]:
    return array.array("q")


@dataclass(slots=True)
class IndexState:
    """The in-memory copy of a segment's two indexes: lockstep arrays of 64-bit integers
    (8 bytes an entry each, where lists of ints took about 40)."""

    relative_offsets: array.array[int] = field(default_factory=_entries)
    positions: array.array[int] = field(default_factory=_entries)
    max_timestamps: array.array[int] = field(default_factory=_entries)

    def __len__(self) -> int:
        return len(self.positions)

    def truncate(self, count: int) -> None:
        del self.relative_offsets[count:]
        del self.positions[count:]
        del self.max_timestamps[count:]

    def append(self, relative_offset: int, position: int, max_timestamp: int) -> None:
        self.relative_offsets.append(relative_offset)
        self.positions.append(position)
        self.max_timestamps.append(max_timestamp)

    def copy(self) -> IndexState:
        return IndexState(
            array.array("q", self.relative_offsets),
            array.array("q", self.positions),
            array.array("q", self.max_timestamps),
        )

    @classmethod
    def read_files(cls, index_fd: int, time_index_fd: int) -> IndexState:
        """The entries of both files up to the first that breaks the lockstep or the order
        (a crash may leave a torn or stale tail; what follows it is not trusted)."""
        raw = pread_exact(index_fd, os.fstat(index_fd).st_size, 0)
        raw_time = pread_exact(time_index_fd, os.fstat(time_index_fd).st_size, 0)
        count = min(len(raw) // OFFSET_INDEX_ENTRY.size, len(raw_time) // TIME_INDEX_ENTRY.size)
        state = cls()
        for i in range(count):
            rel, pos = OFFSET_INDEX_ENTRY.unpack_from(raw, i * OFFSET_INDEX_ENTRY.size)
            ts, rel_t = TIME_INDEX_ENTRY.unpack_from(raw_time, i * TIME_INDEX_ENTRY.size)
            if rel != rel_t:
                break
            if state.positions and (
                pos <= state.positions[-1]
                or rel <= state.relative_offsets[-1]
                or ts < state.max_timestamps[-1]
            ):
                break
            if pos == 0:
                break
            state.append(rel, pos, ts)
        return state

    def write_files(self, ops: FileOps, index_fd: int, time_index_fd: int) -> None:
        """Replace both files with these entries, durably."""
        offsets = b"".join(
            OFFSET_INDEX_ENTRY.pack(rel, pos)
            for rel, pos in zip(self.relative_offsets, self.positions, strict=True)
        )
        times = b"".join(
            TIME_INDEX_ENTRY.pack(ts, rel)
            for ts, rel in zip(self.max_timestamps, self.relative_offsets, strict=True)
        )
        for fd, data in ((index_fd, offsets), (time_index_fd, times)):
            ops.ftruncate(fd, 0)
            ops.write_all(fd, [data], 0)
            ops.fdatasync(fd)


class Replayed(NamedTuple):
    """Where a :func:`replay` ended and what it saw."""

    end_position: int
    next_offset: int
    max_timestamp: int | None
    bytes_since_index: int
    # "short" for a torn batch, "corrupt" for a bad one, None when the scan reached its end.
    stop_reason: str | None
    # The segment's first timestamp, when the scan started at its first batch.
    first_timestamp: int | None


def replay(
    index: IndexState,
    batches: Iterable[tuple[int, BatchHeader]],
    base_offset: int,
    start_position: int,
    start_offset: int,
    max_before: int | None,
    index_interval: int,
) -> Replayed:
    """Walk a segment's batches from an indexed point, adding index entries to ``index`` as
    appends would have.

    ``batches`` is the segment's scan from ``start_position`` (see ``Segment.scan``); the
    first short or corrupt batch it raises on ends the walk, and the answer says which.
    """
    position = start_position
    next_offset = start_offset
    running_max = NO_TIMESTAMP if max_before is None else max_before
    since = 0
    first_ts: int | None = None
    reason: str | None = None
    try:
        for pos, header in batches:
            if pos == 0:
                first_ts = header.first_timestamp
            if since >= index_interval and pos != start_position:
                index.append(header.base_offset - base_offset, pos, running_max)
                since = 0
            since += header.total_size
            running_max = max(running_max, header.max_timestamp)
            position = pos + header.total_size
            next_offset = header.next_offset
    except ShortBatchError:
        reason = "short"
    except CorruptBatchError:
        reason = "corrupt"
    newest = None if running_max == NO_TIMESTAMP else running_max
    return Replayed(position, next_offset, newest, since, reason, first_ts)
