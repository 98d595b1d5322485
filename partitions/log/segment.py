"""Log segments: one file of batches and two sparse indexes, named by the base offset.

A segment ``00000000000000001234`` is three files (names: ``partitions.log.layout``):

- ``.log``: record batches back to back (``partitions.batch``).
- ``.index`` and ``.timeindex``: the sparse offset and time indexes, derived from the log
  (layouts and rules: ``partitions.log.index``).

Everything here is blocking file I/O and runs on executor threads; the partition log
serialises writes, so a segment has one writer at a time and any number of readers, who
only read bytes below the durable size that the log hands them. Opening a segment that a
crash may have damaged is recovery's work (``partitions.log.loader``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from partitions.batch import (
    BASE_OFFSET,
    BATCH_HEADER,
    FORMAT_VERSION,
    BatchBytes,
    BatchHeader,
    WalkStop,
    checksum_ok,
    read_header,
    walk_batches,
)
from partitions.errors import CorruptBatchError, ShortBatchError
from partitions.fileio import FileOps, WriteFailedError, pread_exact, pread_into
from partitions.log.index import (
    NO_TIMESTAMP,
    OFFSET_INDEX_ENTRY,
    TIME_INDEX_ENTRY,
    IndexState,
    replay,
)
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_name

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024
_MIN_BATCH_LENGTH = BATCH_HEADER.size - struct.calcsize(">QI")


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """Where one group of batches goes and what the segment looks like after it.

    Built on the event loop, carried out on a thread, and committed to the segment only if
    every write and the fsync succeeded.
    """

    position: int
    first_offset: int
    buffers: tuple[bytes | memoryview, ...]
    end_position: int
    next_offset: int
    new_index_entries: tuple[tuple[int, int, int], ...]
    bytes_since_index: int
    max_timestamp: int
    first_timestamp: int


class Segment:
    """One segment's files and their in-memory state.

    ``size`` and ``next_offset`` describe what is durable: bytes past ``size`` in the file
    are never served and are cut off by recovery.
    """

    def __init__(self, directory: Path, base_offset: int, ops: FileOps) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.ops = ops
        name = segment_name(base_offset)
        self.log_path = directory / (name + LOG_SUFFIX)
        self.index_path = directory / (name + INDEX_SUFFIX)
        self.time_index_path = directory / (name + TIME_INDEX_SUFFIX)
        self.log_fd = -1
        self.index_fd = -1
        self.time_index_fd = -1
        self.size = 0
        # What readers may read: set by the event loop once a write is durable and
        # published (``size`` belongs to the writer and may be ahead of it).
        self.durable_size = 0
        self.next_offset = base_offset
        self.index = IndexState()
        self.bytes_since_index = 0
        self.max_timestamp: int | None = None
        self.first_timestamp: int | None = None
        # Wall-clock time of the first append in this process (drives segment_ms).
        self.first_append_ms: int | None = None
        self.read_only = False
        # Readers pin a segment so that retention cannot close its file under them.
        self._pins = 0
        self._deleted = False
        self._lock = threading.Lock()

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, ops: FileOps) -> Segment:
        """Create an empty segment; on any failure, nothing of it is left behind."""
        segment = cls(directory, base_offset, ops)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            segment.log_fd = os.open(segment.log_path, flags, 0o644)
            segment.index_fd = os.open(segment.index_path, flags, 0o644)
            segment.time_index_fd = os.open(segment.time_index_path, flags, 0o644)
            ops.fsync_dir(directory)
        except BaseException:
            created = [
                path
                for path, fd in (
                    (segment.log_path, segment.log_fd),
                    (segment.index_path, segment.index_fd),
                    (segment.time_index_path, segment.time_index_fd),
                )
                if fd >= 0
            ]
            segment.close()
            for path in created:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return segment

    @classmethod
    def open_existing(cls, directory: Path, base_offset: int, ops: FileOps) -> Segment:
        segment = cls(directory, base_offset, ops)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        missing = not (segment.index_path.exists() and segment.time_index_path.exists())
        segment.log_fd = os.open(segment.log_path, os.O_RDWR | os.O_CLOEXEC)
        segment.index_fd = os.open(segment.index_path, flags, 0o644)
        segment.time_index_fd = os.open(segment.time_index_path, flags, 0o644)
        if missing:
            ops.fsync_dir(directory)
        return segment

    def close(self) -> None:
        for name in ("log_fd", "index_fd", "time_index_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def pin(self) -> bool:
        with self._lock:
            if self._deleted:
                return False
            self._pins += 1
            return True

    def unpin(self) -> None:
        with self._lock:
            self._pins -= 1
            close_now = self._deleted and self._pins == 0
        if close_now:
            self.close()

    def retire(self) -> None:
        """Stop using this segment object; its descriptors close once no reader pins it."""
        with self._lock:
            self._deleted = True
            close_now = self._pins == 0
        if close_now:
            self.close()

    def delete(self) -> None:
        """Remove the files; the descriptors close once the last reader unpins."""
        for path in (self.log_path, self.index_path, self.time_index_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with self._lock:
            self._deleted = True
            close_now = self._pins == 0
        if close_now:
            self.close()

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    # --- scanning --------------------------------------------------------------------

    def scan(
        self, position: int, limit: int, expected_offset: int, *, verify_crc: bool
    ) -> Iterator[tuple[int, BatchHeader]]:
        """Yield ``(position, header)`` of each batch from ``position`` up to ``limit``.

        Raises :class:`ShortBatchError` where the bytes end inside a batch and
        :class:`CorruptBatchError` where a batch is whole but wrong (version, offset, CRC).
        """
        buf = b""
        buf_start = position
        while position < limit:
            if position + BATCH_HEADER.size > limit:
                raise ShortBatchError(
                    f"{self.log_path.name}: {limit - position} bytes at {position} "
                    "are less than a batch header",
                    position=position,
                )
            if position + BATCH_HEADER.size > buf_start + len(buf):
                buf = pread_exact(self.log_fd, min(_READ_CHUNK, limit - position), position)
                buf_start = position
                if len(buf) < BATCH_HEADER.size:
                    raise ShortBatchError(
                        f"{self.log_path.name}: file ends at {position + len(buf)}",
                        position=position,
                    )
            header = read_header(buf, position - buf_start)
            if (
                header.version != FORMAT_VERSION
                or header.record_count < 1
                or header.batch_length < _MIN_BATCH_LENGTH + header.producer_tag_length
            ):
                raise CorruptBatchError(
                    f"{self.log_path.name}: bad batch header at {position}", position=position
                )
            if header.base_offset != expected_offset:
                raise CorruptBatchError(
                    f"{self.log_path.name}: batch at {position} has base offset "
                    f"{header.base_offset}, expected {expected_offset}",
                    position=position,
                )
            end = position + header.total_size
            if end > limit:
                raise ShortBatchError(
                    f"{self.log_path.name}: batch at {position} needs {header.total_size} "
                    f"bytes, {limit - position} are there",
                    position=position,
                )
            if verify_crc:
                if end > buf_start + len(buf):
                    buf = pread_exact(
                        self.log_fd,
                        max(header.total_size, min(_READ_CHUNK, limit - position)),
                        position,
                    )
                    buf_start = position
                    if len(buf) < header.total_size:
                        raise ShortBatchError(
                            f"{self.log_path.name}: file ends inside the batch at {position}",
                            position=position,
                        )
                if not checksum_ok(buf, position - buf_start, header):
                    raise CorruptBatchError(
                        f"{self.log_path.name}: CRC mismatch in the batch at {position}",
                        position=position,
                    )
            yield position, header
            position = end
            expected_offset = header.next_offset

    def file_size(self) -> int:
        """The ``.log`` file's size on disk (recovery compares it with what is durable)."""
        return os.fstat(self.log_fd).st_size

    def scan_for_end(self) -> None:
        """Find the end offset and max timestamp of a closed segment from its last entry."""
        if len(self.index):
            start = self.index.positions[-1]
            offset = self.base_offset + self.index.relative_offsets[-1]
            max_before: int | None = self.index.max_timestamps[-1]
        else:
            start, offset, max_before = 0, self.base_offset, None
        index = IndexState()  # entries past the last one are not wanted here
        end, next_offset, max_ts, _since, reason, _first = replay(
            index,
            self.scan(start, self.size, offset, verify_crc=False),
            self.base_offset,
            start,
            offset,
            max_before,
            1 << 62,
        )
        if reason is not None:
            raise CorruptBatchError(
                f"{self.log_path.name}: a rolled segment is damaged at byte {end} ({reason})",
                position=end,
            )
        self.next_offset = next_offset
        self.max_timestamp = max_ts

    def ensure_max_timestamp(self) -> int | None:
        """The largest record timestamp of this segment (computed once for old segments)."""
        if self.max_timestamp is None and not self.is_empty:
            self.scan_for_end()
        return self.max_timestamp

    # --- appending (writer side) -----------------------------------------------------

    def plan_append(
        self,
        batches: Sequence[tuple[BatchBytes, BatchHeader]],
        first_offset: int,
        index_interval: int,
    ) -> AppendPlan:
        """Lay out ``batches`` (with their headers) at the end of this segment.

        ``first_offset`` is the base offset the first batch gets; each batch's own base
        offset field is rewritten on the way to disk.
        """
        position = self.size
        since = self.bytes_since_index
        running_max = NO_TIMESTAMP if self.max_timestamp is None else self.max_timestamp
        first_ts = (
            batches[0][1].first_timestamp
            if self.first_timestamp is None
            else (self.first_timestamp)
        )
        offset = first_offset
        buffers: list[bytes | memoryview] = []
        entries: list[tuple[int, int, int]] = []
        for data, header in batches:
            if since >= index_interval and position != 0:
                entries.append((offset - self.base_offset, position, running_max))
                since = 0
            buffers.append(BASE_OFFSET.pack(offset))
            buffers.append(memoryview(data)[BASE_OFFSET.size :])
            since += header.total_size
            running_max = max(running_max, header.max_timestamp)
            position += header.total_size
            offset += header.record_count
        return AppendPlan(
            position=self.size,
            first_offset=first_offset,
            buffers=tuple(buffers),
            end_position=position,
            next_offset=offset,
            new_index_entries=tuple(entries),
            bytes_since_index=since,
            max_timestamp=running_max,
            first_timestamp=first_ts,
        )

    def write_plan(self, plan: AppendPlan) -> None:
        """Write a plan and make it durable (thread side). Raises ``OSError`` on failure:
        :class:`WriteFailedError` when the write failed, a plain ``OSError`` when the fsync
        did.

        Index entries are written only after the log's fsync succeeded, so an entry never
        points at bytes that a power loss could take: recovery trusts everything before
        the last entry that checks out. They are not fsync'd themselves (derived data,
        rebuilt when they disagree with the log), and failing to write them fails nothing.
        """
        try:
            self.ops.write_all(self.log_fd, plan.buffers, plan.position)
        except OSError as exc:
            raise WriteFailedError(exc.errno, exc.strerror) from exc
        self.ops.fdatasync(self.log_fd)
        if plan.new_index_entries:
            count = len(self.index)
            try:
                self.ops.write_all(
                    self.index_fd,
                    [OFFSET_INDEX_ENTRY.pack(rel, pos) for rel, pos, _ in plan.new_index_entries],
                    count * OFFSET_INDEX_ENTRY.size,
                )
                self.ops.write_all(
                    self.time_index_fd,
                    [TIME_INDEX_ENTRY.pack(ts, rel) for rel, _, ts in plan.new_index_entries],
                    count * TIME_INDEX_ENTRY.size,
                )
            except OSError as exc:
                log.warning(
                    "%s: index entries not written (%s); recovery rebuilds them",
                    self.log_path.name,
                    exc,
                )

    @staticmethod
    def cut_files(
        directory: Path, base_offset: int, log_size: int, index_count: int, ops: FileOps
    ) -> None:
        """Cut a segment's files back to a durable point and fsync them (thread side).

        Used after a failed fsync: the kernel may have marked the failed pages clean, so
        bytes past the last successful fsync must not be trusted even though they read back.
        """
        name = segment_name(base_offset)
        for suffix, size in (
            (LOG_SUFFIX, log_size),
            (INDEX_SUFFIX, index_count * OFFSET_INDEX_ENTRY.size),
            (TIME_INDEX_SUFFIX, index_count * TIME_INDEX_ENTRY.size),
        ):
            fd = os.open(directory / (name + suffix), os.O_RDWR | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size > size:
                    ops.ftruncate(fd, size)
                ops.fdatasync(fd)
            finally:
                os.close(fd)

    def undo_plan(self, plan: AppendPlan) -> None:
        """Cut the files back to where they were before a failed ``write_plan``."""
        self.ops.ftruncate(self.log_fd, plan.position)
        count = len(self.index)
        self.ops.ftruncate(self.index_fd, count * OFFSET_INDEX_ENTRY.size)
        self.ops.ftruncate(self.time_index_fd, count * TIME_INDEX_ENTRY.size)

    def commit_plan(self, plan: AppendPlan) -> None:
        """Adopt a plan's end state once it is durable (event-loop side)."""
        for rel, pos, ts in plan.new_index_entries:
            self.index.append(rel, pos, ts)
        self.size = plan.end_position
        self.next_offset = plan.next_offset
        self.bytes_since_index = plan.bytes_since_index
        self.max_timestamp = plan.max_timestamp
        self.first_timestamp = plan.first_timestamp

    def sync_indexes(self) -> None:
        """Make the index files durable, so that the next open scans only a short tail."""
        self.ops.fdatasync(self.index_fd)
        self.ops.fdatasync(self.time_index_fd)

    def finish(self) -> None:
        """Roll: make the indexes durable and stop taking appends (thread side)."""
        self.ops.fdatasync(self.log_fd)
        self.ops.fdatasync(self.index_fd)
        self.ops.fdatasync(self.time_index_fd)
        self.read_only = True

    # --- reading (reader side) -------------------------------------------------------

    def locate(self, offset: int, limit: int) -> int:
        """Byte position of the batch that holds ``offset``, or ``limit`` if none does."""
        index = self.index
        count = len(index)
        i = bisect.bisect_right(index.relative_offsets, offset - self.base_offset, 0, count) - 1
        if i >= 0 and index.positions[i] < limit:
            position, expected = index.positions[i], self.base_offset + index.relative_offsets[i]
        else:
            position, expected = 0, self.base_offset
        for pos, header in self.scan(position, limit, expected, verify_crc=False):
            if header.next_offset > offset:
                return pos
        return limit

    def _checked_header(self, data: BatchBytes, pos: int, position: int) -> BatchHeader:
        header = read_header(data, pos)
        if (
            header.version != FORMAT_VERSION
            or header.record_count < 1
            or header.batch_length < _MIN_BATCH_LENGTH + header.producer_tag_length
        ):
            raise CorruptBatchError(
                f"{self.log_path.name}: no valid batch at byte {position + pos}",
                position=position + pos,
            )
        return header

    def read_batches(self, position: int, limit: int, max_bytes: int) -> BatchBytes:
        """Whole batches from ``position``: as many as fit in ``max_bytes``, at least one.

        Every batch header is checked on the way, so damage surfaces as
        :class:`CorruptBatchError`, never as garbage.
        """
        return self.read_batch_run(position, limit, max_bytes)[0]

    def read_batch_run(self, position: int, limit: int, max_bytes: int) -> tuple[BatchBytes, int]:
        """:meth:`read_batches`, and the offset after the last batch (-1 when none)."""
        if position >= limit:
            return b"", -1
        want = min(limit - position, max(max_bytes, BATCH_HEADER.size))
        data = _read_view(self.log_fd, want, position)
        if len(data) < BATCH_HEADER.size:
            raise ShortBatchError(f"{self.log_path.name}: short read at {position}")
        walk = walk_batches(data, 0, len(data), len(data), first=True)
        if walk.stop is WalkStop.BAD:
            self._checked_header(data, walk.position, position)  # raises, with the reason
            raise CorruptBatchError(
                f"{self.log_path.name}: no valid batch at byte {position + walk.position}",
                position=position + walk.position,
            )
        end = walk.position
        if end == 0:  # the first batch is longer than the budget
            first = self._checked_header(data, 0, position)
            if position + first.total_size > limit:
                raise ShortBatchError(f"{self.log_path.name}: batch at {position} is cut off")
            return _read_view(self.log_fd, first.total_size, position), first.next_offset
        # A view, not a slice: cutting at the last whole batch copies nothing.
        return (data if end == len(data) else data[:end]), walk.next_offset

    def timestamp_position(self, timestamp_ms: int) -> tuple[int, int]:
        """Where to start scanning for the first record with a timestamp >= ``timestamp_ms``."""
        index = self.index
        count = len(index)
        i = bisect.bisect_left(index.max_timestamps, timestamp_ms, 0, count) - 1
        if i >= 0:
            return index.positions[i], self.base_offset + index.relative_offsets[i]
        return 0, self.base_offset


def _read_view(fd: int, size: int, position: int) -> memoryview:
    """``size`` bytes at ``position`` (fewer at the end of the file), read straight into the
    buffer that answers hand on."""
    buffer = memoryview(bytearray(size))
    return buffer[: pread_into(fd, buffer, position)]


def read_batch_span(
    plan: Sequence[tuple[Segment, int, int]], max_bytes: int
) -> tuple[BatchBytes, int]:
    """Whole batches from ranges ``(segment, start, stop)`` of consecutive segments, every
    range but the last running to its segment's durable end: read into one buffer, so that
    no copy joins the pieces of a read that crosses segments. As many batches as fit in
    ``max_bytes`` (the first whatever its size), each header checked; and the offset after
    the last of them."""
    buffer = bytearray(sum(stop - start for _, start, stop in plan))
    view = memoryview(buffer)
    base = total = 0
    next_offset = -1
    for segment, start, stop in plan:
        size = stop - start
        if pread_into(segment.log_fd, view[base : base + size], start) < size:
            raise ShortBatchError(f"{segment.log_path.name}: short read at {start}")
        walk = walk_batches(view, base, base + size, max_bytes - total, first=not total)
        taken = walk.position - base
        if taken:
            total += taken
            next_offset = walk.next_offset
        if walk.stop is WalkStop.BAD:
            segment._checked_header(view[base : base + size], taken, start)  # raises
            raise CorruptBatchError(
                f"{segment.log_path.name}: no valid batch at byte {start + taken}",
                position=start + taken,
            )
        if walk.stop is WalkStop.BUDGET or start + taken < stop:
            if not total:  # a range running to its segment's end ends inside a batch
                raise ShortBatchError(f"{segment.log_path.name}: batch at {start} is cut off")
            break  # the next batch does not fit
        base += size
    return view[:total], next_offset


def retire_segments(segments: Iterable[Segment]) -> None:
    """Stop using these segment objects; each one's files close once no reader pins it."""
    for segment in segments:
        segment.retire()
