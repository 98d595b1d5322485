"""The partition log: an append-only, crash-safe sequence of segments.

Writing works like a database's WAL writer. Appends are queued in call order; a *drain*
running on a writer thread takes everything queued, writes it with one ``pwritev``, makes
it durable with one ``fdatasync`` (group commit), hands the results to the event loop, and
at once takes whatever queued up during that fsync. So the disk stays busy while the loop
accepts and answers requests in parallel, and no append waits for a thread hop of its own
under load. An append's future resolves only after its bytes are durable, and only then
does the high watermark (the offset readers see and wait on) move: no reader ever sees an
offset that a crash could take back.

Changes other than appends (roll, seal, retention, close) go through the same queue, so
they happen in order with the appends around them. While a drain runs it owns the segment
state; the event loop sees what the drain *published*: the high watermark and each
segment's durable size.

A failed fsync is never retried as if it had worked: the appends waiting on it fail, and
the partition closes its files and reopens them with recovery before it writes again. A full
disk (``ENOSPC``) fails only the appends of that write; the file is cut back to where it
was, so the log stays readable and consistent, and appends work again once space is freed.

The *log start* (the first offset a reader may ask for) and the *local start* (the first
offset whose segment is on this disk) are kept apart: with tiered storage, local retention
drops segments that are safely in object storage without moving the log start, and reads
between the two raise :class:`~partitions.errors.OffsetNotLocalError` rather than a 416 (the
partition worker reads those offsets from object storage instead).
The log start is persisted in ``partition.json`` before any segment below it is deleted.

Before any segment is deleted (by whichever retention), the producer tags of a recently
written one are saved in a small ``.tags`` file (``partitions.tag_sidecar``), so that the
answers of idempotent requests can be rebuilt after a restart for their whole ten minutes.

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
import contextlib
import errno
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from partitions import tag_sidecar
from partitions.batch import (
    BATCH_HEADER,
    BatchBytes,
    BatchHeader,
    NewRecord,
    Record,
    checksum_ok,
    encode_batch,
    iter_records,
    read_header,
    validate_batch,
)
from partitions.errors import (
    BatchTooLargeError,
    CorruptLogError,
    DiskFullError,
    EventBusError,
    OffsetNotLocalError,
    OffsetOutOfRangeError,
    PartitionClosedError,
    PartitionSealedError,
    PartitionUnavailableError,
    StorageIOError,
)
from partitions.fileio import FileOps, WriteFailedError, pread_exact
from partitions.log.layout import (
    list_segment_bases,
    remove_strays,
)
from partitions.log.loader import TailRecovery, load_closed, recover_tail
from partitions.log.segment import Segment, read_batch_span
from partitions.log.values import (
    AppendResult,
    BatchRead,
    LogConfig,
    LogStats,
    ReadResult,
    SegmentFiles,
    SegmentInfo,
)

log = logging.getLogger(__name__)

META_FILE = "partition.json"
META_FORMAT_VERSION = 1
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Group commits one drain does before it lets other partitions have its thread.
_DRAIN_ROUNDS = 32
_RECOVERY_BACKOFF_S = (0.05, 5.0)
# How long close() waits for a running drain to finish its step.
_CLOSE_WAIT_S = 60.0

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


class _Loaded(NamedTuple):
    segments: list[Segment]
    sealed: bool
    end_offset: int
    log_start: int


# (directory, segment base offset, durable log size, durable index entries)
_CutPoint = tuple[Path, int, int, int]


@dataclass(slots=True)
class _Append:
    data: bytes
    header: BatchHeader
    size: int
    future: asyncio.Future[AppendResult]


@dataclass(slots=True)
class _Control:
    """A change run by the drain, in order with appends. ``action`` runs on its thread."""

    action: Callable[[], Any]
    future: asyncio.Future[Any] | None


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
    ) -> None:
        self.directory = directory
        self.config = config
        self._ops = ops
        self._executor = executor
        self._writer_pool = writer_pool
        self._clock_ms = clock_ms
        self._loop = asyncio.get_running_loop()
        # Replaced, never changed in place, so that a reader iterating it is never upset.
        self._segments: list[Segment] = []
        self._sealed = False
        self._high_watermark = 0
        # Only rises; written from the loop and from the drain, under _start_lock.
        self._log_start = 0
        self._start_lock = threading.Lock()
        self._on_roll = on_roll
        self._pending: deque[_Append | _Control] = deque()
        self._drain_lock = threading.Lock()
        self._draining = False
        self._data_event = asyncio.Event()
        self._closing = False
        self._closed = False
        self._unavailable: EventBusError | None = None
        self._recovery_failed = False
        self._recovery_delay = _RECOVERY_BACKOFF_S[0]
        self._recovery_timer: asyncio.TimerHandle | None = None
        self._cut: _CutPoint | None = None
        # Writer-side state, owned by the drain's thread.
        self._w_sealed = False
        self._w_end = 0
        self._w_log_start = 0
        self._in_flight: list[_Append | _Control] = []
        # Set while no drain runs: close() waits for it.
        self._idle = threading.Event()
        self._idle.set()
        self._roll_timer: asyncio.TimerHandle | None = None
        self.last_recovery: TailRecovery | None = None
        self._group_commits = 0
        self._appends = 0
        self._sync_seconds = 0.0
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
    ) -> PartitionLog:
        """Open (or create) the log in ``directory``, recovering the tail of the last segment.

        ``executor`` runs reads (default: the loop's); ``writer_pool`` runs drains
        (default: one pool per process, see :func:`default_writer_pool`). ``on_roll`` is
        called on the event loop whenever a segment stops taking appends (a roll or a
        seal), so that tiered storage can upload it soon.
        """
        self = cls(
            directory,
            config or LogConfig(),
            ops or FileOps(),
            executor,
            writer_pool or default_writer_pool(),
            clock_ms,
            on_roll,
        )
        loaded = await self._run(self._load)
        self._segments = loaded.segments
        self._sealed = self._w_sealed = loaded.sealed
        self._high_watermark = self._w_end = loaded.end_offset
        self._log_start = loaded.log_start
        self._arm_roll_timer()
        return self

    def _load(self) -> _Loaded:
        """Open every segment and recover the last one (thread)."""
        self._ops.make_dirs(self.directory)
        meta_path = self.directory / META_FILE
        if meta_path.exists():
            meta = json.loads(meta_path.read_bytes())
            if meta.get("format_version") != META_FORMAT_VERSION:
                raise CorruptLogError(
                    f"{meta_path}: unknown format version {meta.get('format_version')}"
                )
            sealed = bool(meta["sealed"])
            sealed_end = meta.get("end_offset")
            # Absent in files written before tiered storage: the first segment's base.
            stored_start: int | None = meta.get("log_start_offset")
        else:
            sealed, sealed_end, stored_start = False, None, 0
            self._w_log_start = 0
            self._write_meta(sealed=False, end_offset=None)
        bases = list_segment_bases(self.directory)
        remove_strays(self.directory, bases)
        segments: list[Segment] = []
        try:
            for i, base in enumerate(bases[:-1]):
                segment = Segment.open_existing(self.directory, base, self._ops)
                segments.append(segment)
                load_closed(segment, self.config.index_interval_bytes, bases[i + 1])
            if bases:
                last = Segment.open_existing(self.directory, bases[-1], self._ops)
                segments.append(last)
                self.last_recovery = recover_tail(last, self.config.index_interval_bytes)
                if self.last_recovery.truncated_bytes:
                    log.warning(
                        "recovered %s: cut %d bytes (%s tail) at the end of %s",
                        self.directory,
                        self.last_recovery.truncated_bytes,
                        self.last_recovery.reason or "garbage",
                        last.log_path.name,
                    )
                if sealed:
                    last.read_only = True
            elif not sealed:
                segments.append(Segment.create(self.directory, 0, self._ops))
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        end = segments[-1].next_offset if segments else int(sealed_end or 0)
        local_start = segments[0].base_offset if segments else end
        log_start = min(local_start if stored_start is None else int(stored_start), end)
        self._w_log_start = log_start
        if stored_start != log_start:
            self._write_meta(sealed=sealed, end_offset=sealed_end)
        # A crash between persisting a higher log start and deleting the segments below it
        # leaves them here: finish the deletion (never the last segment).
        doomed = [s for s in segments[:-1] if s.next_offset <= log_start]
        try:
            self._save_tags(doomed)
        except OSError as exc:
            # Below the log start they are unreadable anyway; a later deletion takes them.
            log.warning("partition %s: kept segments below the start: %s", self.directory, exc)
            doomed = []
        if doomed:
            segments = segments[len(doomed) :]
            for segment in doomed:
                segment.delete()
            self._ops.fsync_dir(self.directory)
        tag_sidecar.remove_expired(self.directory, tag_sidecar.wall_ms())
        return _Loaded(segments, sealed, end, log_start)

    def _write_meta(self, *, sealed: bool, end_offset: int | None) -> None:
        body = {
            "format_version": META_FORMAT_VERSION,
            "sealed": sealed,
            "end_offset": end_offset,
            "log_start_offset": self._w_log_start,
        }
        self._ops.replace_file(self.directory / META_FILE, json.dumps(body).encode())

    async def close(self) -> None:
        """Finish every append already asked for, make the indexes durable, close the files.

        Returns once no writer thread touches this log any more.
        """
        if self._closed or self._closing:
            await self._run(self._idle.wait, _CLOSE_WAIT_S)
            return
        self._closing = True
        for timer in (self._roll_timer, self._recovery_timer):
            if timer is not None:
                timer.cancel()
        try:
            await self._control(self._sync_active_indexes, closing=True)
        except EventBusError as exc:
            log.warning("partition %s: closing after an error: %s", self.directory, exc)
        if not await self._run(self._idle.wait, _CLOSE_WAIT_S):
            log.error("partition %s: the writer did not stop; closing anyway", self.directory)
        self._closed = True
        self._fail_pending(PartitionClosedError(f"partition log {self.directory} is closed"))
        segments, self._segments = self._segments, []
        await self._run(self._retire_segments, segments)
        self._notify_data()

    @staticmethod
    def _retire_segments(segments: Sequence[Segment]) -> None:
        for segment in segments:
            segment.retire()

    def _sync_active_indexes(self) -> None:
        if self._segments and not self._segments[-1].read_only and self._unavailable is None:
            self._segments[-1].sync_indexes()

    # --- properties ------------------------------------------------------------------------

    @property
    def high_watermark(self) -> int:
        """The durable end: the offset the next append gets, and the bound of every read."""
        return self._high_watermark

    @property
    def end_offset(self) -> int:
        return self._high_watermark

    @property
    def start_offset(self) -> int:
        """The log start: offsets below it are gone (416); it only rises."""
        return min(self._log_start, self._high_watermark)

    @property
    def local_start_offset(self) -> int:
        """The first offset held on local disk; below it (down to the log start) the data is
        only in object storage."""
        segments = self._segments
        return segments[0].base_offset if segments else self._high_watermark

    def _raise_log_start(self, offset: int) -> None:
        with self._start_lock:
            if offset > self._log_start:
                self._log_start = offset

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def draining(self) -> bool:
        """Whether a drain is running or queued on the writer pool; False once it stopped,
        also when the pool refused to start one."""
        return self._draining

    @property
    def ops(self) -> FileOps:
        """The file operations for the partition's own files: ``partition.json``, new
        segments, saved producer tags and directory fsyncs (open segments keep the ones
        they were opened with).

        The fault-injection seam of a running log: a test may replace it to make the disk
        fail under a server it did not build.
        """
        return self._ops

    @ops.setter
    def ops(self, ops: FileOps) -> None:
        self._ops = ops

    def segments(self) -> list[SegmentInfo]:
        segments = self._segments
        active = None if self._sealed or not segments else segments[-1]
        return [
            SegmentInfo(s.base_offset, s.next_offset, s.durable_size, s is active) for s in segments
        ]

    def stats(self) -> LogStats:
        segments = self._segments
        return LogStats(
            start_offset=self.start_offset,
            end_offset=self._high_watermark,
            local_start_offset=segments[0].base_offset if segments else self._high_watermark,
            size_bytes=sum(s.durable_size for s in segments),
            segment_count=len(segments),
            sealed=self._sealed,
            group_commits=self._group_commits,
            appends=self._appends,
            sync_seconds=self._sync_seconds,
            wait_wakeups=self._wait_wakeups,
        )

    # --- appending -------------------------------------------------------------------------

    async def append(self, batch: bytes) -> AppendResult:
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
        self._enqueue(_Append(batch, header, size, future))
        return await future

    async def append_records(
        self, records: Sequence[NewRecord], *, producer_tag: bytes = b""
    ) -> AppendResult:
        """Encode ``records`` as one batch (checking ``max_record_bytes``) and append it."""
        batch = encode_batch(
            records,
            now_ms=self._clock_ms(),
            max_record_bytes=self.config.max_record_bytes,
            producer_tag=producer_tag,
        )
        return await self.append(batch)

    def _check_writable(self) -> None:
        if self._closing or self._closed:
            raise PartitionClosedError(f"partition log {self.directory} is closed")
        if self._sealed:
            raise PartitionSealedError(
                f"the partition is sealed at offset {self._high_watermark}",
                end_offset=self._high_watermark,
            )
        if self._recovery_failed:
            raise PartitionUnavailableError(
                f"the partition could not recover from a storage failure: {self._unavailable}"
            )

    def _enqueue(self, item: _Append | _Control) -> None:
        self._pending.append(item)
        try:
            self._kick()
        except BaseException:
            with contextlib.suppress(ValueError):
                self._pending.remove(item)
            raise

    # --- control operations ----------------------------------------------------------------

    async def _control(self, action: Callable[[], Any], *, closing: bool = False) -> Any:
        if self._closed or (self._closing and not closing):
            raise PartitionClosedError(f"partition log {self.directory} is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(_Control(action, future))
        return await future

    async def roll(self) -> None:
        """Close the active segment and start a new one (no-op when it is empty)."""
        await self._control(self._roll)

    async def seal(self) -> int:
        """Take no more appends, ever. Answers the final end offset.

        Every append asked for before the seal is written first; any asked for after it
        fails with :class:`PartitionSealedError`. Sealing again answers the same offset.
        """
        if self._sealed:
            return self._high_watermark
        result: int = await self._control(self._seal)
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
        result: list[SegmentInfo] = await self._control(
            partial(self._retain, retention_ms, retention_bytes, max_offset)
        )
        return result

    async def delete_segments_below(self, offset: int) -> list[SegmentInfo]:
        """Delete the segments whose records are all below ``offset`` (never the active one);
        the log start moves up to the first segment left."""
        result: list[SegmentInfo] = await self._control(
            partial(self._retain, None, None, offset, delete_all_below=True)
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
        target = min(offset, self._high_watermark)
        self._raise_log_start(target)
        result: list[SegmentInfo] = await self._control(partial(self._advance_start, target))
        return result

    async def delete_local_below(self, offset: int) -> list[SegmentInfo]:
        """Delete the local segments whose records all lie below ``offset`` *without* moving
        the log start: tiered storage holds them (local retention). Never the active one."""
        result: list[SegmentInfo] = await self._control(
            partial(self._retain, None, None, offset, delete_all_below=True, move_start=False)
        )
        return result

    async def segment_details(self) -> list[SegmentInfo]:
        """Every segment with its first and largest record timestamps (computed on a reader
        thread, once per segment; ``None`` for an empty segment)."""
        self._check_readable()
        active = None if self._sealed or not self._segments else self._segments[-1]
        pinned = [(s, s.durable_size) for s in self._segments if s.pin()]
        try:
            return await self._run(_describe_segments, pinned, active)
        finally:
            for segment, _ in pinned:
                segment.unpin()

    def segment_files(self, base_offset: int) -> SegmentFiles:
        """Where segment ``base_offset``'s files are (whether or not it still exists)."""
        return SegmentFiles.of(self.directory, base_offset)

    # The methods below run on the drain's thread. They change writer-side state only;
    # what the event loop shows (high watermark, sealed) changes in callbacks they post,
    # which run after the publishes posted before them.

    def _roll(self) -> None:
        segments = self._segments
        active = segments[-1] if segments else None
        if self._w_sealed or active is None or active.is_empty:
            return
        active.finish()
        try:
            new = Segment.create(self.directory, active.next_offset, self._ops)
        except BaseException:
            active.read_only = False  # still the active segment
            raise
        self._segments = [*segments, new]
        self._post(self._arm_roll_timer)
        self._post(self._segment_rolled)

    def _segment_rolled(self) -> None:
        if self._on_roll is not None and not self._closed:
            try:
                self._on_roll()
            except Exception:
                log.exception("partition %s: the roll listener failed", self.directory)

    def _roll_if_due(self, segment: Segment) -> None:
        segments = self._segments
        if segments and segments[-1] is segment and not segment.is_empty:
            if self._roll_deadline_ms(segment) <= self._clock_ms():
                self._roll()
            else:
                self._post(self._arm_roll_timer)

    def _seal(self) -> int:
        segments = self._segments
        end = segments[-1].next_offset if segments else self._w_end
        if self._w_sealed:
            return end
        if segments and not segments[-1].read_only:
            segments[-1].finish()
        self._write_meta(sealed=True, end_offset=end)
        self._w_sealed = True
        self._w_end = end
        self._post(self._after_seal, end)
        return end

    def _after_seal(self, end: int) -> None:
        self._high_watermark = max(self._high_watermark, end)
        self._sealed = True
        if self._roll_timer is not None:
            self._roll_timer.cancel()
        self._notify_data()
        self._segment_rolled()

    def _retain(
        self,
        retention_ms: int | None,
        retention_bytes: int | None,
        max_offset: int | None,
        *,
        delete_all_below: bool = False,
        move_start: bool = True,
    ) -> list[SegmentInfo]:
        segments = self._segments
        candidates = segments if self._w_sealed else segments[:-1]
        now = self._clock_ms()
        total = sum(s.size for s in segments)
        count = 0
        for segment in candidates:
            if max_offset is not None and segment.next_offset > max_offset:
                break
            expired = delete_all_below
            if not expired and retention_ms is not None:
                newest = segment.ensure_max_timestamp()
                expired = newest is None or newest < now - retention_ms
            if not expired and retention_bytes is not None:
                expired = total - segment.size >= retention_bytes
            if not expired:
                break
            total -= segment.size
            count += 1
        if not count:
            return []
        doomed = segments[:count]
        if move_start:
            new_start = segments[count].base_offset if count < len(segments) else self._w_end
            self._persist_log_start(new_start)
            # Raised before the segments leave the list: a reader never sees a gap between
            # the log start and the local start that is not in object storage.
            self._raise_log_start(new_start)
        # Saved while the segments are still listed: a reader of producer tags finds each
        # batch's tag in the segment, in the saved file, or in both.
        self._save_tags(doomed)
        self._segments = segments[count:]
        for segment in doomed:
            segment.delete()
        self._ops.fsync_dir(self.directory)
        tag_sidecar.remove_expired(self.directory, tag_sidecar.wall_ms())
        self._post(self._notify_data)
        return [SegmentInfo(s.base_offset, s.next_offset, s.size, False) for s in doomed]

    def _save_tags(self, doomed: Sequence[Segment]) -> None:
        """Save the producer tags of the doomed segments written to within the answer window
        (thread). A failure fails the deletion: nothing is deleted before its tags are safe."""
        recent = tag_sidecar.wall_ms() - tag_sidecar.KEEP_MS
        for segment in doomed:
            if tag_sidecar.segment_modified_ms(segment.log_fd) < recent:
                continue
            tags = _segment_tags(segment, segment.size)
            if tags:
                tag_sidecar.save(self._ops, self.directory, segment.base_offset, tags)

    def _persist_log_start(self, offset: int) -> None:
        """Write a higher log start to ``partition.json``. ``_w_log_start`` is what is on
        disk: after a failed write it stays where it was, so asking again writes again."""
        if offset > self._w_log_start:
            persisted, self._w_log_start = self._w_log_start, offset
            try:
                self._write_meta(
                    sealed=self._w_sealed, end_offset=self._w_end if self._w_sealed else None
                )
            except BaseException:
                self._w_log_start = persisted
                raise

    def _advance_start(self, offset: int) -> list[SegmentInfo]:
        self._persist_log_start(offset)
        return self._retain(None, None, offset, delete_all_below=True, move_start=False)

    # --- the drain -------------------------------------------------------------------------

    def _kick(self) -> None:
        """Make sure a drain is running (event loop side)."""
        with self._drain_lock:
            if self._draining:
                return
            self._draining = True
            self._idle.clear()
        try:
            self._writer_pool.submit(self._drain)
        except BaseException:
            self._drain_stopped()
            raise

    def _drain_stopped(self) -> None:
        with self._drain_lock:
            self._draining = False
            self._idle.set()

    def _drain(self) -> None:
        """Work through the queue on a writer thread until it is empty."""
        try:
            for _ in range(_DRAIN_ROUNDS):
                with self._drain_lock:
                    # Checked under the lock: an item queued after this sees _draining
                    # False and starts the next drain itself.
                    if not self._pending and self._unavailable is None:
                        self._draining = False
                        self._idle.set()
                        return
                if not self._drain_one():
                    # Recovery failed; a timer on the loop starts the next attempt.
                    self._drain_stopped()
                    return
            # Give the thread to other partitions; this one goes on at the back of the line.
            self._writer_pool.submit(self._drain)
        except BaseException as exc:  # noqa: BLE001 - a dead drain must fail its waiters
            in_flight, self._in_flight = self._in_flight, []
            self._drain_stopped()
            self._post(self._drain_crashed, exc, in_flight)

    def _drain_one(self) -> bool:
        """One step: recover, run one control, or write one group. False: stop draining."""
        if self._unavailable is not None:
            if self._closing:
                self._fail_everything_queued(
                    PartitionClosedError(f"partition log {self.directory} is closed")
                )
                return False
            return self._reopen_attempt()
        head = self._pending[0]
        if isinstance(head, _Control):
            self._pending.popleft()
            self._in_flight = [head]
            try:
                result = head.action()
            except OSError as exc:
                if exc.errno in _DISK_FULL_ERRNOS:
                    full = DiskFullError(f"no space left on the device holding {self.directory}")
                    self._settle(head.future, error=full)
                else:
                    error = StorageIOError(f"storage failure in {self.directory}: {exc}")
                    self._settle(head.future, error=error)
                    self._fail_and_reopen(error, cut=None)
            except EventBusError as exc:
                self._settle(head.future, error=exc)
            else:
                self._settle(head.future, result=result)
            self._in_flight = []
            return True
        self._write_group()
        self._in_flight = []
        return True

    def _take_group(self, active: Segment) -> list[_Append]:
        pending = self._pending
        group: list[_Append] = []
        size = 0
        room = self.config.segment_bytes - active.size
        limit = self.config.max_group_bytes
        while pending:
            item = pending[0]
            if not isinstance(item, _Append):
                break
            if group and (size + item.size > limit or size + item.size > room):
                break
            pending.popleft()
            group.append(item)
            size += item.size
        self._in_flight = list(group)
        return group

    def _write_group(self) -> None:
        if self._w_sealed:
            self._fail_head_appends(
                PartitionSealedError(
                    f"the partition is sealed at offset {self._w_end}", end_offset=self._w_end
                )
            )
            return
        active = self._segments[-1]
        head = self._pending[0]
        if not isinstance(head, _Append):
            return
        if not active.is_empty and active.size + head.size > self.config.segment_bytes:
            try:
                self._roll()
            except OSError as exc:
                if exc.errno in _DISK_FULL_ERRNOS:
                    self._fail_head_appends(
                        DiskFullError(f"no space for a new segment in {self.directory}")
                    )
                else:
                    self._fail_and_reopen(StorageIOError(f"roll failed: {exc}"), cut=None)
                return
            active = self._segments[-1]
        group = self._take_group(active)
        plan = active.plan_append(
            [(item.data, item.header) for item in group],
            active.next_offset,
            self.config.index_interval_bytes,
        )
        # Where the segment was durable before this write: a failure cuts back to it.
        durable_point = (self.directory, active.base_offset, plan.position, len(active.index))
        started = time.perf_counter()
        try:
            active.write_plan(plan)
        except OSError as exc:
            if isinstance(exc, WriteFailedError) and exc.errno in _DISK_FULL_ERRNOS:
                try:
                    active.undo_plan(plan)
                except OSError as undo_exc:
                    error = StorageIOError(f"could not undo a failed write: {undo_exc}")
                    self._post(self._fail_items, group, error)
                    self._fail_and_reopen(error, cut=durable_point)
                    return
                full = DiskFullError(f"no space left on the device holding {self.directory}")
                self._post(self._fail_items, group, full)
                return
            error = StorageIOError(f"write or fsync failed in {self.directory}: {exc}")
            self._post(self._fail_items, group, error)
            self._fail_and_reopen(error, cut=durable_point)
            return
        self._sync_seconds += time.perf_counter() - started
        first_in_segment = active.is_empty
        active.commit_plan(plan)
        if first_in_segment:
            active.first_append_ms = self._clock_ms()
        self._post(self._publish, active, plan.end_position, plan.next_offset, group)

    def _publish(
        self, segment: Segment, durable_size: int, next_offset: int, group: list[_Append]
    ) -> None:
        """Make a durable group visible and answer its appends (event loop side)."""
        first_in_segment = segment.durable_size == 0
        segment.durable_size = durable_size
        self._high_watermark = max(self._high_watermark, next_offset)
        self._group_commits += 1
        self._appends += len(group)
        base = next_offset - sum(item.header.record_count for item in group)
        for item in group:
            if not item.future.done():
                item.future.set_result(AppendResult(base, item.header.record_count))
            base += item.header.record_count
        self._notify_data()
        if first_in_segment:
            self._arm_roll_timer()

    # --- failure handling ------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop, in the order posted."""
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            log.warning("partition %s: the event loop is gone; dropped %s", self.directory, fn)

    def _settle(
        self,
        future: asyncio.Future[Any] | None,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if future is not None:
            self._post(_resolve, future, result, error)

    def _fail_items(self, items: Iterable[_Append | _Control], error: EventBusError) -> None:
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)

    def _fail_head_appends(self, error: EventBusError) -> None:
        """Fail the appends at the head of the queue, up to the next control (thread)."""
        failed = []
        while self._pending and isinstance(self._pending[0], _Append):
            failed.append(self._pending.popleft())
        self._post(self._fail_items, failed, error)

    def _fail_queued_appends(self, error: EventBusError) -> None:
        """Fail every queued append, keeping the controls in order (thread)."""
        kept: list[_Append | _Control] = []
        failed: list[_Append | _Control] = []
        while self._pending:
            item = self._pending.popleft()
            (failed if isinstance(item, _Append) else kept).append(item)
        self._pending.extend(kept)
        self._post(self._fail_items, failed, error)

    def _fail_everything_queued(self, error: EventBusError) -> None:
        failed: list[_Append | _Control] = []
        while self._pending:
            failed.append(self._pending.popleft())
        self._post(self._fail_items, failed, error)

    def _fail_pending(self, error: EventBusError) -> None:
        """Fail everything still queued (event loop side, once no drain can run)."""
        failed: list[_Append | _Control] = []
        while self._pending:
            failed.append(self._pending.popleft())
        self._fail_items(failed, error)

    def _fail_and_reopen(self, error: EventBusError, *, cut: _CutPoint | None) -> None:
        """A write or fsync failed (its waiters are told): reopen with recovery (thread).

        With ``cut``, the segment is first cut back to where it was durable: after a failed
        fsync the kernel may have marked the unwritten pages clean, so bytes that read back
        fine may never reach the disk. Appends queued behind the failure were not waiting
        on it; they are written once the partition has recovered.
        """
        log.error("partition %s: %s; reopening with recovery", self.directory, error.message)
        self._unavailable = error
        self._cut = cut
        old, self._segments = self._segments, []
        self._retire_segments(old)
        self._reopen_attempt()

    def _reopen_attempt(self) -> bool:
        """Cut back (if needed) and reload the partition; on failure, schedule another try."""
        try:
            if self._cut is not None:
                Segment.cut_files(*self._cut, self._ops)
            loaded = self._load()
        except (OSError, CorruptLogError) as exc:
            log.warning("partition %s: recovery failed (%s); retrying", self.directory, exc)
            # Fail fast while the disk is broken rather than queue without bound.
            self._recovery_failed = True
            self._fail_queued_appends(
                PartitionUnavailableError(
                    f"the partition could not recover from a storage failure: {exc}"
                )
            )
            delay = self._recovery_delay
            self._recovery_delay = min(delay * 2, _RECOVERY_BACKOFF_S[1])
            self._post(self._schedule_recovery, delay)
            return False
        self._cut = None
        for segment in loaded.segments:
            segment.durable_size = segment.size
        self._segments = loaded.segments
        self._w_sealed = loaded.sealed
        self._w_end = loaded.end_offset
        self._unavailable = None
        self._recovery_failed = False
        self._recovery_delay = _RECOVERY_BACKOFF_S[0]
        self._post(self._after_reopen, loaded)
        return True

    def _schedule_recovery(self, delay: float) -> None:
        if self._closing or self._closed:
            return
        self._recovery_timer = self._loop.call_later(delay, self._kick)

    def _after_reopen(self, loaded: _Loaded) -> None:
        self._high_watermark = max(self._high_watermark, loaded.end_offset)
        self._raise_log_start(loaded.log_start)
        self._sealed = loaded.sealed
        self._notify_data()
        self._arm_roll_timer()

    def _drain_crashed(self, exc: BaseException, in_flight: list[_Append | _Control]) -> None:
        log.error("partition %s: writer crashed", self.directory, exc_info=exc)
        self._unavailable = StorageIOError(f"the partition writer stopped: {exc!r}")
        self._recovery_failed = True
        self._fail_items(in_flight, self._unavailable)
        self._fail_pending(self._unavailable)
        self._notify_data()

    # --- segment_ms ------------------------------------------------------------------------

    def _roll_deadline_ms(self, segment: Segment) -> int:
        """When ``segment_ms`` rolls the segment: counted from its first append here.

        A segment recovered at open has no such moment; its first record's timestamp
        stands in, but never later than now (producer clocks may run ahead). Producer
        timestamps never drive rolls of live segments: old timestamps would otherwise roll
        a segment per batch.
        """
        now = self._clock_ms()
        if segment.first_append_ms is not None:
            anchor = segment.first_append_ms
        elif segment.first_timestamp is not None:
            anchor = min(segment.first_timestamp, now)
        else:
            anchor = now
        return anchor + self.config.segment_ms

    def _arm_roll_timer(self) -> None:
        if self._roll_timer is not None:
            self._roll_timer.cancel()
            self._roll_timer = None
        segments = self._segments
        if self._sealed or self._closing or self._closed or not segments:
            return
        active = segments[-1]
        if active.durable_size == 0:
            return
        delay_ms = max(0, self._roll_deadline_ms(active) - self._clock_ms())
        self._roll_timer = self._loop.call_later(delay_ms / 1000, self._roll_timer_fired, active)

    def _roll_timer_fired(self, segment: Segment) -> None:
        self._roll_timer = None
        if self._closing or self._closed:
            return
        self._enqueue(_Control(partial(self._roll_if_due, segment), None))

    # --- reading ---------------------------------------------------------------------------

    def _check_readable(self) -> None:
        if self._closed:
            raise PartitionClosedError(f"partition log {self.directory} is closed")
        if self._unavailable is not None:
            raise PartitionUnavailableError(
                f"the partition is recovering from a storage failure: {self._unavailable}"
            )

    def _check_range(self, offset: int) -> None:
        start, hw = self.start_offset, self._high_watermark
        if offset < start or offset > hw:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside the partition's range [{start}, {hw}]",
                offset=offset,
                start_offset=start,
                high_watermark=hw,
            )
        local = self.local_start_offset
        if offset < local:
            raise OffsetNotLocalError(
                f"offset {offset} is in tiered storage only (local data starts at {local})",
                offset=offset,
                start_offset=start,
                local_start_offset=local,
                high_watermark=hw,
            )

    def _pin_from(self, offset: int) -> list[tuple[Segment, int]]:
        """Pin the segments holding ``offset`` onwards, with each one's durable size.

        If retention deleted the segment holding ``offset`` since the range was checked,
        this raises :class:`OffsetOutOfRangeError` rather than read from a later offset.
        """
        pinned: list[tuple[Segment, int]] = []
        for segment in self._segments:
            if segment.next_offset <= offset:
                continue
            if not segment.pin():
                break
            pinned.append((segment, segment.durable_size))
        if pinned and pinned[0][0].base_offset <= offset:
            return pinned
        for done, _ in pinned:
            done.unpin()
        self._check_range(offset)
        if offset < self._high_watermark:
            start, hw = self.start_offset, self._high_watermark
            raise OffsetOutOfRangeError(
                f"offset {offset} was removed by retention while it was being read",
                offset=offset,
                start_offset=start,
                high_watermark=hw,
            )
        return []

    async def read_batches(self, offset: int, *, max_bytes: int = 1024 * 1024) -> BatchRead:
        """Stored batches from the one holding ``offset``, up to ``max_bytes`` (at least one).

        An offset equal to the high watermark answers no data; one outside
        ``[start_offset, high_watermark]`` raises :class:`OffsetOutOfRangeError`.
        """
        self._check_readable()
        self._check_range(offset)
        hw, start, sealed = self._high_watermark, self.start_offset, self._sealed
        pinned = self._pin_from(offset) if offset < hw else []
        try:
            data, first, next_offset = await self._run(
                self._read_batches_sync, pinned, offset, max_bytes
            )
        finally:
            for segment, _ in pinned:
                segment.unpin()
        return BatchRead(data, first, next_offset, hw, start, sealed)

    @staticmethod
    def _read_batches_sync(
        pinned: Sequence[tuple[Segment, int]], offset: int, max_bytes: int
    ) -> tuple[BatchBytes, int, int]:
        """(batches, first offset, next offset) from the segment holding ``offset`` on:
        everything up to a segment's durable end when the budget allows, going on into the
        next segments, else the whole batches that fit (the first batch even when it alone
        does not), so an answer passes ``max_bytes`` only by that first batch."""
        plan: list[tuple[Segment, int, int]] = []
        room = max(max_bytes, BATCH_HEADER.size)
        last_limit = 0
        for n, (segment, limit) in enumerate(pinned):
            position = segment.locate(offset, limit) if n == 0 else 0
            if position >= limit:
                continue
            stop = min(limit, position + room)
            plan.append((segment, position, stop))
            last_limit = limit
            room -= stop - position
            if room <= 0:
                break
        if not plan:
            return b"", offset, offset
        if len(plan) == 1:
            segment, position, _ = plan[0]
            data, after = segment.read_batch_run(position, last_limit, max_bytes)
        else:
            data, after = read_batch_span(plan, max_bytes)
        if not data:
            return b"", offset, offset
        return data, read_header(data).base_offset, after

    async def producer_tags(self, since_ms: int) -> list[tuple[int, bytes]]:
        """(base offset, producer tag) of every durable batch with a tag, in base offset
        order: in segments written to at or after ``since_ms`` (wall clock, by file
        modification time), and saved from segments deleted since then."""
        self._check_readable()
        start, hw = self.local_start_offset, self._high_watermark
        pinned = self._pin_from(start) if start < hw else []
        try:
            return await self._run(_collect_tags, pinned, since_ms, self.directory)
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
        self._check_readable()
        self._check_range(offset)
        hw, start, sealed = self._high_watermark, self.start_offset, self._sealed
        if offset == hw:
            return ReadResult([], offset, hw, start, sealed)
        pinned = self._pin_from(offset)
        try:
            records = await self._run(_collect_records, pinned, offset, max_records, max_bytes)
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
        self._check_readable()
        local, start = self.local_start_offset, self.start_offset
        pinned = self._pin_from(local)
        try:
            found = await self._run(_find_timestamp, pinned, timestamp_ms)
        finally:
            for segment, _ in pinned:
                segment.unpin()
        if found is not None and found <= local and start < local:
            raise OffsetNotLocalError(
                f"the first record at or after {timestamp_ms} may be in tiered storage",
                timestamp_ms=timestamp_ms,
                start_offset=start,
                local_start_offset=local,
                high_watermark=self._high_watermark,
            )
        return found

    async def wait_for_data(self, offset: int, timeout_s: float) -> bool:
        """Wait until there is a record at ``offset`` or the timeout passes.

        Wakes on the append that makes ``offset`` durable, without polling. Answers whether
        data is there; answers at once when the partition is sealed (no data can come).
        """
        deadline = self._loop.time() + timeout_s
        while True:
            if self._high_watermark > offset:
                return True
            if self._sealed or self._closed:
                return False
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            event = self._data_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return self._high_watermark > offset
            self._wait_wakeups += 1

    def _notify_data(self) -> None:
        event, self._data_event = self._data_event, asyncio.Event()
        event.set()

    # --- helpers ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._executor, partial(fn, *args))


