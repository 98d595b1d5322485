"""Opening a partition's segments after a stop or a crash, and the rules that recover them.

Rolled segments are trusted as they are: they were fsync'd with their indexes when they
rolled. A cheap check of each one's indexes (whole entries, rising offsets and positions,
the last entry pointing at a whole batch with the right offset and CRC) decides whether
they must be rebuilt from the log; a rolled segment whose log is damaged is an error, never
cut.

Only the tail of the last segment is scanned: from the last index entry that points at a
valid batch (everything before it was fsync'd before the entry was written), batch by
batch. The first batch that is short (a torn write) or fails its checks (a corrupt batch)
is cut off with everything after it, and the indexes are rewritten if they disagreed with
the log. The log is then fsync'd whatever was found, because after a process crash its
tail may live in the page cache only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from partitions.errors import CorruptBatchError, ShortBatchError
from partitions.log.index import OFFSET_INDEX_ENTRY, TIME_INDEX_ENTRY, IndexState, replay
from partitions.log.segment import Segment


@dataclass(frozen=True, slots=True)
class TailRecovery:
    """What recovery found at the end of the last segment."""

    truncated_bytes: int
    reason: str | None  # "short" for a torn tail, "corrupt" for a bad batch, None if clean
    rebuilt_index: bool


def _entry_ok(segment: Segment, index: IndexState, i: int, limit: int) -> bool:
    """Whether entry ``i`` points at a whole, checksummed batch with the right offset."""
    expected = segment.base_offset + index.relative_offsets[i]
    try:
        for _pos, _header in segment.scan(index.positions[i], limit, expected, verify_crc=True):
            return True
    except (ShortBatchError, CorruptBatchError):
        return False
    return False


def load_closed(segment: Segment, index_interval: int, next_base: int | None) -> bool:
    """Open a rolled segment: check its indexes cheaply, rebuild them if they disagree.

    Answers whether the indexes had to be rebuilt.
    """
    segment.read_only = True
    size = segment.size = segment.durable_size = segment.file_size()
    index = IndexState.read_files(segment.index_fd, segment.time_index_fd)
    sane = len(index) == os.fstat(segment.index_fd).st_size // OFFSET_INDEX_ENTRY.size
    sane = sane and len(index) == os.fstat(segment.time_index_fd).st_size // TIME_INDEX_ENTRY.size
    if sane and len(index):
        sane = index.positions[-1] < size and _entry_ok(segment, index, len(index) - 1, size)
    if sane:
        segment.index = index
        segment.next_offset = next_base if next_base is not None else segment.base_offset
        if next_base is None:
            segment.scan_for_end()
        return False
    rebuilt = IndexState()
    end, next_offset, max_ts, since, reason, first_ts = replay(
        rebuilt,
        segment.scan(0, size, segment.base_offset, verify_crc=True),
        segment.base_offset,
        0,
        segment.base_offset,
        None,
        index_interval,
    )
    if reason is not None:
        raise CorruptBatchError(
            f"{segment.log_path.name}: a rolled segment is damaged at byte {end} ({reason})",
            position=end,
        )
    segment.index = rebuilt
    segment.next_offset = next_offset
    segment.max_timestamp = max_ts
    segment.first_timestamp = first_ts
    segment.bytes_since_index = since
    rebuilt.write_files(segment.ops, segment.index_fd, segment.time_index_fd)
    return True


def recover_tail(segment: Segment, index_interval: int) -> TailRecovery:
    """Open the last segment: scan only from its last good index entry, cut a bad tail.

    Index entries are trusted only back to the last one that points at a whole batch
    with the right offset; the log is scanned from there, the first short or corrupt
    batch and everything after it are cut off, and the indexes are rewritten if they
    disagreed with what the scan found.
    """
    file_size = segment.file_size()
    on_disk = IndexState.read_files(segment.index_fd, segment.time_index_fd)
    index = on_disk.copy()
    while len(index) and (
        index.positions[-1] >= file_size or not _entry_ok(segment, index, len(index) - 1, file_size)
    ):
        index.truncate(len(index) - 1)
    kept = len(index)
    if kept:
        start = index.positions[-1]
        offset = segment.base_offset + index.relative_offsets[-1]
        max_before: int | None = index.max_timestamps[-1]
    else:
        start, offset, max_before = 0, segment.base_offset, None
    end, next_offset, max_ts, since, reason, first_ts = replay(
        index,
        segment.scan(start, file_size, offset, verify_crc=True),
        segment.base_offset,
        start,
        offset,
        max_before,
        index_interval,
    )
    if kept:
        # The replay counted from the entry's batch; the first timestamp is the very
        # first batch's, read from position 0.
        first = next(segment.scan(0, file_size, segment.base_offset, verify_crc=False))
        first_ts = first[1].first_timestamp
    truncated = file_size - end
    if truncated:
        segment.ops.ftruncate(segment.log_fd, end)
    # Always: after a crash the tail may be in the page cache only, and what readers
    # see must survive a power loss too.
    segment.ops.fdatasync(segment.log_fd)
    index_files_match = (
        on_disk.relative_offsets == index.relative_offsets
        and on_disk.positions == index.positions
        and on_disk.max_timestamps == index.max_timestamps
        and os.fstat(segment.index_fd).st_size == len(index) * OFFSET_INDEX_ENTRY.size
        and os.fstat(segment.time_index_fd).st_size == len(index) * TIME_INDEX_ENTRY.size
    )
    if not index_files_match:
        index.write_files(segment.ops, segment.index_fd, segment.time_index_fd)
    segment.size = segment.durable_size = end
    segment.next_offset = next_offset
    segment.index = index
    segment.bytes_since_index = since
    segment.max_timestamp = max_ts
    segment.first_timestamp = first_ts
    return TailRecovery(truncated, reason, not index_files_match)
