"""What the parts of tiered storage share: settings, counters, and the rows of the
partitions open here, mirrored from the catalog."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from partitions.catalog import Catalog, LeaseFence, RemoteSegmentRecord, RemoteSegmentState
from partitions.errors import RemoteSegmentNotFoundError
from partitions.partition_key import PartitionKey
from tiered_storage.layout import row_keys
from tiered_storage.objects import ObjectStore

log = logging.getLogger(__name__)

GIB = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TieringSettings:
    # Segments uploaded at once, over all partitions.
    upload_concurrency: int = 4
    # Past this many bytes of rolled segments waiting for upload, produce answers 503
    # storage_backpressure.
    max_upload_backlog_bytes: int = 4 * GIB
    # Backoff between attempts at one segment's upload: first delay, largest delay.
    upload_retry_ms: tuple[int, int] = (200, 30_000)
    # How often the uploader looks for work when no roll woke it.
    upload_scan_ms: int = 1_000
    # How old an object without a row (or whose copy never finished and is not retried)
    # must be before it is deleted, and how often such objects are looked for.
    orphan_grace_ms: int = 60 * 60 * 1000
    orphan_check_ms: int = 10 * 60 * 1000

    def __post_init__(self) -> None:
        low, high = self.upload_retry_ms
        if self.upload_concurrency < 1 or not 0 < low <= high:
            raise ValueError("upload concurrency and retry delays must be positive")
        for name in ("max_upload_backlog_bytes", "upload_scan_ms", "orphan_check_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.orphan_grace_ms < 0:
            raise ValueError("orphan_grace_ms cannot be negative")


@dataclass(slots=True)
class TieringCounters:
    """Numbers for /metrics. Counters only rise; the backlog fields are set by each scan."""

    uploaded_segments: int = 0
    uploaded_bytes: int = 0
    upload_failures: int = 0
    remote_segments_deleted: int = 0
    local_segments_deleted: int = 0
    orphans_deleted: int = 0
    backpressure_rejections: int = 0
    backlog_bytes: int = 0
    backlog_segments: int = 0
    # Seconds the oldest segment waiting for upload has waited (0 when none waits).
    upload_lag_s: float = 0.0
    uploads_in_flight: int = 0


class RemoteIndex:
    """The remote-segment rows of the partitions this process serves, by partition and base
    offset: loaded from the catalog once, then kept in step by every change made here."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._rows: dict[PartitionKey, dict[int, RemoteSegmentRecord]] = {}
        self._loading: dict[PartitionKey, asyncio.Future[None]] = {}
        # Copy-finished rows by base offset, made when first asked after a change.
        self._finished: dict[PartitionKey, list[RemoteSegmentRecord]] = {}
        # Deleted incarnations (one short entry per deletion this process ran): a load
        # still in flight when one was forgotten must not bring its rows back.
        self._forgotten: set[tuple[str, str]] = set()

    async def rows(self, key: PartitionKey) -> dict[int, RemoteSegmentRecord]:
        found = self._rows.get(key)
        if found is not None:
            return found
        pending = self._loading.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return self._rows.get(key, {})
        await self.reload(key)
        return self._rows.get(key, {})

    async def reload(self, key: PartitionKey) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            rows = await self._catalog.list_remote_segments(
                key.tenant, key.incarnation, key.partition_id
            )
            if (key.tenant, key.incarnation) not in self._forgotten:
                self._rows[key] = {row.base_offset: row for row in rows}
                self._finished.pop(key, None)
        finally:
            self._loading.pop(key, None)
            future.set_result(None)

    async def finished(self, key: PartitionKey) -> list[RemoteSegmentRecord]:
        """The partition's copy-finished rows, by base offset: the segments reads may use."""
        found = self._finished.get(key)
        if found is None:
            rows = await self.rows(key)
            found = sorted(
                (r for r in rows.values() if r.state is RemoteSegmentState.COPY_FINISHED),
                key=lambda r: r.base_offset,
            )
            self._finished[key] = found
        return found

    def cached(self, key: PartitionKey) -> dict[int, RemoteSegmentRecord] | None:
        return self._rows.get(key)

    def put(self, row: RemoteSegmentRecord) -> None:
        key = PartitionKey(row.tenant, row.incarnation, row.partition_id)
        self._rows.setdefault(key, {})[row.base_offset] = row
        self._finished.pop(key, None)

    def remove(self, key: PartitionKey, base_offset: int) -> None:
        rows = self._rows.get(key)
        if rows is not None:
            rows.pop(base_offset, None)
        self._finished.pop(key, None)

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        self._forgotten.add((tenant, incarnation))
        for key in [k for k in self._rows if (k.tenant, k.incarnation) == (tenant, incarnation)]:
            del self._rows[key]
            self._finished.pop(key, None)

    def remote_bytes(self) -> int:
        return sum(
            row.size_bytes
            for rows in self._rows.values()
            for row in rows.values()
            if row.state is RemoteSegmentState.COPY_FINISHED
        )


async def delete_remote_segment(
    catalog: Catalog,
    store: ObjectStore,
    index: RemoteIndex,
    row: RemoteSegmentRecord,
    *,
    fence: LeaseFence | None = None,
) -> None:
    """KIP-405's deletion of one remote segment: mark the row delete-started (unless it is
    already), delete its objects, then remove the row. Safe to repeat after a crash.
    ``fence``: the partition owner's lease, which both row writes then carry."""
    key = PartitionKey(row.tenant, row.incarnation, row.partition_id)
    if row.state is not RemoteSegmentState.DELETE_STARTED:
        row = await catalog.set_remote_segment_state(
            row.tenant,
            row.incarnation,
            row.partition_id,
            row.base_offset,
            from_state=row.state,
            to_state=RemoteSegmentState.DELETE_STARTED,
            fence=fence,
        )
        if index.cached(key) is not None:
            index.put(row)
    for object_key in row_keys(row):  # the keys of the copy the row names
        await store.delete(object_key)
    try:
        await catalog.remove_remote_segment(
            row.tenant, row.incarnation, row.partition_id, row.base_offset, fence=fence
        )
    except RemoteSegmentNotFoundError:
        pass  # removed meanwhile (a purge, or a cleanup finishing the same deletion)
    index.remove(key, row.base_offset)
