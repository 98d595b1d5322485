"""Splits and merges, by hand or by the autoscaler, with per-key order kept.

Produce to the topic stops at its gate, the parents are frozen where their logs are and
their durable ends taken, one catalog operation seals them and creates the children, the
children's logs are opened before the new routing is published, and the waiting requests
are routed to the children. See :meth:`Reshaper._reshape` for every step and what a
failure at each leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from autoscaler.measure import LoadMeters
from gateway.broker.topology import Topology
from gateway.broker.views import TopicView, TopicViews
from partitions.catalog import Catalog, LineageChange, PartitionRecord, TenantLimits
from partitions.errors import (
    EventBusError,
    InvalidMergeError,
    InvalidSplitPointError,
    PartitionNotActiveError,
    PartitionNotFoundError,
    PartitionsNotAdjacentError,
)
from partitions.groups import GroupCoordinator
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker

log = logging.getLogger(__name__)

# A tenant's limits on topics and active partitions (its quotas).
LimitsOf = Callable[[str], Awaitable[TenantLimits]]


class Reshaper:
    """Splits and merges the topics of one process's views."""

    def __init__(
        self,
        views: TopicViews,
        catalog: Catalog,
        worker: PartitionWorker,
        topology: Topology,
        limits: LimitsOf,
        meters: LoadMeters,
        groups: GroupCoordinator,
    ) -> None:
        self._views = views
        self._catalog = catalog
        self._worker = worker
        self._topology = topology
        self._limits = limits
        self._meters = meters
        self._groups = groups
        # Splits and merges done, and how long produce to their topic was held for them.
        self.reshapes = 0
        self.pause_s = 0.0

    async def _place(self, tenant: str, parents: list[PartitionKey], count: int) -> dict[str, Any]:
        """The catalog's ``placement`` argument for ``count`` new partitions, if any."""
        placement = await self._topology.place(tenant, parents, count)
        return {} if placement is None else {"placement": placement}

    async def split(
        self, tenant: str, name: str, partition_id: int, at: int | None
    ) -> LineageChange:
        """Split an active partition at ``at`` (default: the middle of its range)."""
        async with self._views.existing_lock(tenant, name):
            view = await self._views.current(tenant, name)
            parent = self._active_partition(view, name, partition_id)
            low, high = parent.hash_range.start, parent.hash_range.end
            point = (low + high) // 2 if at is None else at
            if not low < point < high:
                raise InvalidSplitPointError(
                    f"split point {point} is not strictly inside partition {partition_id}'s "
                    f"range [{low}, {high})",
                    partition=partition_id,
                )
            max_partitions = (await self._limits(tenant)).max_partitions
            placement = await self._place(tenant, [view.key(partition_id)], 2)
            change = await self._reshape(
                view,
                [partition_id],
                lambda ends: self._catalog.split_partition(
                    tenant,
                    name,
                    partition_id,
                    at=point,
                    end_offset=ends[0],
                    max_partitions=max_partitions,
                    **placement,
                ),
            )
        await self._topology.topic_changed(tenant, name)
        return change

    async def merge(self, tenant: str, name: str, partition_ids: Sequence[int]) -> LineageChange:
        """Merge two adjacent active partitions into one."""
        async with self._views.existing_lock(tenant, name):
            view = await self._views.current(tenant, name)
            if len(partition_ids) != 2 or partition_ids[0] == partition_ids[1]:
                raise InvalidMergeError("a merge takes exactly two different partitions")
            parents = [self._active_partition(view, name, pid) for pid in partition_ids]
            low, high = sorted(parents, key=lambda p: p.hash_range.start)
            if low.hash_range.end != high.hash_range.start:
                raise PartitionsNotAdjacentError(
                    f"partitions {low.partition_id} and {high.partition_id} are not adjacent",
                    partitions=[low.partition_id, high.partition_id],
                )
            ids = list(partition_ids)
            placement = await self._place(tenant, [view.key(pid) for pid in ids], 1)
            change = await self._reshape(
                view,
                ids,
                lambda ends: self._catalog.merge_partitions(
                    tenant, name, ids, end_offsets=ends, **placement
                ),
            )
        await self._topology.topic_changed(tenant, name)
        return change

    @staticmethod
    def _active_partition(view: TopicView, name: str, partition_id: int) -> PartitionRecord:
        partition = view.partitions.get(partition_id)
        if partition is None:
            raise PartitionNotFoundError(
                f"topic {name!r} has no partition {partition_id}", partition=partition_id
            )
        if not partition.active:
            raise PartitionNotActiveError(
                f"partition {partition_id} is sealed", partition=partition_id
            )
        return partition

    async def _reshape(
        self,
        view: TopicView,
        parents: list[int],
        change: Callable[[list[int]], Awaitable[LineageChange]],
    ) -> LineageChange:
        """Stop produce to the topic, take the parents' durable ends, change the catalog in
        one operation, route producers to the children, then seal the parents' logs.

        Requests that arrive meanwhile wait at the gate and are then routed with the new
        view; requests already appending finish first, so every acknowledged record of a
        parent lies below the end the catalog records. The parents are also frozen where
        their logs are (their worker process): appends routed there by other processes are
        held, and after the seal routed again. If the catalog refuses, produce resumes as
        before. A crash after the catalog change and before the logs are sealed is finished
        at the next start.
        """
        tenant, name = view.record.tenant, view.record.name
        gate = view.gate
        gate.open.clear()
        held = time.perf_counter()
        frozen: list[PartitionKey] = []
        try:
            await gate.idle.wait()
            ends = []
            try:
                for pid in parents:
                    ends.append(await self._worker.freeze(view.key(pid)))
                    frozen.append(view.key(pid))
                result = await change(ends)
            except BaseException:
                for key in frozen:
                    await self._thaw(key)
                raise
            # The catalog changed: from here on producers must see the new shape, whatever
            # else fails, so that nothing more lands in a parent the catalog sealed.
            try:
                current = await self._views.load(tenant, name)
            except BaseException:
                # Producers must not route with the old view: seal the parents first (an
                # append meeting them then routes again), and reload at the next request.
                self._views.drop(tenant, name)
                for pid in parents:
                    await self.seal_log(view.key(pid))
                raise
        finally:
            # Producers waiting at the gate re-read the current view.
            gate.open.set()
            self.pause_s += time.perf_counter() - held
        self.reshapes += 1
        for pid in parents:
            self._meters.forget(view.key(pid))
        for child in result.created:
            self._meters.start(view.key(child.partition_id), current.record.config)
        newest = max(child.partition_id for child in result.created)
        self._groups.topic_reshaped(tenant, current.record.incarnation, newest)
        for pid in parents:
            await self.seal_log(view.key(pid))
        return result

    async def seal_log(self, key: PartitionKey) -> None:
        """Seal a log the catalog sealed; if it cannot be now, retention and start retry."""
        try:
            await self._worker.seal(key)
        except EventBusError as exc:
            log.warning("partition %s: sealing its log failed (%s); will retry", key, exc)
            await self._thaw(key)

    async def _thaw(self, key: PartitionKey) -> None:
        try:
            await self._worker.thaw(key)
        except EventBusError as exc:
            # Its worker went away: a freeze ends with the connection that made it.
            log.warning("partition %s: could not thaw it (%s)", key, exc)