_RECORD_READ_CHUNK = 256 * 1024


def _collect_records(
    pinned: Sequence[tuple[Segment, int]], offset: int, max_records: int, max_bytes: int
) -> list[Record]:
    """Decode records from ``offset`` until either limit is reached (executor thread).

    ``max_bytes`` counts record payload (keys, values, headers); the first record is
    returned even when it alone is larger.
    """
    records: list[Record] = []
    size = 0
    for n, (segment, limit) in enumerate(pinned):
        position = segment.locate(offset, limit) if n == 0 else 0
        while position < limit:
            data = segment.read_batches(position, limit, _RECORD_READ_CHUNK)
            if not data:
                break
            pos = 0
            while pos < len(data):
                header = read_header(data, pos)
                if header.next_offset > offset:
                    if not checksum_ok(data, pos, header):
                        raise CorruptLogError(
                            f"stored batch at offset {header.base_offset} fails its CRC"
                        )
                    for record in iter_records(data, pos, min_offset=offset):
                        payload = record.payload_bytes
                        if records and size + payload > max_bytes:
                            return records
                        records.append(record)
                        size += payload
                        if len(records) >= max_records:
                            return records
                pos += header.total_size
            position += len(data)
    return records


def _describe_segments(
    pinned: Sequence[tuple[Segment, int]], active: Segment | None
) -> list[SegmentInfo]:
    out = []
    for segment, size in pinned:
        newest = None if segment is active else segment.ensure_max_timestamp()
        first = segment.first_timestamp
        if first is None and size and segment is not active:
            first = next(segment.scan(0, size, segment.base_offset, verify_crc=False))[
                1
            ].first_timestamp
            segment.first_timestamp = first
        out.append(
            SegmentInfo(
                segment.base_offset,
                segment.next_offset,
                size,
                segment is active,
                first,
                newest,
            )
        )
    return out


