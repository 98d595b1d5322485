"""The partition log's writer: the append queue and the drain that empties it.

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

A gated log's two ends (fsync'd here, seen by readers): ``partitions.log.visibility``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from partitions.batch import BatchBytes, BatchHeader
from partitions.errors import (
    CorruptLogError,
    DiskFullError,
    EventBusError,
    PartitionClosedError,
    PartitionSealedError,
    PartitionUnavailableError,
    StorageIOError,
)
from partitions.fileio import WriteFailedError
from partitions.log.loader import LoadedLog, LogLoader
from partitions.log.meta import write_meta
from partitions.log.segment import Segment, retire_segments
from partitions.log.state import LogState
from partitions.log.values import AppendResult
from partitions.log.visibility import VisibleEnd

log = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Group commits one drain does before it lets other partitions have its thread.
_DRAIN_ROUNDS = 32
_RECOVERY_BACKOFF_S = (0.05, 5.0)

# (directory, segment base offset, durable log size, durable index entries)
_CutPoint = tuple[Path, int, int, int]


@dataclass(slots=True)
class QueuedAppend:
    """One encoded batch waiting for the drain; ``future`` resolves once it is durable."""

    data: BatchBytes
    header: BatchHeader
    size: int
    future: asyncio.Future[AppendResult]


@dataclass(slots=True)
class QueuedControl:
    """A change run by the drain, in order with appends. ``action`` runs on its thread."""

    action: Callable[[], Any]
    future: asyncio.Future[Any] | None


class LogWriter:
    """Runs one partition log's queue on the writer pool, one drain at a time."""

    def __init__(
        self,
        state: LogState,
        loader: LogLoader,
        writer_pool: Executor,
        on_roll: Callable[[], None] | None,
    ) -> None:
        self._state = state
        self._loader = loader
        self._writer_pool = writer_pool
        self._on_roll = on_roll
        self._pending: deque[QueuedAppend | QueuedControl] = deque()
        self._drain_lock = threading.Lock()
        self._draining = False
        self._in_flight: list[QueuedAppend | QueuedControl] = []
        # Set while no drain runs: close() waits for it.
        self.idle = threading.Event()
        self.idle.set()
        self._recovery_delay = _RECOVERY_BACKOFF_S[0]
        self._recovery_timer: asyncio.TimerHandle | None = None
        self._cut: _CutPoint | None = None
        self._roll_timer: asyncio.TimerHandle | None = None
        # A gated log's fsync'd end and what readers see of it.
        self.visible = VisibleEnd(state, self.arm_roll_timer, self._segment_rolled)
        self.group_commits = 0
        self.appends = 0
        # Seconds spent in write+fsync (on the drain's thread).
        self.sync_seconds = 0.0

    @property
    def draining(self) -> bool:
        return self._draining

    # --- the queue (event loop side) -------------------------------------------------------

    def enqueue(self, item: QueuedAppend | QueuedControl) -> None:
        self._pending.append(item)
        try:
            self._kick()
        except BaseException:
            with contextlib.suppress(ValueError):
                self._pending.remove(item)
            raise

    async def control(self, action: Callable[[], Any], *, closing: bool = False) -> Any:
        """Run ``action`` on the drain's thread after everything queued before it."""
        state = self._state
        if state.closed or (state.closing and not closing):
            raise PartitionClosedError(f"partition log {state.directory} is closed")
        future: asyncio.Future[Any] = state.loop.create_future()
        self.enqueue(QueuedControl(action, future))
        return await future

    def stop_timers(self) -> None:
        for timer in (self._roll_timer, self._recovery_timer):
            if timer is not None:
                timer.cancel()

    def fail_pending(self, error: EventBusError) -> None:
        """Fail everything still queued (event loop side, once no drain can run)."""
        failed: list[QueuedAppend | QueuedControl] = []
        while self._pending:
            failed.append(self._pending.popleft())
        self._fail_items(failed, error)

    # The methods below run on the drain's thread. They change writer-side state only;
    # what the event loop shows (high watermark, sealed) changes in callbacks they post,
    # which run after the publishes posted before them.

    def roll(self) -> None:
        """Close the active segment and start a new one (no-op when it is empty)."""
        state = self._state
        segments = state.segments
        active = segments[-1] if segments else None
        if state.w_sealed or active is None or active.is_empty:
            return
        active.finish()
        try:
            new = Segment.create(state.directory, active.next_offset, state.ops)
        except BaseException:
            active.read_only = False  # still the active segment
            raise
        state.segments = [*segments, new]
        state.post(self.arm_roll_timer)
        state.post(self._segment_rolled)

    def _segment_rolled(self) -> None:
        if self._on_roll is not None and not self._state.closed:
            try:
                self._on_roll()
            except Exception:
                log.exception("partition %s: the roll listener failed", self._state.directory)

    def _roll_if_due(self, segment: Segment) -> None:
        state = self._state
        segments = state.segments
        if segments and segments[-1] is segment and not segment.is_empty:
            if self._roll_deadline_ms(segment) <= state.clock_ms():
                self.roll()
            else:
                state.post(self.arm_roll_timer)

    def seal(self) -> int:
        """Make the end final on disk; answers it (every append queued before is written)."""
        state = self._state
        segments = state.segments
        end = segments[-1].next_offset if segments else state.w_end
        if state.w_sealed:
            return end
        if state.gated:
            self.visible.check_sealable(end)
        if segments and not segments[-1].read_only:
            segments[-1].finish()
        write_meta(
            state.ops, state.directory, sealed=True, end_offset=end, log_start=state.w_log_start
        )
        state.w_sealed = True
        state.w_end = end
        state.post(self._after_seal, end)
        return end

    def _after_seal(self, end: int) -> None:
        state = self._state
        state.high_watermark = max(state.high_watermark, end)
        state.sealed = True
        if self._roll_timer is not None:
            self._roll_timer.cancel()
        state.notify_data()
        self._segment_rolled()

    def sync_active_indexes(self) -> None:
        segments = self._state.segments
        if segments and not segments[-1].read_only and self._state.unavailable is None:
            segments[-1].sync_indexes()

    # --- the drain -------------------------------------------------------------------------

    def _kick(self) -> None:
        """Make sure a drain is running (event loop side)."""
        with self._drain_lock:
            if self._draining:
                return
            self._draining = True
            self.idle.clear()
        try:
            self._writer_pool.submit(self._drain)
        except BaseException:
            self._drain_stopped()
            raise

    def _drain_stopped(self) -> None:
        with self._drain_lock:
            self._draining = False
            self.idle.set()

    def _drain(self) -> None:
        """Work through the queue on a writer thread until it is empty."""
        try:
            for _ in range(_DRAIN_ROUNDS):
                with self._drain_lock:
                    # Checked under the lock: an item queued after this sees _draining
                    # False and starts the next drain itself.
                    if not self._pending and self._state.unavailable is None:
                        self._draining = False
                        self.idle.set()
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
            self._state.post(self._drain_crashed, exc, in_flight)

    def _drain_one(self) -> bool:
        """One step: recover, run one control, or write one group. False: stop draining."""
        state = self._state
        if state.unavailable is not None:
            if state.closing:
                self._fail_everything_queued(
                    PartitionClosedError(f"partition log {state.directory} is closed")
                )
                return False
            return self._reopen_attempt()
        head = self._pending[0]
        if isinstance(head, QueuedControl):
            self._pending.popleft()
            self._in_flight = [head]
            try:
                result = head.action()
            except OSError as exc:
                if exc.errno in _DISK_FULL_ERRNOS:
                    full = DiskFullError(f"no space left on the device holding {state.directory}")
                    self._settle(head.future, error=full)
                else:
                    error = StorageIOError(f"storage failure in {state.directory}: {exc}")
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

    def _take_group(self, active: Segment) -> list[QueuedAppend]:
        pending = self._pending
        group: list[QueuedAppend] = []
        size = 0
        config = self._state.config
        room = config.segment_bytes - active.size
        limit = config.max_group_bytes
        while pending:
            item = pending[0]
            if not isinstance(item, QueuedAppend):
                break
            if group and (size + item.size > limit or size + item.size > room):
                break
            pending.popleft()
            group.append(item)
            size += item.size
        self._in_flight = list(group)
        return group

    def _write_group(self) -> None:
        state = self._state
        if state.w_sealed:
            self._fail_head_appends(
                PartitionSealedError(
                    f"the partition is sealed at offset {state.w_end}", end_offset=state.w_end
                )
            )
            return
        active = state.segments[-1]
        head = self._pending[0]
        if not isinstance(head, QueuedAppend):
            return
        if not active.is_empty and active.size + head.size > state.config.segment_bytes:
            try:
                self.roll()
            except OSError as exc:
                if exc.errno in _DISK_FULL_ERRNOS:
                    self._fail_head_appends(
                        DiskFullError(f"no space for a new segment in {state.directory}")
                    )
                else:
                    self._fail_and_reopen(StorageIOError(f"roll failed: {exc}"), cut=None)
                return
            active = state.segments[-1]
        group = self._take_group(active)
        plan = active.plan_append(
            [(item.data, item.header) for item in group],
            active.next_offset,
            state.config.index_interval_bytes,
        )
        # Where the segment was durable before this write: a failure cuts back to it.
        durable_point = (state.directory, active.base_offset, plan.position, len(active.index))
        started = time.perf_counter()
        try:
            active.write_plan(plan)
        except OSError as exc:
            if isinstance(exc, WriteFailedError) and exc.errno in _DISK_FULL_ERRNOS:
                try:
                    active.undo_plan(plan)
                except OSError as undo_exc:
                    error = StorageIOError(f"could not undo a failed write: {undo_exc}")
                    state.post(self._fail_items, group, error)
                    self._fail_and_reopen(error, cut=durable_point)
                    return
                full = DiskFullError(f"no space left on the device holding {state.directory}")
                state.post(self._fail_items, group, full)
                return
            error = StorageIOError(f"write or fsync failed in {state.directory}: {exc}")
            state.post(self._fail_items, group, error)
            self._fail_and_reopen(error, cut=durable_point)
            return
        self.sync_seconds += time.perf_counter() - started
        first_in_segment = active.is_empty
        active.commit_plan(plan)
        if first_in_segment:
            active.first_append_ms = state.clock_ms()
        state.post(self._publish, active, plan.end_position, plan.next_offset, group)

    def _publish(
        self, segment: Segment, durable_size: int, next_offset: int, group: list[QueuedAppend]
    ) -> None:
        """Make a durable group visible and answer its appends (event loop side)."""
        state = self._state
        self.group_commits += 1
        self.appends += len(group)
        if state.gated:
            self.visible.publish_fsynced(segment, durable_size, next_offset, group)
            return
        first_in_segment = segment.durable_size == 0
        segment.durable_size = durable_size
        state.high_watermark = max(state.high_watermark, next_offset)
        base = next_offset - sum(item.header.record_count for item in group)
        for item in group:
            if not item.future.done():
                item.future.set_result(AppendResult(base, item.header.record_count))
            base += item.header.record_count
        state.notify_data()
        if first_in_segment:
            self.arm_roll_timer()

    # --- failure handling ------------------------------------------------------------------

    def _settle(
        self,
        future: asyncio.Future[Any] | None,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if future is not None:
            self._state.post(_resolve, future, result, error)

    def _fail_items(
        self, items: Iterable[QueuedAppend | QueuedControl], error: EventBusError
    ) -> None:
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)

    def _fail_head_appends(self, error: EventBusError) -> None:
        """Fail the appends at the head of the queue, up to the next control (thread)."""
        failed = []
        while self._pending and isinstance(self._pending[0], QueuedAppend):
            failed.append(self._pending.popleft())
        self._state.post(self._fail_items, failed, error)

    def _fail_queued_appends(self, error: EventBusError) -> None:
        """Fail every queued append, keeping the controls in order (thread)."""
        kept: list[QueuedAppend | QueuedControl] = []
        failed: list[QueuedAppend | QueuedControl] = []
        while self._pending:
            item = self._pending.popleft()
            (failed if isinstance(item, QueuedAppend) else kept).append(item)
        self._pending.extend(kept)
        self._state.post(self._fail_items, failed, error)

    def _fail_everything_queued(self, error: EventBusError) -> None:
        failed: list[QueuedAppend | QueuedControl] = []
        while self._pending:
            failed.append(self._pending.popleft())
        self._state.post(self._fail_items, failed, error)

    def _fail_and_reopen(self, error: EventBusError, *, cut: _CutPoint | None) -> None:
        """A write or fsync failed (its waiters are told): reopen with recovery (thread).

        With ``cut``, the segment is first cut back to where it was durable: after a failed
        fsync the kernel may have marked the unwritten pages clean, so bytes that read back
        fine may never reach the disk. Appends queued behind the failure were not waiting
        on it; they are written once the partition has recovered.
        """
        state = self._state
        log.error("partition %s: %s; reopening with recovery", state.directory, error.message)
        state.unavailable = error
        self._cut = cut
        old, state.segments = state.segments, []
        retire_segments(old)
        self._reopen_attempt()

    def _reopen_attempt(self) -> bool:
        """Cut back (if needed) and reload the partition; on failure, schedule another try."""
        state = self._state
        try:
            if self._cut is not None:
                Segment.cut_files(*self._cut, state.ops)
            loaded = self._loader.load()
        except (OSError, CorruptLogError) as exc:
            log.warning("partition %s: recovery failed (%s); retrying", state.directory, exc)
            # Fail fast while the disk is broken rather than queue without bound.
            state.recovery_failed = True
            self._fail_queued_appends(
                PartitionUnavailableError(
                    f"the partition could not recover from a storage failure: {exc}"
                )
            )
            delay = self._recovery_delay
            self._recovery_delay = min(delay * 2, _RECOVERY_BACKOFF_S[1])
            state.post(self._schedule_recovery, delay)
            return False
        self._cut = None
        if state.gated:
            self.visible.install_reloaded(loaded.segments)
        else:
            for segment in loaded.segments:
                segment.durable_size = segment.size
            state.segments = loaded.segments
        state.w_sealed = loaded.sealed
        state.w_end = loaded.end_offset
        state.unavailable = None
        state.recovery_failed = False
        self._recovery_delay = _RECOVERY_BACKOFF_S[0]
        state.post(self._after_reopen, loaded)
        return True

    def _schedule_recovery(self, delay: float) -> None:
        state = self._state
        if state.closing or state.closed:
            return
        self._recovery_timer = state.loop.call_later(delay, self._kick)

    def _after_reopen(self, loaded: LoadedLog) -> None:
        state = self._state
        if state.gated:
            self.visible.after_load(loaded.end_offset)
        else:
            state.high_watermark = max(state.high_watermark, loaded.end_offset)
        state.raise_log_start(loaded.log_start)
        state.sealed = loaded.sealed
        state.notify_data()
        self.arm_roll_timer()

    def _drain_crashed(
        self, exc: BaseException, in_flight: list[QueuedAppend | QueuedControl]
    ) -> None:
        state = self._state
        log.error("partition %s: writer crashed", state.directory, exc_info=exc)
        state.unavailable = StorageIOError(f"the partition writer stopped: {exc!r}")
        state.recovery_failed = True
        self._fail_items(in_flight, state.unavailable)
        self.fail_pending(state.unavailable)
        state.notify_data()

    # --- segment_ms ------------------------------------------------------------------------

    def _roll_deadline_ms(self, segment: Segment) -> int:
        """When ``segment_ms`` rolls the segment: counted from its first append here.

        A segment recovered at open has no such moment; its first record's timestamp
        stands in, but never later than now (producer clocks may run ahead). Producer
        timestamps never drive rolls of live segments: old timestamps would otherwise roll
        a segment per batch.
        """
        now = self._state.clock_ms()
        if segment.first_append_ms is not None:
            anchor = segment.first_append_ms
        elif segment.first_timestamp is not None:
            anchor = min(segment.first_timestamp, now)
        else:
            anchor = now
        return anchor + self._state.config.segment_ms

    def arm_roll_timer(self) -> None:
        """(Re)start the ``segment_ms`` timer of the active segment (event loop side)."""
        if self._roll_timer is not None:
            self._roll_timer.cancel()
            self._roll_timer = None
        state = self._state
        segments = state.segments
        if state.sealed or state.closing or state.closed or not segments:
            return
        active = segments[-1]
        if active.durable_size == 0:
            return
        delay_ms = max(0, self._roll_deadline_ms(active) - state.clock_ms())
        self._roll_timer = state.loop.call_later(delay_ms / 1000, self._roll_timer_fired, active)

    def _roll_timer_fired(self, segment: Segment) -> None:
        self._roll_timer = None
        if self._state.closing or self._state.closed:
            return
        self.enqueue(QueuedControl(partial(self._roll_if_due, segment), None))


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
