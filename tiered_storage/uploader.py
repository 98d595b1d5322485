"""Segment upload: every rolled segment goes to the object store soon after it rolls.

One pass (:meth:`SegmentUploader.scan`) looks at every partition open here and finds its
*pending* segments: rolled (or the last one of a sealed partition), not empty, not below the
log start, and without a copy-finished row. It starts uploads for them, oldest first and
taking partitions in turn, at most ``upload_concurrency`` at a time. A pass runs whenever a
segment rolls (the worker's roll listener wakes it) and every ``upload_scan_ms`` besides, so
the first pass after a start re-uploads whatever a crash left unfinished.

One upload follows KIP-405: the catalog row goes *copy-started* first, then the three
objects are put (create-only, so an object an earlier attempt already made answers "already
exists" and is checked by size), then the row goes *copy-finished*. The row and the object
keys carry the epoch of the lease this process holds on the partition
(:class:`~tiered_storage.ownership.PartitionLeases`, given at construction; none on one
machine, epoch 0), and the lease fences both row writes. A copy-started row left by an
earlier attempt of this epoch is finished under the keys it names; one left by an earlier
owner (another epoch, whose objects may still be arriving from it) is deleted with its
objects and the copy made again under this owner's keys. A failure leaves the
row copy-started and the local files in place; the segment is tried again after a backoff
that doubles per failure (with jitter) up to ``upload_retry_ms[1]``. Nothing is deleted
here: local retention deletes local copies, and only copy-finished ones.

The bytes of rolled segments waiting for upload are the *backlog*; past
``max_upload_backlog_bytes`` produce is refused (:meth:`SegmentUploader.check_backpressure`)
until uploads catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from partitions.catalog import Catalog, LeaseFence, RemoteSegmentRecord, RemoteSegmentState
from partitions.errors import (
    EventBusError,
    RemoteSegmentExistsError,
    StorageBackpressureError,
    TopicNotFoundError,
)
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX
from partitions.log.values import SegmentInfo
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker
from tiered_storage.layout import SUFFIXES, segment_key
from tiered_storage.objects import ObjectStore, PutResult
from tiered_storage.ownership import ONE_OWNER, PartitionLeases, epoch_of
from tiered_storage.state import (
    RemoteIndex,
    TieringCounters,
    TieringSettings,
    delete_remote_segment,
)

log = logging.getLogger(__name__)

SegmentId = tuple[PartitionKey, int]


class SegmentChangedError(EventBusError):
    """An object already in the store does not match the local segment it should copy."""

    code = "remote_segment_mismatch"
    retriable = True


@dataclass(slots=True)
class _Backoff:
    failures: int
    not_before_ms: int


class SegmentUploader:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        store: ObjectStore,
        index: RemoteIndex,
        settings: TieringSettings,
        counters: TieringCounters,
        clock_ms: Callable[[], int],
        *,
        wake: asyncio.Event | None = None,
        leases: PartitionLeases = ONE_OWNER,
    ) -> None:
        self._catalog = catalog
        self._leases = leases
        self._worker = worker
        self._store = store
        self._index = index
        self._settings = settings
        self._counters = counters
        self._clock_ms = clock_ms
        # Set when a segment rolls (the partition worker says so) or anything else changed.
        self._wake = wake or asyncio.Event()
        self._tasks: dict[SegmentId, asyncio.Task[None]] = {}
        self._backoff: dict[SegmentId, _Backoff] = {}
        self._pending: dict[PartitionKey, list[SegmentInfo]] = {}
        self._pending_since: dict[SegmentId, int] = {}
        self._closing = False

    # --- what others ask -------------------------------------------------------------------

    def wake(self, _key: PartitionKey | None = None) -> None:
        """A segment rolled (or anything else changed): scan soon."""
        self._wake.set()

    def in_flight(self, key: PartitionKey, base_offset: int) -> bool:
        return (key, base_offset) in self._tasks

    def will_retry(self, key: PartitionKey, base_offset: int) -> bool:
        """Whether this segment is being uploaded or waits for another attempt."""
        return self.in_flight(key, base_offset) or any(
            s.base_offset == base_offset for s in self._pending.get(key, [])
        )

    def check_backpressure(self) -> None:
        backlog, cap = self._counters.backlog_bytes, self._settings.max_upload_backlog_bytes
        if backlog > cap:
            self._counters.backpressure_rejections += 1
            raise StorageBackpressureError(
                f"{backlog} bytes wait for upload to object storage, more than the cap of "
                f"{cap}; produce resumes once uploads catch up",
                backlog_bytes=backlog,
                cap_bytes=cap,
            )

    async def cancel_topic(self, tenant: str, incarnation: str) -> None:
        """Stop the uploads of a topic being deleted and forget its state."""
        doomed = [
            task
            for (key, _), task in self._tasks.items()
            if (key.tenant, key.incarnation) == (tenant, incarnation)
        ]
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        for key in [k for k in self._pending if (k.tenant, k.incarnation) == (tenant, incarnation)]:
            del self._pending[key]
        self._index.forget_topic(tenant, incarnation)

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        interval = self._settings.upload_scan_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.scan()
            except EventBusError as exc:
                log.warning("upload scan failed (%s); trying again", exc)
            except Exception:
                # A bug must not stop every future upload: log it and go on.
                log.exception("upload scan failed; trying again")

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def scan(self) -> None:
        """Find every pending segment, update the backlog, start what may start."""
        now = self._clock_ms()
        pending: dict[PartitionKey, list[SegmentInfo]] = {}
        for key in self._worker.partition_keys():
            try:
                stats = await self._worker.stats(key)
                segments = self._worker.segments(key)
                rows = await self._index.rows(key)
            except EventBusError:
                continue  # closed or recovering: next pass
            waiting = pending_segments(segments, rows, stats.start_offset)
            if waiting:
                pending[key] = waiting
        self._pending = pending
        ids = {(key, s.base_offset) for key, segs in pending.items() for s in segs}
        self._pending_since = {i: self._pending_since.get(i, now) for i in ids}
        self._backoff = {i: b for i, b in self._backoff.items() if i in ids}
        self._counters.backlog_bytes = sum(s.size_bytes for segs in pending.values() for s in segs)
        self._counters.backlog_segments = len(ids)
        oldest = min(self._pending_since.values(), default=now)
        self._counters.upload_lag_s = max(0, now - oldest) / 1000
        self._start_uploads(now)

    def _start_uploads(self, now: int) -> None:
        # Oldest first within a partition, partitions in turn.
        queues = sorted(self._pending.items())
        order: list[tuple[PartitionKey, SegmentInfo]] = []
        depth = 0
        while layer := [(k, segs[depth]) for k, segs in queues if depth < len(segs)]:
            order.extend(layer)
            depth += 1
        for key, segment in order:
            if len(self._tasks) >= self._settings.upload_concurrency or self._closing:
                break
            ident = (key, segment.base_offset)
            backoff = self._backoff.get(ident)
            if ident in self._tasks or (backoff is not None and backoff.not_before_ms > now):
                continue
            task = asyncio.get_running_loop().create_task(
                self._upload(key, segment), name=f"upload {key} {segment.base_offset}"
            )
            self._tasks[ident] = task
            self._counters.uploads_in_flight = len(self._tasks)
            task.add_done_callback(partial(self._upload_done, ident))

    def _upload_done(self, ident: SegmentId, task: asyncio.Task[None]) -> None:
        self._tasks.pop(ident, None)
        self._counters.uploads_in_flight = len(self._tasks)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._backoff.pop(ident, None)
        else:
            self._counters.upload_failures += 1
            failures = self._backoff[ident].failures + 1 if ident in self._backoff else 1
            low, high = self._settings.upload_retry_ms
            delay = min(high, low * 2 ** (failures - 1))
            jittered = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter only
            self._backoff[ident] = _Backoff(failures, self._clock_ms() + int(jittered))
            key, base = ident
            # One warning per segment while its failures last (a full disk, a store that
            # is down, for hours maybe): later attempts are counted, and logged at debug.
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(
                level,
                "upload of segment %d of %s failed (attempt %d, next in %d ms): %s",
                base,
                key,
                failures,
                jittered,
                error,
                exc_info=error if not isinstance(error, (EventBusError, OSError)) else None,
            )
        self._wake.set()

    # --- one upload -----------------------------------------------------------------------

    async def _upload(self, key: PartitionKey, segment: SegmentInfo) -> None:
        base = segment.base_offset
        details = {d.base_offset: d for d in await self._worker.segment_details(key)}
        detail = details.get(base)
        if detail is None or detail.active:
            return  # deleted by retention meanwhile
        rows = await self._index.rows(key)
        row = rows.get(base)
        fence = self._leases.fence(key)
        if row is not None and row.state is not RemoteSegmentState.COPY_STARTED:
            return
        if row is not None and row.epoch != epoch_of(fence):
            await delete_remote_segment(self._catalog, self._store, self._index, row, fence=fence)
            row = None
        if row is None:
            row = await self._start_copy(key, detail, fence)
            if row is None:
                return
        elif (row.last_offset + 1, row.size_bytes) != (detail.next_offset, detail.size_bytes):
            raise SegmentChangedError(
                f"the copy-started row of segment {base} of {key} describes other data"
            )
        files = self._worker.segment_files(key, base)
        paths = {
            INDEX_SUFFIX: files.index,
            TIME_INDEX_SUFFIX: files.time_index,
            LOG_SUFFIX: files.log,
        }
        sent = 0
        for suffix in SUFFIXES:
            object_key = segment_key(key, base, suffix, row.epoch)
            path = paths[suffix]
            try:
                size = (await asyncio.to_thread(path.stat)).st_size
                result = await self._store.put(object_key, path)
            except FileNotFoundError:
                if all(s.base_offset != base for s in self._worker.segments(key)):
                    return  # total retention removed it: nothing to copy any more
                raise
            if result is PutResult.ALREADY_EXISTS:
                # An earlier attempt (before a crash, or one that timed out but went
                # through) made it: the same bytes, unless the sizes say otherwise.
                found = [o for o in await self._store.list(object_key) if o.key == object_key]
                if not found or found[0].size != size:
                    await self._store.delete(object_key)
                    raise SegmentChangedError(
                        f"{object_key} exists with {found[0].size if found else 'no'} bytes, "
                        f"the local file has {size}; replaced at the next attempt"
                    )
            else:
                sent += size
        done = await self._catalog.set_remote_segment_state(
            key.tenant,
            key.incarnation,
            key.partition_id,
            base,
            from_state=RemoteSegmentState.COPY_STARTED,
            to_state=RemoteSegmentState.COPY_FINISHED,
            fence=fence,
        )
        self._index.put(done)
        self._counters.uploaded_segments += 1
        self._counters.uploaded_bytes += sent

    async def _start_copy(
        self, key: PartitionKey, detail: SegmentInfo, fence: LeaseFence | None
    ) -> RemoteSegmentRecord | None:
        epoch = epoch_of(fence)
        record = RemoteSegmentRecord(
            tenant=key.tenant,
            incarnation=key.incarnation,
            partition_id=key.partition_id,
            base_offset=detail.base_offset,
            last_offset=detail.next_offset - 1,
            size_bytes=detail.size_bytes,
            first_timestamp_ms=detail.first_timestamp_ms or 0,
            max_timestamp_ms=detail.max_timestamp_ms or 0,
            object_key=segment_key(key, detail.base_offset, epoch=epoch),
            state=RemoteSegmentState.COPY_STARTED,
            epoch=epoch,
        )
        try:
            row = await self._catalog.add_remote_segment(record, fence=fence)
        except RemoteSegmentExistsError:
            await self._index.reload(key)  # another writer's row: look again next pass
            return None
        except TopicNotFoundError:
            return None  # the topic is being deleted
        self._index.put(row)
        return row


def pending_segments(
    segments: Sequence[SegmentInfo], rows: Mapping[int, RemoteSegmentRecord], log_start: int
) -> list[SegmentInfo]:
    """The segments that wait for upload: final (not the active one), not empty, not below
    the log start, and without a finished (or deleting) copy."""
    return [
        s
        for s in segments
        if not s.active
        and s.size_bytes > 0
        and s.next_offset > log_start
        and _needs_copy(rows.get(s.base_offset))
    ]


def _needs_copy(row: RemoteSegmentRecord | None) -> bool:
    return row is None or row.state is RemoteSegmentState.COPY_STARTED
