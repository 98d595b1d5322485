"""The partition log: an append-only, crash-safe sequence of segments.

:class:`PartitionLog` is what the partition worker opens, appends to, reads from, seals and
closes. It answers from one shared :class:`~partitions.log.state.LogState` and hands the
work to the parts that do it:

- ``partitions.log.loader``: opening the directory and recovering the last segment's tail;
- ``partitions.log.writer``: the append queue, group commit on a writer thread, rolls, the
  seal, and the reopen after a failed fsync (how durability works is told there);
- ``partitions.log.visibility``: a gated log's fsync'd end and the visible end behind it;
- ``partitions.log.reads``: pinning segments and the reads done on reader threads;
- ``partitions.log.retention``: deleting segments from the head, the log start and the
  producer tags saved before a deletion;
- ``partitions.log.values``: the settings and answers (``LogConfig``, ``AppendResult``...).

An append's future resolves only after its bytes are durable, and only then does the high
watermark (the offset readers see and wait on) move: no reader ever sees an offset that a
crash could take back.

A log opened with ``gated=True`` (cluster mode, where the machine itself can be lost) has
two ends: appends still resolve at the fsync (``fsynced_end``), but the high watermark
readers see, and every answer built on it (reads, ``wait_for_data``, the seal, stats), is
the *visible* end, which moves only when the owner calls :meth:`PartitionLog.advance_visible_end`
once an append is also in the write-ahead log beyond this machine. At open, a gated log
shows everything it loads: only a partition its owner has recovered is opened gated, and
recovery (the takeover's WAL replay, ``tiered_storage.takeover``) rebuilds the log up to the
WAL-committed end first (``partitions.log.restore``), so what is on disk at open is durable.
A tail fsync'd but never made durable must not be left there for a gated open to show.

Directory layout::

    partition.json          {"format_version": 1, "sealed": bool, "end_offset": int|null,
                             "log_start_offset": int}
    00000000000000000000.log / .index / .timeindex
    00000000000000004711.log / .index / .timeindex
    ...
    00000000000000000000.tags   producer tags of a deleted segment, kept about 11 minutes
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from partitions.batch import BatchBytes, NewRecord, encode_batch, validate_batch
from partitions.errors import (
    BatchTooLargeError,
    EventBusError,
    OffsetNotLocalError,
    PartitionClosedError,
    PartitionSealedError,
    PartitionUnavailableError,
)
from partitions.fileio import (
    CACHED_READS,
    CachedReadsUnsupportedError,
    FileOps,
    NotCachedError,
    cached_reads_only,
)
from partitions.log.loader import LogLoader, TailRecovery
from partitions.log.reads import (
    check_range,
    check_readable,
    collect_records,
    collect_tags,
    describe_segments,
    find_timestamp,
    pin_from,
    read_stored_batches,
)
from partitions.log.retention import LogRetention
from partitions.log.segment import Segment, retire_segments
from partitions.log.state import LogState
from partitions.log.values import (
    AppendResult,
    BatchRead,
    LogConfig,
    LogStats,
    ReadResult,
    SegmentFiles,
    SegmentInfo,
)
from partitions.log.writer import LogWriter, QueuedAppend

log = logging.getLogger(__name__)

# How long close() waits for a running drain to finish its step.
_CLOSE_WAIT_S = 60.0
# The largest read done on the event loop (when the page cache holds all of it).
INLINE_READ_BYTES = 4 * 1024 * 1024

T = TypeVar("T")

_writer_pool_lock = threading.Lock()
_writer_pool: ThreadPoolExecutor | None = None


def default_writer_pool() -> ThreadPoolExecutor:
    """The process-wide threads that run drains (kept apart from readers' threads)."""
    global _writer_pool
    with _writer_pool_lock:
        if _writer_pool is None:
            _writer_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="log-writer")
        return _writer_pool


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class PartitionLog:
    """One partition's log. Create with :meth:`open`; finish with :meth:`close`."""

    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        ops: FileOps,
        executor: Executor | None,
        writer_pool: Executor,
        clock_ms: Callable[[], int],
        on_roll: Callable[[], None] | None = None,
        *,
        gated: bool = False,
    ) -> None:
        self.directory = directory
        self.config = config
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        # Whether reads may first try the page cache on the event loop (see _read).
        self._cached_reads = CACHED_READS
        self._state = state = LogState(directory, config, ops, clock_ms, self._loop, gated=gated)
        self._loader = LogLoader(state)
        self._writer = LogWriter(state, self._loader, writer_pool, on_roll)
        self._retention = LogRetention(state)
        self._wait_wakeups = 0

    # --- opening and closing -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        directory: Path,
        config: LogConfig | None = None,
        *,
        ops: FileOps | None = None,
        executor: Executor | None = None,
        writer_pool: Executor | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        on_roll: Callable[[], None] | None = None,
        gated: bool = False,
    ) -> PartitionLog:
        """Open (or create) the log in ``directory``, recovering the tail of the last segment.

        ``executor`` runs reads (default: the loop's); ``writer_pool`` runs drains
        (default: one pool per process, see :func:`default_writer_pool`). ``on_roll`` is
        called on the event loop whenever a segment stops taking appends (a roll or a
        seal), so that tiered storage can upload it soon (in a gated log, once all of it is
        visible). ``gated``: see the module's docstring; what the log loads is visible.
        """
        self = cls(
            directory,
            config or LogConfig(),
            ops or FileOps(),
            executor,
            writer_pool or default_writer_pool(),
            clock_ms,
            on_roll,
            gated=gated,
        )
        loaded = await self._run(self._loader.load)
        state = self._state
        state.segments = loaded.segments
        state.sealed = state.w_sealed = loaded.sealed
        state.high_watermark = state.w_end = loaded.end_offset
        self._writer.visible.after_load(loaded.end_offset)
        state.log_start = loaded.log_start
        self._writer.arm_roll_timer()
        return self

    async def close(self) -> None:
        """Finish every append already asked for, make the indexes durable, close the files.

        Returns once no writer thread touches this log any more.
        """
        state, writer = self._state, self._writer
        if state.closed or state.closing:
            await self._run(writer.idle.wait, _CLOSE_WAIT_S)
            return
        state.closing = True
        writer.stop_timers()
        try:
            await writer.control(writer.sync_active_indexes, closing=True)
        except EventBusError as exc:
            log.warning("partition %s: closing after an error: %s", self.directory, exc)
        if not await self._run(writer.idle.wait, _CLOSE_WAIT_S):
            log.error("partition %s: the writer did not stop; closing anyway", self.directory)
        state.closed = True
        writer.fail_pending(PartitionClosedError(f"partition log {self.directory} is closed"))
        segments, state.segments = state.segments, []
        await self._run(retire_segments, segments)
        state.notify_data()

    # --- properties ------------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        """The durable end: the bound of every read; in a log that is not gated, also the
        offset the next append gets."""
        return self._state.high_watermark

    @property
    def gated(self) -> bool:
        return self._state.gated

    @property
    def fsynced_end(self) -> int:
        """Where the next append goes: the end of what is fsync'd here. Above the high
        watermark only in a gated log, while appends wait to be durable elsewhere too."""
        state = self._state
        return self._writer.visible.fsynced_end if state.gated else state.high_watermark

    def advance_visible_end(self, offset: int) -> None:
        """A gated log: show readers the fsync'd appends that end at or below ``offset``
        (durable beyond this machine now). Monotonic; wakes waiting readers."""
        self._writer.visible.advance(offset)

    @property
    def end_offset(self) -> int:
        return self._state.high_watermark

    @property
    def start_offset(self) -> int:
        """The log start: offsets below it are gone (416); it only rises."""
        return self._state.start_offset

    @property
    def local_start_offset(self) -> int:
        """The first offset held on local disk; below it (down to the log start) the data is
        only in object storage."""
        return self._state.local_start_offset

    @property
    def sealed(self) -> bool:
        return self._state.sealed

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def draining(self) -> bool:
        """Whether a drain is running or queued on the writer pool; False once it stopped,
        also when the pool refused to start one."""
        return self._writer.draining

    @property
    def ops(self) -> FileOps:
        """The file operations for the partition's own files: ``partition.json``, new
        segments, saved producer tags and directory fsyncs (open segments keep the ones
        they were opened with).

        The fault-injection seam of a running log: a test may replace it to make the disk
        fail under a server it did not build.
        """
        return self._state.ops

    @ops.setter
    def ops(self, ops: FileOps) -> None:
        self._state.ops = ops

    @property
    def last_recovery(self) -> TailRecovery | None:
        """What the last open or reopen found at the end of the last segment."""
        return self._loader.last_recovery

    def segments(self) -> list[SegmentInfo]:
        segments = self._state.segments
        open_ = self._open_segments(segments)
        return [
            SegmentInfo(s.base_offset, s.next_offset, s.durable_size, s in open_) for s in segments
        ]

    def _open_segments(self, segments: list[Segment]) -> list[Segment]:
        """The segments not final yet (reported ``active``): the one taking appends and, in
        a gated log, rolled ones whose tail readers cannot see yet."""
        state = self._state
        found = [] if state.sealed or not segments else [segments[-1]]
        if state.gated:
            found += [s for s in segments[:-1] if s.durable_size < s.size]
        return found

    def stats(self) -> LogStats:
        state, writer = self._state, self._writer
        segments = state.segments
        return LogStats(
            start_offset=state.start_offset,
            end_offset=state.high_watermark,
            local_start_offset=segments[0].base_offset if segments else state.high_watermark,
            size_bytes=sum(s.durable_size for s in segments),
            segment_count=len(segments),
            sealed=state.sealed,
            group_commits=writer.group_commits,
            appends=writer.appends,
            sync_seconds=writer.sync_seconds,
            wait_wakeups=self._wait_wakeups,
        )

    # --- appending -------------------------------------------------------------------------

    async def append(self, batch: BatchBytes) -> AppendResult:
        """Append one encoded batch; resolves with its offsets once it is durable.

        The batch's own base offset is ignored: the log assigns the next one. Appends are
        written in the order they were called.
        """
        size = len(batch)
        if size > self.config.max_batch_bytes:
            raise BatchTooLargeError(
                f"a batch of {size} bytes exceeds the limit of {self.config.max_batch_bytes}",
                size=size,
                limit=self.config.max_batch_bytes,
            )
        header = validate_batch(batch)
        self._check_writable()
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self._writer.enqueue(QueuedAppend(batch, header, size, future))
        return await future

    async def append_records(
        self, records: Sequence[NewRecord], *, producer_tag: bytes = b""
    ) -> AppendResult:
        """Encode ``records`` as one batch (checking ``max_record_bytes``) and append it."""
        batch = encode_batch(
            records,
            now_ms=self._state.clock_ms(),
            max_record_bytes=self.config.max_record_bytes,
            producer_tag=producer_tag,
        )
        return await self.append(batch)

    def _check_writable(self) -> None:
        state = self._state
        if state.closing or state.closed:
            raise PartitionClosedError(f"partition log {self.directory} is closed")
        if state.sealed:
            raise PartitionSealedError(
                f"the partition is sealed at offset {state.high_watermark}",
                end_offset=state.high_watermark,
            )
        if state.recovery_failed:
            raise PartitionUnavailableError(
                f"the partition could not recover from a storage failure: {state.unavailable}"
            )

    # --- changes run by the writer, in order with the appends ------------------------------

    async def roll(self) -> None:
        """Close the active segment and start a new one (no-op when it is empty)."""
        await self._writer.control(self._writer.roll)

    async def seal(self) -> int:
        """Take no more appends, ever. Answers the final end offset.

        Every append asked for before the seal is written first; any asked for after it
        fails with :class:`PartitionSealedError`. Sealing again answers the same offset.
        """
        if self._state.sealed:
            return self._state.high_watermark
        result: int = await self._writer.control(self._writer.seal)
        return result

    async def enforce_retention(
        self,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_offset: int | None = None,
    ) -> list[SegmentInfo]:
        """Delete whole segments from the head that fall outside the retention bounds.

        A segment goes when its newest record is older than ``retention_ms``, or while the
        log without it still holds at least ``retention_bytes``. Only segments that end at
        or below ``max_offset`` may go (tiering passes the end of what is safely uploaded).
        The active segment never goes. Answers the deleted segments.
        """
        result: list[SegmentInfo] = await self._writer.control(
            partial(self._retention.retain, retention_ms, retention_bytes, max_offset)
        )
        return result

    async def delete_segments_below(self, offset: int) -> list[SegmentInfo]:
        """Delete the segments whose records are all below ``offset`` (never the active one);
        the log start moves up to the first segment left."""
        result: list[SegmentInfo] = await self._writer.control(
            partial(self._retention.retain, None, None, offset, delete_all_below=True)
        )
        return result

    async def advance_start(self, offset: int) -> list[SegmentInfo]:
        """Move the log start up to ``offset`` (never down, never past the high watermark),
        then delete the local segments whose records all lie below it.

        Reads below the new start answer :class:`OffsetOutOfRangeError` from the moment
        this is called. The new start is persisted before any file is deleted; if that
        fails (a full disk), nothing is deleted and calling again with the same offset
        writes it again. Answers the deleted segments.
        """
        target = min(offset, self._state.high_watermark)
        self._state.raise_log_start(target)
        result: list[SegmentInfo] = await self._writer.control(
            partial(self._retention.advance_start, target)
        )
        return result

    async def delete_local_below(self, offset: int) -> list[SegmentInfo]:
        """Delete the local segments whose records all lie below ``offset`` *without* moving
        the log start: tiered storage holds them (local retention). Never the active one."""
        result: list[SegmentInfo] = await self._writer.control(
            partial(
                self._retention.retain, None, None, offset, delete_all_below=True, move_start=False
            )
        )
        return result

    # --- reading ---------------------------------------------------------------------------

    async def segment_details(self) -> list[SegmentInfo]:
        """Every segment with its first and largest record timestamps (computed on a reader
        thread, once per segment; ``None`` for an empty segment)."""
        state = self._state
        check_readable(state)
        open_ = self._open_segments(state.segments)
        pinned = [(s, s.durable_size) for s in state.segments if s.pin()]
        try:
            return await self._run(describe_segments, pinned, open_)
        finally:
            for segment, _ in pinned:
                segment.unpin()

    def segment_files(self, base_offset: int) -> SegmentFiles:
        """Where segment ``base_offset``'s files are (whether or not it still exists)."""
        return SegmentFiles.of(self.directory, base_offset)

    async def read_batches(self, offset: int, *, max_bytes: int = 1024 * 1024) -> BatchRead:
        """Stored batches from the one holding ``offset``, up to ``max_bytes`` (at least one).

        An offset equal to the high watermark answers no data; one outside
        ``[start_offset, high_watermark]`` raises :class:`OffsetOutOfRangeError`.
        """
        state = self._state
        check_readable(state)
        check_range(state, offset)
        hw, start, sealed = state.high_watermark, state.start_offset, state.sealed
        pinned = pin_from(state, offset) if offset < hw else []
        try:
            data, first, next_offset = await self._read(
                max_bytes, read_stored_batches, pinned, offset, max_bytes
            )
        finally:
            for segment, _ in pinned:
                segment.unpin()
        return BatchRead(data, first, next_offset, hw, start, sealed)

    async def producer_tags(self, since_ms: int) -> list[tuple[int, bytes]]:
        """(base offset, producer tag) of every durable batch with a tag, in base offset
        order: in segments written to at or after ``since_ms`` (wall clock, by file
        modification time), and saved from segments deleted since then."""
        state = self._state
        check_readable(state)
        start, hw = state.local_start_offset, state.high_watermark
        pinned = pin_from(state, start) if start < hw else []
        try:
            return await self._run(collect_tags, pinned, since_ms, self.directory)
        finally:
            for segment, _ in pinned:
                segment.unpin()

    async def read(
        self, offset: int, *, max_records: int = 500, max_bytes: int = 1024 * 1024
    ) -> ReadResult:
        """Decoded records from ``offset``: at most ``max_records``, and at most ``max_bytes``
        of keys, values and headers (but always at least one record when there is one)."""
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be positive")
        state = self._state
        check_readable(state)
        check_range(state, offset)
        hw, start, sealed = state.high_watermark, state.start_offset, state.sealed
        if offset == hw:
            return ReadResult([], offset, hw, start, sealed)
        pinned = pin_from(state, offset)
        try:
            records = await self._read(
                max_bytes, collect_records, pinned, offset, max_records, max_bytes
            )
        finally:
            for segment, _ in pinned:
                segment.unpin()
        next_offset = records[-1].offset + 1 if records else offset
        return ReadResult(records, next_offset, hw, start, sealed)

    async def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is at least ``timestamp_ms``.

        ``None`` when no record that is still in the log is that new. Only local data is
        searched: when the answer is the first local record and older data lives in tiered
        storage only, an older record there may qualify too, so this raises
        :class:`OffsetNotLocalError` (the partition worker then searches the remote
        segments) rather than answer what may be wrong.
        """
        state = self._state
        check_readable(state)
        local, start = state.local_start_offset, state.start_offset
        pinned = pin_from(state, local)
        try:
            found = await self._run(find_timestamp, pinned, timestamp_ms)
        finally:
            for segment, _ in pinned:
                segment.unpin()
        if found is not None and found <= local and start < local:
            raise OffsetNotLocalError(
                f"the first record at or after {timestamp_ms} may be in tiered storage",
                timestamp_ms=timestamp_ms,
                start_offset=start,
                local_start_offset=local,
                high_watermark=state.high_watermark,
            )
        return found

    async def wait_for_data(self, offset: int, timeout_s: float) -> bool:
        """Wait until there is a record at ``offset`` or the timeout passes.

        Wakes on the append that makes ``offset`` durable, without polling. Answers whether
        data is there; answers at once when the partition is sealed (no data can come).
        """
        state = self._state
        deadline = self._loop.time() + timeout_s
        while True:
            if state.high_watermark > offset:
                return True
            if state.sealed or state.closed:
                return False
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            event = state.data_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return state.high_watermark > offset
            self._wait_wakeups += 1

    # --- helpers ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._executor, partial(fn, *args))

    async def _read(self, max_bytes: int, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the event loop when all it needs is in the page cache (what a
        consumer keeping up reads: the hop to a reader thread would cost more than the
        copy), else on a reader thread. Reads larger than ``INLINE_READ_BYTES`` always
        go to a thread, so that none holds the loop for long."""
        if self._cached_reads and max_bytes <= INLINE_READ_BYTES:
            try:
                with cached_reads_only():
                    return fn(*args)
            except CachedReadsUnsupportedError:
                self._cached_reads = False  # this filesystem cannot: threads from now on
            except NotCachedError:
                pass
        return await self._run(fn, *args)
