"""The broker: topics, produce and reads, splits and merges, on top of the catalog and the
partition worker. The front doors (HTTP today) parse their requests and call it; it knows
nothing of HTTP.

A :class:`Broker` gets everything it works with at construction: the catalog, the partition
worker (this process's logs, or the routing over every worker process), tiered storage,
the tenants' limits, the autoscaler's meters, and the :class:`~gateway.broker.topology.
Topology` that answers every question whose answer depends on how many processes serve.
Its parts each live in a module of this package: the views of topics (``views.py``),
produce (``produce.py``), idempotent produce (``answers.py``), splits and merges
(``reshape.py``) and reads (``reads.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autoscaler.loop import ScalingStatus, TopicSnapshot
from autoscaler.measure import LoadMeters
from gateway.broker.answers import IdempotentProducer, IdempotentRequest
from gateway.broker.autoscale_status import autoscale_json
from gateway.broker.names import key_hash, validate_topic_name
from gateway.broker.produce import Admit, Producer
from gateway.broker.reads import Reader
from gateway.broker.reshape import LimitsOf, Reshaper
from gateway.broker.topic_config import normalize_topic_config, with_defaults
from gateway.broker.topology import SINGLE_PROCESS, Topology
from gateway.broker.views import TopicView, TopicViews
from partitions.catalog import UNLIMITED, Catalog, LineageChange, TenantLimits, TopicRecord
from partitions.errors import (
    CatalogUnavailableError,
    ConflictError,
    EventBusError,
    TopicExistsError,
    TopicNotFoundError,
    VersionConflictError,
    WorkerUnreachableError,
)
from partitions.group_model import TopicShape
from partitions.groups import GroupCoordinator
from partitions.incoming import IncomingRecords
from partitions.worker import PartitionWorker
from tiered_storage.service import TieringService

log = logging.getLogger(__name__)

# How often a PATCH of a topic that keeps losing compare-and-set races (to splits made by
# other processes) tries again before it answers 409.
PATCH_ATTEMPTS = 5


async def no_limits(tenant: str) -> TenantLimits:
    return UNLIMITED


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TopicConfigConflictError(ConflictError):
    """PUT of an existing topic with a different config."""

    code = "topic_config_conflict"


class Broker:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        tiered: TieringService,
        *,
        topology: Topology = SINGLE_PROCESS,
        limits: LimitsOf = no_limits,
        meters: LoadMeters | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.catalog = catalog
        self.worker = worker
        # Retention, backpressure and a deleted topic's objects.
        self.tiered = tiered
        self.topology = topology
        self.limits = limits
        # Throughput per partition, counted per appended batch (the autoscaler's input).
        self.meters = meters if meters is not None else LoadMeters(key_hash)
        self.scaling = ScalingStatus()
        self._clock_ms = clock_ms
        self.views = TopicViews(catalog, worker)
        # A topic's view, read from the catalog the first time (on every request's path).
        self.view = self.views.view
        self.groups = GroupCoordinator(catalog, worker, clock_ms=clock_ms)
        self.producer = Producer(self.views, worker, self.meters, topology, clock_ms)
        self.idempotent = IdempotentProducer(self.views, worker, self.producer, topology, clock_ms)
        self.reshaper = Reshaper(
            self.views, catalog, worker, topology, limits, self.meters, self.groups
        )
        self.reader = Reader(self.views, worker, self.refresh_topic)
        # Records from one partition, decoded, or with ``raw`` as whole stored batches.
        self.read = self.reader.read
        # Deleted incarnations whose cleanup a request is running now.
        self._deleting: set[tuple[str, str]] = set()

    def now_ms(self) -> int:
        return self._clock_ms()

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Finish deletions a crash interrupted, open every live partition, and seal the
        logs of partitions the catalog sealed (a split or merge cut short by a crash)."""
        leader = self.topology.leader
        if leader:
            await self.finish_deletions()
        tenants = await self.catalog.list_tenants()
        if leader:
            await self.worker.drop_tenants_except({t.name for t in tenants})
        for tenant in tenants:
            after: str | None = None
            while page := await self.catalog.list_topics(tenant.name, after=after, limit=500):
                for topic in page:
                    view = await self.views.load(tenant.name, topic.name)
                    for pid, partition in view.partitions.items():
                        if not partition.active:
                            try:
                                stats = await self.worker.stats(view.key(pid))
                                if not stats.sealed:
                                    await self.worker.seal(view.key(pid))
                            except WorkerUnreachableError:
                                pass  # its worker is starting too, and seals its own
                after = page[-1].name

    def stop_waiting(self) -> None:
        """Shutdown: release waiting reads and group fetches at once."""
        self.reader.stopping.set()
        self.groups.stopping.set()

    async def refresh_topic(self, tenant: str, name: str) -> None:
        """Another process changed the topic: read it again (or forget it, deleted), and
        let waiting group fetches see new partitions."""
        async with self.views.lock(tenant, name):
            old = self.views.get(tenant, name)
            try:
                view = await self.views.load(tenant, name)
            except TopicNotFoundError:
                self.views.drop(tenant, name)
                return
        newest = max(view.partitions, default=-1)
        if old is None or max(old.partitions, default=-1) < newest:
            self.groups.topic_reshaped(tenant, view.record.incarnation, newest)

    # --- topics --------------------------------------------------------------------------

    async def put_topic(
        self, tenant: str, name: str, given: Mapping[str, Any]
    ) -> tuple[TopicView, bool]:
        """Create the topic, or confirm it when the config is the same. Answers (view, created)."""
        validate_topic_name(name)
        config = normalize_topic_config(given)
        async with self.views.lock(tenant, name):
            limits = await self.limits(tenant)
            placement = await self.topology.place(tenant, [], 1)
            try:
                await self.catalog.create_topic(
                    tenant,
                    name,
                    config,
                    max_topics=limits.max_topics,
                    max_partitions=limits.max_partitions,
                    **({} if placement is None else {"placement": placement}),
                )
            except TopicExistsError:
                existing = await self.catalog.get_topic(tenant, name)
                if with_defaults(existing.config) != config:
                    raise TopicConfigConflictError(
                        f"topic {name!r} exists with another config",
                        config=dict(existing.config),
                    ) from None
                view = self.views.get(tenant, name) or await self.views.load(tenant, name)
                return view, False
            view = await self.views.load(tenant, name)
        await self.topology.topic_changed(tenant, name)
        return view, True

    async def list_topics(self, tenant: str, *, after: str | None, limit: int) -> list[TopicRecord]:
        return await self.catalog.list_topics(tenant, after=after, limit=limit)

    async def patch_topic(self, tenant: str, name: str, changes: Mapping[str, Any]) -> TopicView:
        await self.views.view(tenant, name)  # 404 for an unknown topic
        async with self.views.lock(tenant, name):
            for attempt in range(1, PATCH_ATTEMPTS + 1):
                current = await self.catalog.get_topic(tenant, name)
                config = normalize_topic_config(changes, base=current.config)
                try:
                    updated = await self.catalog.update_topic_config(
                        tenant, name, config, expected_version=current.version
                    )
                except VersionConflictError:
                    # Another process split or merged the topic since it was read.
                    if attempt == PATCH_ATTEMPTS:
                        raise
                    continue
                break
            # The view current now (a split or a re-creation may have replaced the one
            # this request started with). Segment settings apply to logs opened from now on.
            view = self.views.get(tenant, name) or await self.views.load(tenant, name)
            view.record = updated
        await self.topology.topic_changed(tenant, name)
        return view

    async def delete_topic(self, tenant: str, name: str) -> None:
        validate_topic_name(name)
        async with self.views.existing_lock(tenant, name):
            topic = await self.catalog.delete_topic(tenant, name)
            await self.drop_deleted_topic(topic)

    async def drop_deleted_topic(self, topic: TopicRecord) -> None:
        """Remove what remains of an incarnation the catalog marked deleted: this process's
        view and state of it, its data, then its catalog rows. The one path every deletion
        takes (a topic, a whole tenant, one cut short by a crash and finished at start)."""
        tenant = topic.tenant
        self.forget_topic(tenant, topic.incarnation)
        self._deleting.add((tenant, topic.incarnation))
        try:
            await self._remove_topic_data(tenant, topic.incarnation)
        finally:
            self._deleting.discard((tenant, topic.incarnation))

    async def finish_deletions(self) -> None:
        """Finish the deletions the catalog marked but a crash or an unreachable object
        store left unfinished (their data, objects, then catalog rows)."""
        for topic in await self.catalog.list_deleted_topics():
            if (topic.tenant, topic.incarnation) not in self._deleting:
                await self.drop_deleted_topic(topic)

    async def _remove_topic_data(self, tenant: str, incarnation: str) -> None:
        await self.worker.drop_topic(tenant, incarnation)
        try:
            await self.tiered.delete_topic_objects(tenant, incarnation)
        except EventBusError as exc:
            # The catalog keeps the incarnation; finish_deletions retries.
            log.warning(
                "objects of deleted topic %s/%s not removed yet: %s", tenant, incarnation, exc
            )
            return
        with contextlib.suppress(TopicNotFoundError):  # another pass finished it
            await self.catalog.purge_topic(tenant, incarnation)

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        """Forget what this process holds of a deleted incarnation: its view, groups,
        idempotency answers, meters and autoscaling status."""
        self.views.forget_incarnation(tenant, incarnation)
        self.groups.forget_topic(tenant, incarnation)
        self.idempotent.table.drop_topic(tenant, incarnation)
        self.meters.drop_topic(tenant, incarnation)
        self.scaling.drop_topic(tenant, incarnation)

    # --- what topics hold ----------------------------------------------------------------

    async def stored_bytes(self, tenant: str) -> int:
        """Bytes the tenant's live topics hold now, sealed partitions too, local and remote,
        each segment counted once."""
        total = 0
        for (owner, _name), view in self.views.items():
            if owner == tenant:
                for pid in view.partitions:
                    total += (await self.worker.stats(view.key(pid))).size_bytes
                    total += await self.tiered.remote_only_bytes(view.key(pid))
        return total

    async def partition_limit(self, tenant: str) -> int | None:
        """The most active partitions ``tenant`` may have across all its topics (None: no
        limit); splits past it are refused with ``partition_limit_reached``."""
        return (await self.limits(tenant)).max_partitions

    async def partition_headroom(self, tenant: str) -> int | None:
        """How many more active partitions ``tenant`` may have now: the splits it may still
        make (None: no limit; 0: none, at or over its limit)."""
        limit = await self.partition_limit(tenant)
        if limit is None:
            return None
        return max(0, limit - (await self.catalog.tenant_counts(tenant)).active_partitions)

    async def partition_offsets(self, view: TopicView) -> dict[int, tuple[int, int]]:
        """(start, end) offsets of every partition, as its log says now."""
        out = {}
        for pid in view.partitions:
            stats = await self.worker.stats(view.key(pid))
            out[pid] = (stats.start_offset, stats.end_offset)
        return out

    async def partition_storage(self, view: TopicView) -> dict[int, dict[str, Any]]:
        """Per partition: where its data is (local and tiered), for topic describe."""
        out: dict[int, dict[str, Any]] = {}
        for pid in view.partitions:
            key = view.key(pid)
            stats = await self.worker.stats(key)
            remote = await self.tiered.partition_status(key)
            out[pid] = {
                "local_start_offset": stats.local_start_offset,
                "local_bytes": stats.size_bytes,
                "remote_start_offset": remote.remote_start_offset,
                "remote_end_offset": remote.remote_end_offset,
                "remote_bytes": remote.remote_bytes,
                "segments_pending_upload": remote.segments_pending_upload,
                **await self.topology.partition_extra(key),
            }
        return out

    async def autoscale_status(self, view: TopicView) -> dict[str, Any]:
        """The autoscaler's view of the topic, from the process that decides."""
        record = view.record
        found = await self.topology.leader_autoscale(record.tenant, record.name)
        return found if found is not None else self.local_autoscale_status(view)

    def local_autoscale_status(self, view: TopicView) -> dict[str, Any]:
        """The autoscaler's view of the topic as this process measured it."""
        return autoscale_json(self.scaling, self.meters, view)

    def live_views(self) -> list[TopicView]:
        """The views of every live topic this process knows."""
        return self.views.live()

    def scaling_topics(self) -> list[TopicSnapshot]:
        """Every live topic as the autoscaler sees it."""
        return [
            TopicSnapshot(
                view.record.tenant,
                view.record.name,
                view.record.incarnation,
                view.record.config,
                tuple(p for p in view.partitions.values() if p.active),
            )
            for view in self.views.live()
        ]

    async def shape(self, tenant: str, name: str) -> TopicShape:
        """The topic as consumer groups see it now."""
        view = await self.views.view(tenant, name)
        return TopicShape(tenant, name, view.record.incarnation, dict(view.partitions))

    # --- split and merge ------------------------------------------------------------------

    async def split(
        self, tenant: str, name: str, partition_id: int, at: int | None
    ) -> LineageChange:
        """Split an active partition at ``at`` (default: the middle of its range)."""
        return await self.reshaper.split(tenant, name, partition_id, at)

    async def merge(self, tenant: str, name: str, partition_ids: Sequence[int]) -> LineageChange:
        """Merge two adjacent active partitions into one."""
        return await self.reshaper.merge(tenant, name, partition_ids)

    # --- produce --------------------------------------------------------------------------

    async def produce(
        self,
        tenant: str,
        name: str,
        records: IncomingRecords,
        *,
        idempotency: IdempotentRequest | None = None,
        appended: list[int] | None = None,
        admit: Admit | None = None,
    ) -> list[tuple[int, int]]:
        """Append ``records``; answers (partition, offset) per record in request order,
        once every batch is durable.

        With ``idempotency``, a request already answered in the last ten minutes gets the
        same answer and appends nothing (``answers.py`` says the rest). ``appended`` gets
        the indexes of the records this call appended, even when it fails part-way (for
        metering: a replay appends none). ``admit`` is awaited with the indexes about to be
        appended, before any is (quotas: it may refuse); a replay does not call it.
        """
        self.tiered.check_backpressure()
        if idempotency is None:
            return await self.producer.produce(
                tenant, name, records, appended=appended, admit=admit
            )
        return await self.idempotent.produce(
            tenant, name, records, idempotency, appended=appended, admit=admit
        )

    # --- retention -----------------------------------------------------------------------

    async def apply_retention(self) -> int:
        """Apply every live topic's retention (tiered storage's: ``retention_ms`` and
        ``retention_bytes`` bound local and remote data together, ``local_retention_*``
        what stays on disk); answers how many segments went.

        A topic that fails (a partition recovering, say) is logged and skipped; the others
        go on. A catalog that cannot be reached ends the pass (raised: the others would
        fail alike, and the loop says so once). Logs the catalog sealed but that are not
        sealed yet are sealed here too, and deleted topics whose cleanup was interrupted
        are finished.
        """
        try:
            if self.topology.leader:
                await self.finish_deletions()
        except CatalogUnavailableError:
            raise  # every topic would fail the same way: the pass ends here, said once
        except EventBusError as exc:
            log.warning("finishing topic deletions failed: %s", exc)
        removed = 0
        for (tenant, name), view in self.views.items():
            try:
                for pid, partition in view.partitions.items():
                    key = view.key(pid)
                    if not partition.active and not (await self.worker.stats(key)).sealed:
                        await self.reshaper.seal_log(key)
                removed += await self.tiered.retain_topic(
                    tenant, name, view.record.incarnation, view.record.config, list(view.partitions)
                )
            except CatalogUnavailableError:
                raise
            except EventBusError as exc:
                log.warning("retention of topic %s/%s failed: %s", tenant, name, exc)
        return removed
