"""The broker: topics, routing, produce and read, on top of the catalog and the workers.

Handlers parse HTTP and call the broker; the broker knows nothing of HTTP. It keeps an
in-memory view of each topic it has touched (incarnation, config, partitions and the hash
ranges of the active ones), refreshed whenever this process changes the topic.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import xxhash

from autoscaler.loop import ScalingStatus, TopicSnapshot
from autoscaler.measure import LoadMeters
from gateway.config import log_config, normalize_topic_config, with_defaults
from partitions.batch import NewRecord, encode_batch
from partitions.catalog import (
    UNLIMITED,
    Catalog,
    LineageChange,
    PartitionRecord,
    TenantLimits,
    TopicRecord,
)
from partitions.errors import (
    ConflictError,
    EventBusError,
    InvalidInputError,
    InvalidMergeError,
    InvalidSplitPointError,
    PartitionNotActiveError,
    PartitionNotFoundError,
    PartitionSealedError,
    PartitionsNotAdjacentError,
    PartitionUnavailableError,
    TopicExistsError,
    TopicNotFoundError,
    VersionConflictError,
    WorkerLostError,
    WorkerUnreachableError,
)
from partitions.groups import GroupCoordinator, TopicShape
from partitions.idempotency import (
    ANSWER_TTL_MS,
    AnswerTable,
    ProducerTag,
    decode_tag,
    encode_tags,
)
from partitions.idempotency import Entry as IdempotencyEntry
from partitions.log.values import BatchRead, ReadResult
from partitions.waiting import waiting
from partitions.worker import PartitionKey, PartitionWorker
from tiered_storage.service import TieringService

log = logging.getLogger(__name__)

# A tenant's limits on topics and active partitions; the app factory wires the quotas in.
LimitsOf = Callable[[str], Awaitable[TenantLimits]]


async def no_limits(tenant: str) -> TenantLimits:
    return UNLIMITED


# Producer tags for the records at some request indexes: (indexes, tag) per batch to write.
TagPieces = list[tuple[list[int], bytes]]
Tagger = Callable[[Sequence[int]], TagPieces]
# Workers for new partitions: (tenant, the partitions they replace, how many) -> a worker each.
Placer = Callable[[str, list[PartitionKey], int], Awaitable[list[int]]]
# Told after this process changed a topic (created, reconfigured, reshaped): (tenant, name).
TopicAnnouncer = Callable[[str, str], Awaitable[None]]
# How often a PATCH of a topic that keeps losing compare-and-set races (to splits made by
# other processes) tries again before it answers 409.
PATCH_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    key: str
    request_hash: bytes


TOPIC_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class InvalidTopicNameError(InvalidInputError):
    code = "invalid_topic_name"


class TopicConfigConflictError(ConflictError):
    """PUT of an existing topic with a different config."""

    code = "topic_config_conflict"


def validate_topic_name(name: str) -> None:
    if not 1 <= len(name) <= 249 or name in (".", "..") or not set(name) <= TOPIC_NAME_CHARS:
        raise InvalidTopicNameError(
            f"invalid topic name {name!r}: 1 to 249 of [A-Za-z0-9._-], not '.' or '..'"
        )


# How often one produce request may meet a partition sealed under it (by another process)
# and route again before it gives up; waiting out a split or merge here is not counted.
MAX_SEALED_REROUTES = 8


def key_hash(key: bytes) -> int:
    return int(xxhash.xxh3_64_intdigest(key))


@dataclass(slots=True)
class TopicGate:
    """Produce to a topic waits on ``open``; a split or merge clears it, waits for
    ``in_flight`` to reach zero (``idle``), reshapes the topic, and opens it again.

    One gate serves every view of a topic incarnation: a view reloaded while requests still
    run on an older one counts them too, so no append to a parent can slip past a change.
    """

    open: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.open.set()
        self.idle.set()


@dataclass(slots=True)
class TopicView:
    """What the broker knows of one live topic."""

    record: TopicRecord
    partitions: dict[int, PartitionRecord]
    active_starts: list[int] = field(default_factory=list)
    active_ids: list[int] = field(default_factory=list)
    keyless: itertools.count[int] = field(default_factory=itertools.count)
    gate: TopicGate = field(default_factory=TopicGate)

    def __post_init__(self) -> None:
        active = sorted(
            (p for p in self.partitions.values() if p.active), key=lambda p: p.hash_range.start
        )
        self.active_starts = [p.hash_range.start for p in active]
        self.active_ids = [p.partition_id for p in active]

    def route(self, key: bytes) -> int:
        return self.active_ids[bisect.bisect_right(self.active_starts, key_hash(key)) - 1]

    def key(self, partition_id: int) -> PartitionKey:
        return PartitionKey(self.record.tenant, self.record.incarnation, partition_id)


@dataclass(frozen=True, slots=True)
class AnswerClaim:
    """An attempt at an idempotent request, at the process that keeps its answers."""

    tenant: str
    incarnation: str
    key: str
    entry: IdempotencyEntry
    # Set while the attempt runs (None: the request is answered already).
    busy: asyncio.Future[None] | None


@dataclass(frozen=True, slots=True)
class AnswerTicket:
    """What another process (the one keeping the answers) said of an attempt: the answer,
    or what to write and how to tag it."""

    answer: list[tuple[int, int]] | None
    missing: list[int] = field(default_factory=list)
    request_hash: bytes = b""
    accepted_ms: int = 0
    total_records: int = 0
    token: int = 0


class AnswerHome(Protocol):
    """Where the answers of idempotent produce are kept, when several worker processes
    serve (gateway/cluster.py): one process per key."""

    def serves(self, tenant: str, topic: str, key: str) -> bool:
        """Whether this process keeps the key's answers."""
        ...

    async def claim(
        self,
        tenant: str,
        topic: str,
        incarnation: str,
        key: str,
        request_hash: bytes,
        total: int,
    ) -> AnswerTicket: ...

    async def settle(
        self,
        ticket: AnswerTicket,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> list[tuple[int, int]] | None:
        """Where the attempt's records went; answers the request's answer once complete."""
        ...


@dataclass(frozen=True, slots=True)
class ReadAnswer:
    partition: PartitionRecord
    # Where the read started: the offset asked for, or the one a timestamp or the log
    # start resolved to.
    offset: int
    result: ReadResult | BatchRead


class Broker:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        meters: LoadMeters | None = None,
    ) -> None:
        self.catalog = catalog
        self.worker = worker
        # Throughput per partition, counted per appended batch (the autoscaler's input).
        self.meters = meters if meters is not None else LoadMeters(key_hash)
        self.scaling = ScalingStatus()
        # Splits and merges done, and how long produce to their topic was held for them.
        self.reshapes = 0
        self.reshape_pause_s = 0.0
        self._clock_ms = clock_ms
        self._views: dict[tuple[str, str], TopicView] = {}
        self.groups = GroupCoordinator(catalog, worker, clock_ms=clock_ms)
        self._topic_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.stopping = asyncio.Event()
        self.long_polls_waiting = 0
        self.answers = AnswerTable()
        self.idempotent_replays = 0
        # Tiered storage, when the app wires it: retention, backpressure, topic objects.
        self.tiered: TieringService | None = None
        # Deleted incarnations whose cleanup a request is running now.
        self._deleting: set[tuple[str, str]] = set()
        self.limits: LimitsOf = no_limits
        # With several worker processes (gateway/cluster.py): where new partitions go, who
        # hears of topic changes, whether this process runs the once-per-server work
        # (finishing deletions), and what topic describe adds per partition.
        self.placer: Placer | None = None
        self.announce: TopicAnnouncer | None = None
        self.leader = True
        self.describe_extra: Callable[[PartitionKey], Awaitable[dict[str, Any]]] | None = None
        # Whether this process owns a partition (several worker processes): keyless
        # records go to its own partitions when it has active ones.
        self.owns: Callable[[PartitionKey], bool] | None = None
        # Where idempotent produce's answers are kept, when not all here.
        self.answer_home: AnswerHome | None = None
        # Where the autoscaler runs, when not here: its view of a topic, for describe.
        self.remote_autoscale: Callable[[TopicView], Awaitable[dict[str, Any]]] | None = None

    def now_ms(self) -> int:
        return self._clock_ms()

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Finish deletions a crash interrupted, open every live partition, and seal the
        logs of partitions the catalog sealed (a split or merge cut short by a crash)."""
        if self.leader:
            await self.finish_deletions()
        tenants = await self.catalog.list_tenants()
        if self.leader:
            await self.worker.drop_tenants_except({t.name for t in tenants})
        for tenant in tenants:
            after: str | None = None
            while page := await self.catalog.list_topics(tenant.name, after=after, limit=500):
                for topic in page:
                    view = await self._load_view(tenant.name, topic.name)
                    for pid, partition in view.partitions.items():
                        if not partition.active:
                            try:
                                stats = await self.worker.stats(view.key(pid))
                                if not stats.sealed:
                                    await self.worker.seal(view.key(pid))
                            except WorkerUnreachableError:
                                pass  # its worker is starting too, and seals its own
                after = page[-1].name

    async def refresh_topic(self, tenant: str, name: str) -> None:
        """Another process changed the topic: read it again (or forget it, deleted), and
        let waiting group fetches see new partitions."""
        async with self._lock(tenant, name):
            old = self._views.get((tenant, name))
            try:
                view = await self._load_view(tenant, name)
            except TopicNotFoundError:
                self._views.pop((tenant, name), None)
                return
        newest = max(view.partitions, default=-1)
        if old is None or max(old.partitions, default=-1) < newest:
            self.groups.topic_reshaped(tenant, view.record.incarnation, newest)

    async def _announce(self, tenant: str, name: str) -> None:
        if self.announce is not None:
            await self.announce(tenant, name)

    async def _place(self, tenant: str, parents: list[PartitionKey], count: int) -> dict[str, Any]:
        """The catalog's ``placement`` argument for ``count`` new partitions, if any."""
        if self.placer is None:
            return {}
        return {"placement": await self.placer(tenant, parents, count)}

    async def finish_deletions(self) -> None:
        """Finish the deletions the catalog marked but a crash or an unreachable object
        store left unfinished (their data, objects, then catalog rows)."""
        for topic in await self.catalog.list_deleted_topics():
            if (topic.tenant, topic.incarnation) not in self._deleting:
                await self.drop_deleted_topic(topic)

    async def _remove_topic_data(self, tenant: str, incarnation: str) -> None:
        await self.worker.drop_topic(tenant, incarnation)
        if self.tiered is not None:
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

    def _lock(self, tenant: str, name: str) -> asyncio.Lock:
        return self._topic_locks.setdefault((tenant, name), asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _existing_topic_lock(self, tenant: str, name: str) -> AsyncIterator[None]:
        """Hold the topic's lock; drop it again when the topic turns out not to exist, so
        that requests naming missing topics cannot grow memory."""
        lock = self._lock(tenant, name)
        try:
            async with lock:
                yield
        except TopicNotFoundError:
            idle = not lock.locked() and (tenant, name) not in self._views
            if idle and self._topic_locks.get((tenant, name)) is lock:
                del self._topic_locks[(tenant, name)]
            raise

    async def _load_view(self, tenant: str, name: str) -> TopicView:
        """Read the topic from the catalog, open its logs, make it the current view."""
        record = await self.catalog.get_topic(tenant, name)
        partitions = await self.catalog.list_partitions(tenant, name)
        config = log_config(record.config)
        # Every log is open before the view is seen: a reader of a new child must find it.
        for partition in partitions:
            key = PartitionKey(tenant, record.incarnation, partition.partition_id)
            await self.worker.open_partition(key, config)
        old = self._views.get((tenant, name))
        gate = (
            old.gate if old is not None and old.record.incarnation == record.incarnation else None
        )
        view = TopicView(record, {p.partition_id: p for p in partitions}, gate=gate or TopicGate())
        self._views[(tenant, name)] = view
        return view

    async def view(self, tenant: str, name: str) -> TopicView:
        found = self._views.get((tenant, name))
        if found is not None:
            return found  # only a valid name is ever loaded
        validate_topic_name(name)
        lock = self._lock(tenant, name)
        try:
            async with lock:
                found = self._views.get((tenant, name))
                return found if found is not None else await self._load_view(tenant, name)
        except TopicNotFoundError:
            # Keep no lock for a name that does not exist: lookups cannot grow memory.
            if not lock.locked() and (tenant, name) not in self._views:
                self._topic_locks.pop((tenant, name), None)
            raise

    # --- topics --------------------------------------------------------------------------

    async def put_topic(
        self, tenant: str, name: str, given: Mapping[str, Any]
    ) -> tuple[TopicView, bool]:
        """Create the topic, or confirm it when the config is the same. Answers (view, created)."""
        validate_topic_name(name)
        config = normalize_topic_config(given)
        async with self._lock(tenant, name):
            limits = await self.limits(tenant)
            try:
                await self.catalog.create_topic(
                    tenant,
                    name,
                    config,
                    max_topics=limits.max_topics,
                    max_partitions=limits.max_partitions,
                    **await self._place(tenant, [], 1),
                )
            except TopicExistsError:
                existing = await self.catalog.get_topic(tenant, name)
                if with_defaults(existing.config) != config:
                    raise TopicConfigConflictError(
                        f"topic {name!r} exists with another config",
                        config=dict(existing.config),
                    ) from None
                view = self._views.get((tenant, name)) or await self._load_view(tenant, name)
                return view, False
            view = await self._load_view(tenant, name)
        await self._announce(tenant, name)
        return view, True

    async def list_topics(self, tenant: str, *, after: str | None, limit: int) -> list[TopicRecord]:
        return await self.catalog.list_topics(tenant, after=after, limit=limit)

    async def patch_topic(self, tenant: str, name: str, changes: Mapping[str, Any]) -> TopicView:
        await self.view(tenant, name)  # 404 for an unknown topic
        async with self._lock(tenant, name):
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
            view = self._views.get((tenant, name)) or await self._load_view(tenant, name)
            view.record = updated
        await self._announce(tenant, name)
        return view

    async def delete_topic(self, tenant: str, name: str) -> None:
        validate_topic_name(name)
        async with self._existing_topic_lock(tenant, name):
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

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        """Forget what this process holds of a deleted incarnation: its view, groups,
        idempotency answers, meters and autoscaling status."""
        for (owner, name), view in list(self._views.items()):
            if owner == tenant and view.record.incarnation == incarnation:
                self._views.pop((owner, name), None)
                lock = self._topic_locks.get((owner, name))
                if lock is not None and not lock.locked():  # delete_topic holds it: keep it
                    self._topic_locks.pop((owner, name), None)
        self.groups.forget_topic(tenant, incarnation)
        self.answers.drop_topic(tenant, incarnation)
        self.meters.drop_topic(tenant, incarnation)
        self.scaling.drop_topic(tenant, incarnation)

    async def stored_bytes(self, tenant: str) -> int:
        """Bytes the tenant's live topics hold in their logs now, sealed partitions too;
        with tiered storage, local and remote bytes, each segment counted once."""
        total = 0
        for (owner, _name), view in list(self._views.items()):
            if owner == tenant:
                for pid in view.partitions:
                    total += (await self.worker.stats(view.key(pid))).size_bytes
                    if self.tiered is not None:
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
            entry: dict[str, Any] = {
                "local_start_offset": stats.local_start_offset,
                "local_bytes": stats.size_bytes,
                "remote_start_offset": None,
                "remote_end_offset": None,
                "remote_bytes": 0,
                "segments_pending_upload": 0,
            }
            if self.tiered is not None:
                remote = await self.tiered.partition_status(key)
                entry["remote_start_offset"] = remote.remote_start_offset
                entry["remote_end_offset"] = remote.remote_end_offset
                entry["remote_bytes"] = remote.remote_bytes
                entry["segments_pending_upload"] = remote.segments_pending_upload
            if self.describe_extra is not None:
                entry.update(await self.describe_extra(key))
            out[pid] = entry
        return out

    def live_views(self) -> list[TopicView]:
        """The views of every live topic this process knows."""
        return list(self._views.values())

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
            for view in self._views.values()
        ]

    async def shape(self, tenant: str, name: str) -> TopicShape:
        """The topic as consumer groups see it now."""
        view = await self.view(tenant, name)
        return TopicShape(tenant, name, view.record.incarnation, dict(view.partitions))

    # --- split and merge ------------------------------------------------------------------

    async def split(
        self, tenant: str, name: str, partition_id: int, at: int | None
    ) -> LineageChange:
        """Split an active partition at ``at`` (default: the middle of its range)."""
        async with self._existing_topic_lock(tenant, name):
            view = await self._current_view(tenant, name)
            parent = self._active_partition(view, name, partition_id)
            low, high = parent.hash_range.start, parent.hash_range.end
            point = (low + high) // 2 if at is None else at
            if not low < point < high:
                raise InvalidSplitPointError(
                    f"split point {point} is not strictly inside partition {partition_id}'s "
                    f"range [{low}, {high})",
                    partition=partition_id,
                )
            max_partitions = (await self.limits(tenant)).max_partitions
            placement = await self._place(tenant, [view.key(partition_id)], 2)
            change = await self._reshape(
                view,
                [partition_id],
                lambda ends: self.catalog.split_partition(
                    tenant,
                    name,
                    partition_id,
                    at=point,
                    end_offset=ends[0],
                    max_partitions=max_partitions,
                    **placement,
                ),
            )
        await self._announce(tenant, name)
        return change

    async def merge(self, tenant: str, name: str, partition_ids: Sequence[int]) -> LineageChange:
        """Merge two adjacent active partitions into one."""
        async with self._existing_topic_lock(tenant, name):
            view = await self._current_view(tenant, name)
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
                lambda ends: self.catalog.merge_partitions(
                    tenant, name, ids, end_offsets=ends, **placement
                ),
            )
        await self._announce(tenant, name)
        return change

    async def _current_view(self, tenant: str, name: str) -> TopicView:
        validate_topic_name(name)
        found = self._views.get((tenant, name))
        return found if found is not None else await self._load_view(tenant, name)

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
                    ends.append(await self.worker.freeze(view.key(pid)))
                    frozen.append(view.key(pid))
                result = await change(ends)
            except BaseException:
                for key in frozen:
                    await self._thaw(key)
                raise
            # The catalog changed: from here on producers must see the new shape, whatever
            # else fails, so that nothing more lands in a parent the catalog sealed.
            try:
                current = await self._load_view(tenant, name)
            except BaseException:
                # Producers must not route with the old view: seal the parents first (an
                # append meeting them then routes again), and reload at the next request.
                self._views.pop((tenant, name), None)
                for pid in parents:
                    await self._seal_log(view.key(pid))
                raise
        finally:
            # Producers waiting at the gate re-read the current view.
            gate.open.set()
            self.reshape_pause_s += time.perf_counter() - held
        self.reshapes += 1
        for pid in parents:
            self.meters.forget(view.key(pid))
        for child in result.created:
            self.meters.start(view.key(child.partition_id), current.record.config)
        newest = max(child.partition_id for child in result.created)
        self.groups.topic_reshaped(tenant, current.record.incarnation, newest)
        for pid in parents:
            await self._seal_log(view.key(pid))
        return result

    async def _seal_log(self, key: PartitionKey) -> None:
        """Seal a log the catalog sealed; if it cannot be now, retention and start retry."""
        try:
            await self.worker.seal(key)
        except EventBusError as exc:
            log.warning("partition %s: sealing its log failed (%s); will retry", key, exc)
            await self._thaw(key)

    async def _thaw(self, key: PartitionKey) -> None:
        try:
            await self.worker.thaw(key)
        except EventBusError as exc:
            # Its worker went away: a freeze ends with the connection that made it.
            log.warning("partition %s: could not thaw it (%s)", key, exc)

    # --- produce -------------------------------------------------------------------------

    async def produce(
        self,
        tenant: str,
        name: str,
        records: Sequence[NewRecord],
        *,
        idempotency: IdempotentRequest | None = None,
        appended: list[int] | None = None,
        admit: Callable[[Sequence[int]], Awaitable[None]] | None = None,
    ) -> list[tuple[int, int]]:
        """Append ``records``; answers (partition, offset) per record in request order.

        Records are grouped into one batch per partition, encoded once, and appended to the
        partitions concurrently; the answer comes when every batch is durable. If a batch
        meets a partition sealed since the view was made, only that batch is routed again.

        With ``idempotency``, a request already answered in the last ten minutes gets the
        same answer and appends nothing; one still running is waited for; one that wrote
        only some of its records (a crash or a failure part-way) appends only the rest.

        ``appended`` gets the indexes of the records this call appended, even when it
        fails part-way (for metering: a replay appends none). ``admit`` is awaited with the
        indexes about to be appended, before any is (quotas: it may refuse); a replay does
        not call it.
        """
        if self.tiered is not None:
            self.tiered.check_backpressure()
        if idempotency is None:
            plain: list[tuple[int, int] | None] = [None] * len(records)
            if admit is not None:
                await admit(range(len(records)))
            try:
                await self._produce(tenant, name, records, list(range(len(records))), plain, None)
            finally:
                if appended is not None:
                    appended.extend(i for i, placed in enumerate(plain) if placed is not None)
            return [placed for placed in plain if placed is not None]
        view = await self.view(tenant, name)
        incarnation = view.record.incarnation
        home = self.answer_home
        if home is not None and not home.serves(tenant, name, idempotency.key):
            return await self._produce_with_home(
                home, tenant, name, incarnation, records, idempotency, appended, admit
            )
        claim = await self.claim_answer(
            tenant, view, idempotency.key, idempotency.request_hash, len(records)
        )
        entry = claim.entry
        if claim.busy is None:
            return entry.answer()
        answer: list[tuple[int, int] | None] = [None] * len(records)
        lost: set[int] = set()
        try:
            missing = entry.missing()
            if admit is not None:
                await admit(missing)
            tagger = partial(
                encode_tags,
                idempotency.key,
                entry.request_hash,
                entry.accepted_ms,
                entry.total_records,
            )
            await self._produce(tenant, name, records, missing, answer, tagger, lost=lost)
        finally:
            placed = [(i, where) for i, where in enumerate(answer) if where]
            if appended is not None:
                appended.extend(i for i, _ in placed)
            self.settle_answer(claim, placed, lost)
        if len(placed) == len(records):
            # This attempt wrote every record (the usual first attempt): that is the answer.
            return [where for _, where in placed]
        return entry.answer()

    async def claim_answer(
        self, tenant: str, view: TopicView, key: str, request_hash: bytes, total: int
    ) -> AnswerClaim:
        """The answer entry of an idempotent request, as an attempt needs it: complete (the
        request was answered: nothing to write), or with the records still missing and
        marked busy for this attempt, which ends with :meth:`settle_answer`. An attempt
        already running is waited for; appends whose outcome was unknown are looked up."""
        incarnation = view.record.incarnation
        await self._rebuild_answers(tenant, view)
        while True:
            entry = self.answers.claim(
                tenant, incarnation, key, request_hash, total, now_ms=self._clock_ms()
            )
            if entry.busy is not None:
                await asyncio.shield(entry.busy)
                continue
            if entry.unsure:
                await self._settle_unsure(tenant, view, key, entry)
                continue
            if entry.complete:
                self.idempotent_replays += 1
                return AnswerClaim(tenant, incarnation, key, entry, None)
            busy = entry.busy = asyncio.get_running_loop().create_future()
            return AnswerClaim(tenant, incarnation, key, entry, busy)

    def settle_answer(
        self,
        claim: AnswerClaim,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> None:
        """End an attempt: record where its records went. Appends whose worker died before
        answering may or may not be written: the next attempt looks in those partitions
        before writing anything."""
        entry, busy = claim.entry, claim.busy
        entry.add_placed(placed)
        if lost:
            entry.unsure = entry.unsure | frozenset(lost)
        entry.busy = None
        if busy is not None and not busy.done():
            busy.set_result(None)
        if not placed and not entry.written and not entry.unsure:
            # Nothing was written (the attempt failed before any append): the key stays
            # free for a corrected request.
            self.answers.discard(claim.tenant, claim.incarnation, claim.key, entry)
        else:
            self.answers.settle(claim.tenant, claim.incarnation, claim.key, entry)

    async def _produce_with_home(
        self,
        home: AnswerHome,
        tenant: str,
        name: str,
        incarnation: str,
        records: Sequence[NewRecord],
        idempotency: IdempotentRequest,
        appended: list[int] | None,
        admit: Callable[[Sequence[int]], Awaitable[None]] | None,
    ) -> list[tuple[int, int]]:
        """An idempotent produce whose answers another worker process keeps: it says what
        to write (nothing, for an answered request), this process writes it, then tells it
        where the records went."""
        ticket = await home.claim(
            tenant, name, incarnation, idempotency.key, idempotency.request_hash, len(records)
        )
        if ticket.answer is not None:
            return ticket.answer  # counted as a replay by the home, which answered it
        answer: list[tuple[int, int] | None] = [None] * len(records)
        lost: set[int] = set()
        try:
            if admit is not None:
                await admit(ticket.missing)
            tagger = partial(
                encode_tags,
                idempotency.key,
                ticket.request_hash,
                ticket.accepted_ms,
                ticket.total_records,
            )
            await self._produce(tenant, name, records, ticket.missing, answer, tagger, lost=lost)
        finally:
            placed = [(i, where) for i, where in enumerate(answer) if where]
            if appended is not None:
                appended.extend(i for i, _ in placed)
            final = await home.settle(ticket, placed, lost)
        if final is None:
            raise PartitionUnavailableError("the request was not completed; retry")
        return final

    async def _settle_unsure(
        self, tenant: str, view: TopicView, key: str, entry: IdempotencyEntry
    ) -> None:
        """Find which of an attempt's appends with unknown outcome were written: the
        partitions' producer tags of this request say so."""
        busy = entry.busy = asyncio.get_running_loop().create_future()
        try:
            # Segments are chosen by modification time, which is the real clock's.
            since = min(entry.accepted_ms, time.time_ns() // 1_000_000) - 60_000
            for pid in sorted(entry.unsure):
                for base_offset, raw in await self.worker.producer_tags(view.key(pid), since):
                    try:
                        tag = decode_tag(raw)
                    except ValueError:
                        continue
                    if tag.key == key and tag.request_hash == entry.request_hash:
                        entry.add_found(pid, base_offset, tag.indexes)
            entry.unsure = frozenset()
        finally:
            entry.busy = None
            busy.set_result(None)

    async def _rebuild_answers(self, tenant: str, view: TopicView) -> None:
        """Load the topic's recent producer tags into the answer table, once per start."""
        incarnation = view.record.incarnation
        pending = self.answers.rebuild_future(tenant, incarnation)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future = self.answers.start_rebuild(tenant, incarnation)
        try:
            now = self._clock_ms()
            # Segments are chosen by modification time, which is the real clock's.
            since = min(now, time.time_ns() // 1_000_000) - ANSWER_TTL_MS - 60_000
            # Into the table only once every partition was read: a rebuild that fails
            # part-way leaves nothing behind for the next one to add to.
            found: list[tuple[int, int, ProducerTag]] = []
            for pid in sorted(view.partitions):
                for base_offset, raw in await self.worker.producer_tags(view.key(pid), since):
                    try:
                        tag = decode_tag(raw)
                    except ValueError:
                        log.warning("partition %s: unreadable producer tag at %d", pid, base_offset)
                        continue
                    if tag.accepted_ms + ANSWER_TTL_MS > now:
                        found.append((pid, base_offset, tag))
            for pid, base_offset, tag in found:
                self.answers.add_tag(tenant, incarnation, pid, base_offset, tag)
        except BaseException as exc:
            self.answers.forget_rebuild(tenant, incarnation)
            future.set_exception(exc)
            future.exception()  # retrieved: the caller gets the error itself
            raise
        future.set_result(None)

    async def _produce(
        self,
        tenant: str,
        name: str,
        records: Sequence[NewRecord],
        todo: list[int],
        answer: list[tuple[int, int] | None],
        tagger: Tagger | None,
        *,
        lost: set[int] | None = None,
    ) -> None:
        reroutes = 0
        while True:
            view = await self.view(tenant, name)
            gate = view.gate
            if not gate.open.is_set():
                # A split or merge is reshaping the topic; route with what it leaves. However
                # many changes pass meanwhile, waiting here is never an error.
                await gate.open.wait()
                continue
            gate.in_flight += 1
            gate.idle.clear()
            try:
                todo = await self._produce_once(view, records, todo, answer, tagger, lost)
            finally:
                gate.in_flight -= 1
                if gate.in_flight == 0:
                    gate.idle.set()
            if not todo:
                return
            reroutes += 1
            if reroutes > MAX_SEALED_REROUTES:
                raise PartitionUnavailableError(
                    f"topic {name!r} kept changing shape while producing; retry", topic=name
                )
            # Routed to a partition whose log is sealed: refresh the view from the catalog.
            async with self._lock(tenant, name):
                if self._views.get((tenant, name)) is view:
                    await self._load_view(tenant, name)

    async def _produce_once(
        self,
        view: TopicView,
        records: Sequence[NewRecord],
        todo: list[int],
        answer: list[tuple[int, int] | None],
        tagger: Tagger | None,
        lost: set[int] | None = None,
    ) -> list[int]:
        """Append the records at ``todo``; fill ``answer``; answer the indexes whose
        partition turned out to be sealed (they were not written). Partitions whose worker
        died before answering an append go into ``lost``."""
        groups: dict[int, list[int]] = {}
        keyless: int | None = None
        for index in todo:
            record = records[index]
            if record.key is None:
                if keyless is None:
                    ids = view.active_ids
                    if self.owns is not None:
                        # Keyless records may go anywhere: to a partition of this process,
                        # when it has one, without a hop to another.
                        ids = [pid for pid in ids if self.owns(view.key(pid))] or ids
                    keyless = ids[next(view.keyless) % len(ids)]
                pid = keyless
            else:
                pid = view.route(record.key)
            groups.setdefault(pid, []).append(index)
        now = self._clock_ms()
        max_record_bytes = int(view.record.config["max_record_bytes"])
        # Every batch is encoded before any is appended, so that a record too large fails
        # the request before anything is written.
        batches: dict[int, list[tuple[list[int], bytes]]] = {}
        for pid, indexes in groups.items():
            pieces = tagger(indexes) if tagger is not None else [(indexes, b"")]
            batches[pid] = [
                (
                    piece,
                    encode_batch(
                        [records[i] for i in piece],
                        now_ms=now,
                        max_record_bytes=max_record_bytes,
                        producer_tag=tag,
                    ),
                )
                for piece, tag in pieces
            ]
        if len(batches) == 1:
            # One partition (every single-record produce): no task to run it alongside others.
            [(pid, pieces)] = batches.items()
            sealed = await self._append_pieces(view.key(pid), pieces, answer, records, view, lost)
            return sorted(sealed)
        results = await asyncio.gather(
            *(
                self._append_pieces(view.key(pid), batches[pid], answer, records, view, lost)
                for pid in batches
            ),
            return_exceptions=True,
        )
        again: list[int] = []
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                again.extend(result)
        if failure is not None:
            raise failure
        return sorted(again)

    async def _append_pieces(
        self,
        key: PartitionKey,
        batches: list[tuple[list[int], bytes]],
        answer: list[tuple[int, int] | None],
        records: Sequence[NewRecord],
        view: TopicView,
        lost: set[int] | None = None,
    ) -> list[int]:
        """Append one partition's batches in order; answers the indexes not written because
        the partition is sealed."""
        for n, (indexes, batch) in enumerate(batches):
            try:
                result = await self.worker.append(key, batch)
            except PartitionSealedError:
                return [i for rest, _ in batches[n:] for i in rest]
            except WorkerLostError:
                if lost is not None:
                    lost.add(key.partition_id)
                raise
            self.meters.record(key, view.record.config, len(batch), records, indexes)
            for position, index in enumerate(indexes):
                answer[index] = (key.partition_id, result.base_offset + position)
        return []

    # --- read ----------------------------------------------------------------------------

    async def read(
        self,
        tenant: str,
        name: str,
        partition_id: int,
        *,
        offset: int | None,
        timestamp_ms: int | None,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        raw: bool = False,
    ) -> ReadAnswer:
        """Records from one partition, decoded, or with ``raw`` as whole stored batches."""
        view = await self.view(tenant, name)
        partition = view.partitions.get(partition_id)
        if partition is None:
            raise PartitionNotFoundError(
                f"topic {name!r} has no partition {partition_id}", partition=partition_id
            )
        key = view.key(partition_id)
        if offset is None:
            stats = await self.worker.stats(key)
            if timestamp_ms is not None:
                found = await self.worker.offset_for_timestamp(key, timestamp_ms)
                offset = stats.end_offset if found is None else found
            else:
                offset = stats.start_offset
        if wait_ms > 0:
            stats = await self.worker.stats(key)
            # Only an offset exactly at the end waits; past it, the read answers 416 at once.
            if offset == stats.end_offset and not stats.sealed:
                await self._long_poll(key, offset, wait_ms / 1000)
        result: ReadResult | BatchRead
        if raw:
            result = await self.worker.read_batches(key, offset, max_bytes=max_bytes)
        else:
            result = await self.worker.read(
                key, offset, max_records=max_records, max_bytes=max_bytes
            )
        # A split may have sealed the partition during the wait: answer with what is now.
        current = self._views.get((tenant, name), view)
        record = current.partitions.get(partition_id, partition)
        if result.sealed and record.active:
            # Sealed by another process: its news may be on the way; read the catalog.
            with contextlib.suppress(TopicNotFoundError):
                await self.refresh_topic(tenant, name)
            current = self._views.get((tenant, name), current)
            record = current.partitions.get(partition_id, record)
        return ReadAnswer(record, offset, result)

    async def _long_poll(self, key: PartitionKey, offset: int, timeout_s: float) -> None:
        """Wait for data at ``offset``, for shutdown, or for the timeout, whichever is first."""
        self.long_polls_waiting += 1
        data = asyncio.ensure_future(self.worker.wait_for_data(key, offset, timeout_s))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            async with waiting():
                await asyncio.wait({data, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.long_polls_waiting -= 1
            for task in (data, stop):
                task.cancel()
            await asyncio.gather(data, stop, return_exceptions=True)

    # --- retention -----------------------------------------------------------------------

    async def apply_retention(self) -> int:
        """Apply every live topic's ``retention_ms`` and ``retention_bytes``; answers how
        many segments went. With tiered storage, these bound remote and local data
        together, and ``local_retention_*`` bound what stays on disk (tiered_storage's
        retention module); without it, they bound the local log.

        A topic that fails (a partition recovering, say) is logged and skipped; the others
        go on. Logs the catalog sealed but that are not sealed yet are sealed here too, and
        deleted topics whose cleanup was interrupted are finished.
        """
        try:
            if self.leader:
                await self.finish_deletions()
        except EventBusError as exc:
            log.warning("finishing topic deletions failed: %s", exc)
        removed = 0
        for (tenant, name), view in list(self._views.items()):
            try:
                removed += await self._retain_topic(tenant, name, view)
            except EventBusError as exc:
                log.warning("retention of topic %s/%s failed: %s", tenant, name, exc)
        return removed

    async def _retain_topic(self, tenant: str, name: str, view: TopicView) -> int:
        config = view.record.config
        retention_ms = config.get("retention_ms")
        retention_bytes = config.get("retention_bytes")
        removed = 0
        for pid, partition in view.partitions.items():
            if not partition.active and not (await self.worker.stats(view.key(pid))).sealed:
                await self._seal_log(view.key(pid))
        if self.tiered is not None:
            return await self.tiered.retain_topic(
                tenant, name, view.record.incarnation, config, list(view.partitions)
            )
        if retention_ms is not None:
            for pid in view.partitions:
                gone = await self.worker.enforce_retention(
                    view.key(pid), retention_ms=int(retention_ms)
                )
                removed += len(gone)
        if retention_bytes is not None:
            removed += await self._retain_topic_bytes(view, int(retention_bytes))
        if removed:
            for pid in view.partitions:
                stats = await self.worker.stats(view.key(pid))
                await self.catalog.advance_start_offset(
                    tenant, name, pid, stats.start_offset, incarnation=view.record.incarnation
                )
        return removed

    async def _retain_topic_bytes(self, view: TopicView, bound: int) -> int:
        """Drop the oldest segments across the topic's partitions until it fits ``bound``."""
        removed = 0
        while True:
            sizes = {}
            for pid in view.partitions:
                sizes[pid] = (await self.worker.stats(view.key(pid))).size_bytes
            total = sum(sizes.values())
            if total <= bound:
                return removed
            # The partition whose first segment is oldest gives one up; try each in turn
            # until one can (active segments never go).
            progressed = False
            for pid in sorted(view.partitions, key=lambda p: -sizes[p]):
                gone = await self.worker.enforce_retention(
                    view.key(pid), retention_bytes=sizes[pid] - (total - bound)
                )
                if gone:
                    removed += len(gone)
                    progressed = True
                    break
            if not progressed:
                return removed
