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

Around the segments, :class:`LogLoader` reads ``partition.json`` (``partitions.log.meta``),
removes what a crash left half made, and finishes a deletion that a crash interrupted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

from partitions import tag_sidecar
from partitions.errors import CorruptBatchError, ShortBatchError
from partitions.log.index import OFFSET_INDEX_ENTRY, TIME_INDEX_ENTRY, IndexState, replay
from partitions.log.layout import list_segment_bases, remove_strays
from partitions.log.meta import read_meta, write_meta
from partitions.log.retention import save_tags
from partitions.log.segment import Segment
from partitions.log.state import LogState

log = logging.getLogger(__name__)


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


class LoadedLog(NamedTuple):
    """A partition as the loader found it, for the log to publish."""

    segments: list[Segment]
    sealed: bool
    end_offset: int
    log_start: int


class LogLoader:
    """Opens a partition's directory, at start and again after a storage failure."""

    def __init__(self, state: LogState) -> None:
        self._state = state
        # What the last load found at the end of the last segment (None before one ran).
        self.last_recovery: TailRecovery | None = None

    def load(self) -> LoadedLog:
        """Open every segment and recover the last one (thread)."""
        state = self._state
        directory, index_interval = state.directory, state.config.index_interval_bytes
        state.ops.make_dirs(directory)
        meta = read_meta(directory)
        if meta is not None:
            sealed, sealed_end = meta.sealed, meta.end_offset
            # Absent in files written before tiered storage: the first segment's base.
            stored_start = meta.log_start_offset
        else:
            sealed, sealed_end, stored_start = False, None, 0
            state.w_log_start = 0
            write_meta(state.ops, directory, sealed=False, end_offset=None, log_start=0)
        bases = list_segment_bases(directory)
        remove_strays(directory, bases)
        segments: list[Segment] = []
        try:
            for i, base in enumerate(bases[:-1]):
                segment = Segment.open_existing(directory, base, state.ops)
                segments.append(segment)
                load_closed(segment, index_interval, bases[i + 1])
            if bases:
                last = Segment.open_existing(directory, bases[-1], state.ops)
                segments.append(last)
                self.last_recovery = recover_tail(last, index_interval)
                if self.last_recovery.truncated_bytes:
                    log.warning(
                        "recovered %s: cut %d bytes (%s tail) at the end of %s",
                        directory,
                        self.last_recovery.truncated_bytes,
                        self.last_recovery.reason or "garbage",
                        last.log_path.name,
                    )
                if sealed:
                    last.read_only = True
            elif not sealed:
                segments.append(Segment.create(directory, 0, state.ops))
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        end = segments[-1].next_offset if segments else int(sealed_end or 0)
        local_start = segments[0].base_offset if segments else end
        log_start = min(local_start if stored_start is None else int(stored_start), end)
        state.w_log_start = log_start
        if stored_start != log_start:
            write_meta(
                state.ops, directory, sealed=sealed, end_offset=sealed_end, log_start=log_start
            )
        # A crash between persisting a higher log start and deleting the segments below it
        # leaves them here: finish the deletion (never the last segment).
        doomed = [s for s in segments[:-1] if s.next_offset <= log_start]
        try:
            save_tags(state.ops, directory, doomed)
        except OSError as exc:
            # Below the log start they are unreadable anyway; a later deletion takes them.
            log.warning("partition %s: kept segments below the start: %s", directory, exc)
            doomed = []
        if doomed:
            segments = segments[len(doomed) :]
            for segment in doomed:
                segment.delete()
            state.ops.fsync_dir(directory)
        tag_sidecar.remove_expired(directory, tag_sidecar.wall_ms())
        return LoadedLog(segments, sealed, end, log_start)
