"""The partition worker of one process among several: each call goes to the process that
owns the partition, this one (:class:`~partitions.worker.LocalPartitionWorker`) or a peer
(:class:`~partitions.worker_remote.RemotePartitionWorker`).

Every partition is owned by exactly one worker process, which opens its log and alone
appends to it, reads it, uploads and retains it. The owner is the worker the catalog's
placement names (chosen when the partition was made), taken modulo the number of workers
running now; a partition made without a placement (before workers existed) is owned by a
worker derived from its key, the same in every process. Placements never change, so they
are cached per topic incarnation and read again only for a partition not seen yet.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping

from partitions.batch import BatchBytes
from partitions.errors import WorkerUnreachableError
from partitions.log.values import (
    AppendResult,
    BatchRead,
    LogConfig,
    LogStats,
    ReadResult,
    SegmentFiles,
    SegmentInfo,
)
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker, PartitionWorker, WorkerTotals
from partitions.worker_remote import RemotePartitionWorker

log = logging.getLogger(__name__)

Placements = Callable[[str, str], Awaitable[dict[int, int]]]
Target = LocalPartitionWorker | RemotePartitionWorker


def default_owner(key: PartitionKey, count: int) -> int:
    """The owner of a partition that has no placement: stable across processes, and the
    partitions of one topic in turn over the workers."""
    topic = zlib.crc32(f"{key.tenant}/{key.incarnation}".encode())
    return (topic + key.partition_id) % count


class RoutingPartitionWorker:
    """:class:`~partitions.worker.PartitionWorker` over every worker process of the server.

    What concerns files on this machine's disk as seen by this process (``segments``,
    ``segment_files``, ``partition_keys``, ``totals``) is answered by the local worker
    alone: tiered storage runs where the partition's files are written.
    """

    def __init__(
        self,
        local: LocalPartitionWorker,
        peers: Mapping[int, RemotePartitionWorker],
        *,
        index: int,
        count: int,
        placements: Placements,
    ) -> None:
        self.local = local
        self.peers = dict(peers)
        self.index = index
        self.count = count
        self._placements = placements
        self._placed: dict[tuple[str, str], dict[int, int]] = {}

    # --- owners ------------------------------------------------------------------------------

    def _cached_owner(self, key: PartitionKey) -> int | None:
        placed = self._placed.get((key.tenant, key.incarnation))
        if placed is None:
            return None
        return placed.get(key.partition_id)

    async def owner(self, key: PartitionKey) -> int:
        """The index of the worker process that owns ``key``."""
        owner = self._cached_owner(key)
        if owner is not None:
            return owner
        placed = await self._placements(key.tenant, key.incarnation)
        owners = {pid: worker % self.count for pid, worker in placed.items()}
        cached = self._placed.setdefault((key.tenant, key.incarnation), {})
        cached.update(owners)
        # Read after the partition was made (callers know it exists): no placement now
        # means none ever, so its default owner holds for good.
        return cached.setdefault(key.partition_id, default_owner(key, self.count))

    def owns(self, key: PartitionKey) -> bool:
        """Whether this process owns ``key`` (as far as it knows without asking)."""
        owner = self._cached_owner(key)
        if owner is None:
            return key in self.local.partition_keys()
        return owner == self.index

    async def _target(self, key: PartitionKey) -> Target:
        owner = self._cached_owner(key)
        if owner is None:
            owner = await self.owner(key)
        if owner == self.index:
            return self.local
        return self.peers[owner]

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        self._placed.pop((tenant, incarnation), None)

    # --- the interface -------------------------------------------------------------------------

    async def open_partition(self, key: PartitionKey, config: LogConfig) -> None:
        target = await self._target(key)
        if target is self.local:
            await self.local.open_partition(key, config)
            return
        try:
            await target.open_partition(key, config)
        except WorkerUnreachableError:
            # The owner opens every partition it owns when it starts.
            log.info("partition %s: its worker is not reachable to open it now", key)

    async def append(self, key: PartitionKey, batch: BatchBytes) -> AppendResult:
        return await (await self._target(key)).append(key, batch)

    async def read(
        self, key: PartitionKey, offset: int, *, max_records: int, max_bytes: int
    ) -> ReadResult:
        target = await self._target(key)
        return await target.read(key, offset, max_records=max_records, max_bytes=max_bytes)

    async def read_batches(self, key: PartitionKey, offset: int, *, max_bytes: int) -> BatchRead:
        return await (await self._target(key)).read_batches(key, offset, max_bytes=max_bytes)

    async def offset_for_timestamp(self, key: PartitionKey, timestamp_ms: int) -> int | None:
        return await (await self._target(key)).offset_for_timestamp(key, timestamp_ms)

    async def wait_for_data(self, key: PartitionKey, offset: int, timeout_s: float) -> bool:
        return await (await self._target(key)).wait_for_data(key, offset, timeout_s)

    async def producer_tags(self, key: PartitionKey, since_ms: int) -> list[tuple[int, bytes]]:
        return await (await self._target(key)).producer_tags(key, since_ms)

    async def seal(self, key: PartitionKey) -> int:
        return await (await self._target(key)).seal(key)

    async def freeze(self, key: PartitionKey) -> int:
        return await (await self._target(key)).freeze(key)

    async def thaw(self, key: PartitionKey) -> None:
        await (await self._target(key)).thaw(key)

    async def stats(self, key: PartitionKey) -> LogStats:
        return await (await self._target(key)).stats(key)

    async def enforce_retention(
        self,
        key: PartitionKey,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_offset: int | None = None,
    ) -> list[SegmentInfo]:
        return await (await self._target(key)).enforce_retention(
            key, retention_ms=retention_ms, retention_bytes=retention_bytes, max_offset=max_offset
        )

    async def drop_topic(self, tenant: str, incarnation: str) -> None:
        """Every peer lets go of the incarnation (a peer that is down has nothing open and
        opens no deleted topic when it starts), then this process deletes its files."""
        for peer in self.peers.values():
            try:
                await peer.drop_topic(tenant, incarnation)
            except WorkerUnreachableError:
                log.info("topic %s/%s: a worker was not reachable to drop it", tenant, incarnation)
        await self.local.drop_topic(tenant, incarnation)
        self.forget_topic(tenant, incarnation)

    async def drop_tenant(self, tenant: str) -> None:
        await self.local.drop_tenant(tenant)

    async def drop_tenants_except(self, known: Collection[str]) -> None:
        await self.local.drop_tenants_except(known)

    def partition_keys(self) -> list[PartitionKey]:
        return self.local.partition_keys()

    def segments(self, key: PartitionKey) -> list[SegmentInfo]:
        return self.local.segments(key)

    async def segment_details(self, key: PartitionKey) -> list[SegmentInfo]:
        return await (await self._target(key)).segment_details(key)

    def segment_files(self, key: PartitionKey, base_offset: int) -> SegmentFiles:
        return self.local.segment_files(key, base_offset)

    async def advance_start(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        return await (await self._target(key)).advance_start(key, offset)

    async def delete_local_below(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        return await (await self._target(key)).delete_local_below(key, offset)

    def totals(self) -> WorkerTotals:
        return self.local.totals()

    async def close(self) -> None:
        await self.local.close()


def _conforms(worker: RoutingPartitionWorker) -> PartitionWorker:
    """Lets mypy prove that the routing worker implements the whole Protocol."""
    return worker
