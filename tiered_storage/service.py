"""Tiered storage as one service: the uploader, retention, cleanup, the cold-read path and
what they report.

The app factory makes one :class:`TieredStorage` per process (a ``cleanup_ctx`` entry):
:meth:`start` starts the upload loop and the cleanup loop as watched tasks, :meth:`close`
cancels and awaits them and stops the cold reads' fetches. The partition worker reads
tiered offsets through :attr:`reader`. The broker calls :meth:`retain_topic` from its
retention loop,
:meth:`check_backpressure` before each produce, and :meth:`delete_topic_objects` when a
topic is deleted; topic describe and ``/metrics`` read :meth:`partition_status` and
:attr:`counters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from partitions.catalog import Catalog, RemoteSegmentState
from partitions.errors import EventBusError
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker
from tiered_storage.cleanup import OrphanCleaner
from tiered_storage.objects import ObjectStore
from tiered_storage.ownership import ONE_OWNER, PartitionLeases
from tiered_storage.read_settings import ColdReadSettings
from tiered_storage.reader import RemoteSegmentReader
from tiered_storage.retention import TieredRetention
from tiered_storage.state import RemoteIndex, TieringCounters, TieringSettings
from tiered_storage.uploader import SegmentUploader, pending_segments

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PartitionTiering:
    """What topic describe shows of one partition's remote side."""

    remote_start_offset: int | None
    remote_end_offset: int | None
    remote_bytes: int
    remote_segments: int
    segments_pending_upload: int
    bytes_pending_upload: int


class TieringService(Protocol):
    """What the broker asks of tiered storage (the service itself, or its view over the
    worker processes of a server: ``gateway/processes/tiering.py``)."""

    @property
    def failed(self) -> BaseException | None:
        """Set when a background loop died: the service no longer uploads or cleans."""
        ...

    def check_backpressure(self) -> None: ...

    async def retain_topic(
        self,
        tenant: str,
        name: str,
        incarnation: str,
        config: Mapping[str, Any],
        partition_ids: Sequence[int],
    ) -> int: ...

    async def delete_topic_objects(self, tenant: str, incarnation: str) -> None: ...

    async def remote_only_bytes(self, key: PartitionKey) -> int: ...

    async def partition_status(self, key: PartitionKey) -> PartitionTiering: ...


class ColdPath:
    """What the local partition worker gets from tiered storage when it is made, before the
    service itself (which needs the worker): the reads of offsets only the object store
    holds, and the uploader's wake-up when a segment rolls."""

    def __init__(
        self, catalog: Catalog, store: ObjectStore, read_settings: ColdReadSettings | None = None
    ) -> None:
        self.index = RemoteIndex(catalog)
        self.reader = RemoteSegmentReader(
            store, self.index.finished, self.index.reload, read_settings
        )
        self.rolled = asyncio.Event()

    def notify_roll(self, key: PartitionKey) -> None:
        """A segment of ``key`` stopped taking appends: the uploader looks soon."""
        self.rolled.set()


class OtherUploaders(Protocol):
    """The other processes' uploaders, when several share the store (worker processes)."""

    @property
    def everywhere(self) -> PartitionWorker:
        """Every process's partitions: a topic's size is worked out over all of them."""
        ...

    async def will_retry(self, key: PartitionKey, base_offset: int) -> bool | None:
        """Whether the partition's owner still tries to upload that segment (None: this
        process owns the partition)."""
        ...