def _collect_tags(
    pinned: Sequence[tuple[Segment, int]], since_ms: int, directory: Path
) -> list[tuple[int, bytes]]:
    tags: dict[int, bytes] = {}
    for segment, limit in pinned:
        # By the open file: retention may unlink a pinned segment's name meanwhile.
        if tag_sidecar.segment_modified_ms(segment.log_fd) < since_ms:
            continue
        tags.update(_segment_tags(segment, limit))
    # A crash between saving a segment's tags and deleting it leaves both: the segment's win.
    for base_offset, tag in tag_sidecar.read_recent(directory, since_ms):
        tags.setdefault(base_offset, tag)
    return sorted(tags.items())


def _segment_tags(segment: Segment, limit: int) -> list[tuple[int, bytes]]:
    tags: list[tuple[int, bytes]] = []
    for position, header in segment.scan(0, limit, segment.base_offset, verify_crc=False):
        if header.producer_tag_length:
            tag = pread_exact(
                segment.log_fd, header.producer_tag_length, position + BATCH_HEADER.size
            )
            tags.append((header.base_offset, tag))
    return tags


def _find_timestamp(pinned: Sequence[tuple[Segment, int]], timestamp_ms: int) -> int | None:
    for segment, limit in pinned:
        newest = segment.ensure_max_timestamp()
        if newest is None or newest < timestamp_ms:
            continue
        position, expected = segment.timestamp_position(timestamp_ms)
        for pos, header in segment.scan(position, limit, expected, verify_crc=False):
            if header.max_timestamp < timestamp_ms:
                continue
            data = segment.read_batches(pos, limit, header.total_size)
            for record in iter_records(data):
                if record.timestamp_ms >= timestamp_ms:
                    return record.offset
    return None


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
