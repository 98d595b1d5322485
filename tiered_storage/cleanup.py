"""Cleaning up what crashes and races leave in the object store.

Every ``orphan_check_ms``, :meth:`OrphanCleaner.run_once`:

1. removes what interrupted puts left (temporary files, unfinished multipart uploads) older
   than the grace period;
2. finishes deletions a crash interrupted (rows left *delete-started*);
3. deletes copies that never finished and are not being retried (a *copy-started* row
   whose segment is no longer waiting for upload here), once the uploader has left them
   alone for the grace period: row delete-started, objects deleted, row removed;
4. deletes objects that no row names (a crash between a put and the row's removal, a
   topic purged while a copy ran, a replaced owner's upload under its old epoch), once they
   are older than the grace period. A row names the objects of its base offset *and* epoch:
   keys with and without an epoch are both recognised, and only the row's are kept.

Only keys in this project's layout (:mod:`tiered_storage.layout`) are ever touched, so a
bucket shared with other data is safe. Deleting a topic deletes its objects at once
(:meth:`OrphanCleaner.delete_topic_objects`), before the catalog forgets the topic.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from partitions.catalog import Catalog, RemoteSegmentRecord, RemoteSegmentState
from partitions.partition_key import PartitionKey
from tiered_storage.layout import parse_segment_key, topic_prefix
from tiered_storage.objects import ObjectInfo, ObjectStore
from tiered_storage.state import (
    RemoteIndex,
    TieringCounters,
    TieringSettings,
    delete_remote_segment,
)
from tiered_storage.uploader import SegmentUploader

log = logging.getLogger(__name__)

_Ident = tuple[PartitionKey, int]


class OrphanCleaner:
    def __init__(
        self,
        catalog: Catalog,
        store: ObjectStore,
        index: RemoteIndex,
        uploader: SegmentUploader,
        settings: TieringSettings,
        counters: TieringCounters,
        clock_ms: Callable[[], int],
        *,
        will_retry: Callable[[PartitionKey, int], Awaitable[bool]] | None = None,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._index = index
        self._uploader = uploader
        self._settings = settings
        self._counters = counters
        self._clock_ms = clock_ms
        # Copy-started rows nobody retries, and when they were first seen so.
        self._abandoned_since: dict[_Ident, int] = {}
        # Whether an upload of the segment runs or will be tried again (by this process's
        # uploader; several worker processes ask the partition's owner).
        self.will_retry: Callable[[PartitionKey, int], Awaitable[bool]] = (
            will_retry or self._will_retry
        )

    async def _will_retry(self, key: PartitionKey, base_offset: int) -> bool:
        return self._uploader.will_retry(key, base_offset)

    async def run_once(self) -> int:
        """One cleaning pass; answers how many segments and objects it removed."""
        now = self._clock_ms()
        cutoff = now - self._settings.orphan_grace_ms
        removed = await self._store.remove_incomplete(cutoff)
        for row in await self._rows_in(RemoteSegmentState.DELETE_STARTED):
            await delete_remote_segment(self._catalog, self._store, self._index, row)
            self._counters.remote_segments_deleted += 1
            removed += 1
        removed += await self._abandoned_copies(now)
        removed += await self._unnamed_objects(cutoff)
        if removed:
            log.info("object store cleanup removed %d leftovers", removed)
        return removed

    async def delete_topic_objects(self, tenant: str, incarnation: str) -> int:
        """Stop the topic's uploads and delete every object under its incarnation."""
        await self._uploader.cancel_topic(tenant, incarnation)
        objects = await self._store.list(topic_prefix(tenant, incarnation))
        for info in objects:
            await self._store.delete(info.key)
        self._index.forget_topic(tenant, incarnation)
        return len(objects)

    async def _rows_in(self, state: RemoteSegmentState) -> list[RemoteSegmentRecord]:
        rows: list[RemoteSegmentRecord] = []
        after: tuple[str, str, int, int] | None = None
        while page := await self._catalog.list_remote_segments_in_state(state, after=after):
            rows.extend(page)
            last = page[-1]
            after = (last.tenant, last.incarnation, last.partition_id, last.base_offset)
        return rows

    async def _abandoned_copies(self, now: int) -> int:
        removed = 0
        seen: dict[_Ident, int] = {}
        for row in await self._rows_in(RemoteSegmentState.COPY_STARTED):
            key = PartitionKey(row.tenant, row.incarnation, row.partition_id)
            ident = (key, row.base_offset)
            if await self.will_retry(key, row.base_offset):
                continue
            since = seen[ident] = self._abandoned_since.get(ident, now)
            if now - since < self._settings.orphan_grace_ms:
                continue
            await delete_remote_segment(self._catalog, self._store, self._index, row)
            self._counters.orphans_deleted += 1
            seen.pop(ident)
            removed += 1
        self._abandoned_since = seen
        return removed

    async def _unnamed_objects(self, cutoff: int) -> int:
        by_partition: dict[PartitionKey, list[tuple[ObjectInfo, tuple[int, int]]]] = {}
        for info in await self._store.list(""):
            parsed = parse_segment_key(info.key)
            if parsed is not None and info.last_modified_ms < cutoff:
                copy = (parsed.base_offset, parsed.epoch)
                by_partition.setdefault(parsed.partition, []).append((info, copy))
        removed = 0
        for key, objects in by_partition.items():
            # The catalog, not this process's mirror: another writer may have added rows.
            rows = await self._catalog.list_remote_segments(
                key.tenant, key.incarnation, key.partition_id
            )
            named = {(row.base_offset, row.epoch) for row in rows}
            for info, copy in objects:
                if copy in named:
                    continue
                await self._store.delete(info.key)
                self._counters.orphans_deleted += 1
                removed += 1
        return removed