class TieredStorage:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        store: ObjectStore,
        settings: TieringSettings | None = None,
        *,
        cold: ColdPath | None = None,
        read_settings: ColdReadSettings | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        others: OtherUploaders | None = None,
        leases: PartitionLeases = ONE_OWNER,
    ) -> None:
        self.settings = settings or TieringSettings()
        self.store = store
        self.counters = TieringCounters()
        cold = cold or ColdPath(catalog, store, read_settings)
        self.index = cold.index
        self.reader = cold.reader
        self._worker = worker
        self._others = others
        self.uploader = SegmentUploader(
            catalog,
            worker,
            store,
            self.index,
            self.settings,
            self.counters,
            clock_ms,
            wake=cold.rolled,
            leases=leases,
        )
        self.retention = TieredRetention(
            catalog,
            worker,
            store,
            self.index,
            self.uploader,
            self.counters,
            clock_ms,
            everywhere=worker if others is None else others.everywhere,
        )
        self.cleaner = OrphanCleaner(
            catalog,
            store,
            self.index,
            self.uploader,
            self.settings,
            self.counters,
            clock_ms,
            will_retry=self._will_retry,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # Set when a background loop died: the service no longer uploads or cleans.
        self.failed: BaseException | None = None

    async def _will_retry(self, key: PartitionKey, base_offset: int) -> bool:
        """Whether an upload of the segment runs or will be tried again: by this process's
        uploader, or (several processes) by the partition's owner's."""
        if self._others is not None:
            theirs = await self._others.will_retry(key, base_offset)
            if theirs is not None:
                return theirs
        return self.uploader.will_retry(key, base_offset)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, *, cleanup: bool = True) -> None:
        """Start the loops; the first upload pass runs at once, so whatever a crash left
        unfinished is uploaded again right after a start. Cleanup assumes it is the only
        one to clean the store's prefix: with several worker processes, one runs it."""
        self.uploader.wake()
        loop = asyncio.get_running_loop()
        loops = [(self.uploader.run(), "tiering-upload")]
        if cleanup:
            loops.append((self._clean_forever(), "tiering-cleanup"))
        for coro, name in loops:
            task = loop.create_task(coro, name=name)
            task.add_done_callback(self._watch)
            self._tasks.append(task)

    def _watch(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failed = error
            log.error("tiered storage: %s died", task.get_name(), exc_info=error)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.uploader.close()
        await self.reader.close()

    async def _clean_forever(self) -> None:
        interval = self.settings.orphan_check_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleaner.run_once()
            except EventBusError as exc:
                log.warning("object store cleanup failed (%s); trying again later", exc)
            except Exception:
                log.exception("object store cleanup failed; trying again later")

    # --- what the broker calls ---------------------------------------------------------------

    def check_backpressure(self) -> None:
        """Raise :class:`~partitions.errors.StorageBackpressureError` while the upload
        backlog is over its cap."""
        self.uploader.check_backpressure()

    async def retain_topic(
        self,
        tenant: str,
        name: str,
        incarnation: str,
        config: Mapping[str, Any],
        partition_ids: Sequence[int],
    ) -> int:
        return await self.retention.retain_topic(tenant, name, incarnation, config, partition_ids)

    async def delete_topic_objects(self, tenant: str, incarnation: str) -> None:
        self.reader.forget_topic(tenant, incarnation)
        await self.cleaner.delete_topic_objects(tenant, incarnation)

    async def remote_only_bytes(self, key: PartitionKey) -> int:
        """Bytes of the partition's live data held only in object storage (local retention
        removed the local copy): what the local log's size does not count."""
        stats = await self._worker.stats(key)
        local = {s.base_offset for s in self._worker.segments(key)}
        rows = await self.index.rows(key)
        return sum(
            r.size_bytes
            for r in rows.values()
            if r.state is RemoteSegmentState.COPY_FINISHED
            and r.base_offset not in local
            and r.last_offset >= stats.start_offset
        )

    async def partition_status(self, key: PartitionKey) -> PartitionTiering:
        stats = await self._worker.stats(key)
        rows = await self.index.rows(key)
        finished = sorted(
            (r for r in rows.values() if r.state is RemoteSegmentState.COPY_FINISHED),
            key=lambda r: r.base_offset,
        )
        live = [r for r in finished if r.last_offset >= stats.start_offset]
        pending = pending_segments(self._worker.segments(key), rows, stats.start_offset)
        return PartitionTiering(
            remote_start_offset=max(live[0].base_offset, stats.start_offset) if live else None,
            remote_end_offset=live[-1].last_offset + 1 if live else None,
            remote_bytes=sum(r.size_bytes for r in finished),
            remote_segments=len(finished),
            segments_pending_upload=len(pending),
            bytes_pending_upload=sum(s.size_bytes for s in pending),
        )
