"""Writing a partition's log afresh from stored batches, each at the offset it already has.

A takeover rebuilds the local log of a partition whose owner died from its write-ahead log
(``tiered_storage.takeover``): the batches there were stored by the dead owner's log, their
offsets assigned. The log's append path assigns offsets itself, so they are written here
instead, byte for byte, through the same segment plans the writer uses (a plan writes each
batch's base offset field, which then holds the offset it already had).

The new log is written in a staging directory beside the partition's
(``<partition>.restoring``) and put in place only when whole: its segments fsync'd, its
``partition.json`` written with the log start, then one rename (the directory it replaces,
if any, renamed away first and deleted after). A crash meanwhile leaves either the old
directory or the new one, plus a staging or replaced directory that the next restore
removes; the takeover that was interrupted runs again from the start anyway, since the
partition's lease is still recovering.

The log's first local offset may lie above 0: the offsets below it are read from tiered
storage, as after local retention. Everything here is blocking file I/O: call it from a
thread.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from partitions.batch import BATCH_HEADER, BatchBytes, BatchHeader, read_header, validate_batch
from partitions.errors import InvalidBatchError
from partitions.fileio import FileOps
from partitions.log.meta import write_meta
from partitions.log.segment import Segment
from partitions.log.values import LogConfig

STAGING_SUFFIX = ".restoring"
REPLACED_SUFFIX = ".replaced"


@dataclass(frozen=True, slots=True)
class RestoredLog:
    """What a restore wrote: the log's first local offset and its end."""

    first_offset: int
    end_offset: int
    batches: int
    bytes: int
    segments: int
    #: Whether it replaced a directory the partition already had.
    replaced: bool


class LogRestorer:
    """Writes a partition's log from ``first_offset`` on, from whole stored batches given
    in offset order, then puts it in place of ``directory`` (:meth:`install`) or drops it
    (:meth:`abandon`)."""

    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        *,
        first_offset: int,
        log_start: int,
        ops: FileOps | None = None,
    ) -> None:
        self.directory = directory
        self.staging = directory.with_name(directory.name + STAGING_SUFFIX)
        self.config = config
        self.first_offset = first_offset
        self.log_start = log_start
        self.ops = ops or FileOps()
        self.next_offset = first_offset
        self.batches = 0
        self.bytes = 0
        self._segments: list[Segment] = []
        # Batches taken but not yet written: written by one plan, with one fsync.
        self._pending: list[tuple[BatchBytes, BatchHeader]] = []
        self._pending_bytes = 0

    def begin(self) -> None:
        """Start an empty staging directory (removing one a crash left) with the first
        segment at ``first_offset``."""
        for leftover in (
            self.staging,
            self.directory.with_name(self.directory.name + REPLACED_SUFFIX),
        ):
            if leftover.exists():
                shutil.rmtree(leftover)
        self.ops.make_dirs(self.staging)
        self._segments.append(Segment.create(self.staging, self.first_offset, self.ops))

    def write(self, data: bytes) -> None:
        """Take the whole stored batches of ``data`` (back to back) that continue the log.
        Batches that end at or below the offset reached are skipped (``data`` may begin
        below the first offset); each taken batch is checked whole (length, version, CRC)
        and must start at the offset reached: else :class:`InvalidBatchError`, and nothing
        of ``data`` is taken."""
        view = memoryview(data)
        taken: list[tuple[BatchBytes, BatchHeader]] = []
        expected = self.next_offset
        pos = 0
        while pos < len(view):
            if len(view) - pos < BATCH_HEADER.size:
                raise InvalidBatchError(f"a partial batch header at byte {pos} of the data")
            header = validate_batch(view[pos : pos + read_header(view, pos).total_size])
            if header.next_offset <= expected:
                pos += header.total_size
                continue
            if header.base_offset != expected:
                raise InvalidBatchError(
                    f"a batch at offset {header.base_offset} where the log is at {expected}"
                )
            taken.append((view[pos : pos + header.total_size], header))
            expected = header.next_offset
            pos += header.total_size
        for batch, header in taken:
            self._take(batch, header)
        self.next_offset = expected

    def _take(self, batch: BatchBytes, header: BatchHeader) -> None:
        size = header.total_size
        in_segment = self._segments[-1].size + self._pending_bytes
        if in_segment and in_segment + size > self.config.segment_bytes:
            # As the log's writer does: a full segment rolls before the batch that would
            # take it past its size.
            self._flush()
            self._segments[-1].finish()
            self._segments.append(Segment.create(self.staging, header.base_offset, self.ops))
        elif self._pending_bytes + size > self.config.max_group_bytes:
            self._flush()
        self._pending.append((batch, header))
        self._pending_bytes += size
        self.batches += 1
        self.bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        active = self._segments[-1]
        first = self._pending[0][1].base_offset
        plan = active.plan_append(self._pending, first, self.config.index_interval_bytes)
        active.write_plan(plan)
        active.commit_plan(plan)
        self._pending, self._pending_bytes = [], 0

    def install(self) -> RestoredLog:
        """Make the staged log durable and put it in place of the partition's directory
        (which it replaces whole, if there is one)."""
        self._flush()
        for segment in self._segments:
            segment.finish()
        write_meta(
            self.ops,
            self.staging,
            sealed=False,
            end_offset=None,
            log_start=min(self.log_start, self.next_offset),
        )
        count = len(self._segments)
        self._close()
        self.ops.fsync_dir(self.staging)
        parent = self.directory.parent
        replaced = self.directory.with_name(self.directory.name + REPLACED_SUFFIX)
        existed = self.directory.exists()
        if existed:
            self.directory.rename(replaced)
        self.staging.rename(self.directory)
        self.ops.fsync_dir(parent)
        if replaced.exists():
            shutil.rmtree(replaced)
        return RestoredLog(
            self.first_offset, self.next_offset, self.batches, self.bytes, count, existed
        )

    def abandon(self) -> None:
        """Drop the staged log; the partition's directory is left as it was."""
        self._close()
        if self.staging.exists():
            shutil.rmtree(self.staging)

    def _close(self) -> None:
        for segment in self._segments:
            segment.close()
        self._segments = []
