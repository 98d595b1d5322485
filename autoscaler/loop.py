"""The loop that applies the policy: measure, decide, split and merge, remember why.

Every ``interval`` the :class:`Autoscaler` takes each live topic from its
:class:`ScalingTarget` (the broker, seen through a Protocol so that this package never
imports the gateway), builds the topic's :class:`~autoscaler.policy.TopicLoad` from the
meters, asks :func:`~autoscaler.policy.decide`, and applies the splits and merges one at a
time through the target, which does them exactly as a split or merge by hand. What it
decided, what it could not do and why, and the recent changes are kept in
:class:`ScalingStatus` for topic describe and ``/metrics``, and logged.

A tenant's partition quota comes in through ``tenant_limit``: a coroutine answering the number
of active partitions the tenant may have over all its topics, or None for no limit. The loop
turns it into the most this topic may have, given the tenant's other topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autoscaler.config import autoscale_config
from autoscaler.measure import Clock, LoadMeters
from autoscaler.policy import Blocked, Decision, HotKey, Merge, Split, decide
from partitions.backoff import Backoff
from partitions.catalog import LineageChange, PartitionRecord
from partitions.errors import EventBusError, TenantNotFoundError

log = logging.getLogger(__name__)

RECENT_CHANGES = 20
SPLIT = "split"
MERGE = "merge"


@dataclass(frozen=True, slots=True)
class TopicSnapshot:
    """A live topic as the autoscaler sees it: its config and its active partitions."""

    tenant: str
    name: str
    incarnation: str
    config: Mapping[str, Any]
    active: tuple[PartitionRecord, ...]


class ScalingTarget(Protocol):
    """What the autoscaler needs of the broker."""

    def scaling_topics(self) -> Sequence[TopicSnapshot]: ...

    async def split(
        self, tenant: str, name: str, partition_id: int, at: int | None
    ) -> LineageChange: ...

    async def merge(
        self, tenant: str, name: str, partition_ids: Sequence[int]
    ) -> LineageChange: ...


TenantLimit = Callable[[str], Awaitable[int | None]]


async def no_tenant_limit(tenant: str) -> int | None:
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """A split or merge the autoscaler applied, or tried to."""

    at_ms: int
    action: str
    parents: tuple[int, ...]
    children: tuple[int, ...]
    point: int | None
    reason: str
    message: str
    # The error code when it failed (the topic changed under it, say).
    error: str | None = None


@dataclass(slots=True)
class TopicStatus:
    evaluated_ms: int | None = None
    decision: Decision = field(default_factory=Decision)
    changes: deque[Change] = field(default_factory=lambda: deque(maxlen=RECENT_CHANGES))


class ScalingStatus:
    """What the autoscaler last decided per topic, and counters over all topics."""

    def __init__(self) -> None:
        self._topics: dict[tuple[str, str], TopicStatus] = {}
        self.evaluations = 0
        self.changes: Counter[tuple[str, str]] = Counter()  # (action, reason)
        self.failures: Counter[str] = Counter()  # action

    def topic(self, tenant: str, incarnation: str) -> TopicStatus | None:
        return self._topics.get((tenant, incarnation))

    def entry(self, tenant: str, incarnation: str) -> TopicStatus:
        return self._topics.setdefault((tenant, incarnation), TopicStatus())

    def drop_topic(self, tenant: str, incarnation: str) -> None:
        self._topics.pop((tenant, incarnation), None)

    def keep_topics(self, live: set[tuple[str, str]]) -> None:
        for topic in [t for t in self._topics if t not in live]:
            del self._topics[topic]

    def hot_keys(self) -> list[HotKey]:
        return [k for s in self._topics.values() for k in s.decision.hot_keys]

    def blocked(self) -> list[Blocked]:
        return [b for s in self._topics.values() for b in s.decision.blocked]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Autoscaler:
    def __init__(
        self,
        target: ScalingTarget,
        meters: LoadMeters,
        status: ScalingStatus,
        *,
        tenant_limit: TenantLimit = no_tenant_limit,
        wall_clock_ms: Clock = wall_ms,
    ) -> None:
        self.target = target
        self.meters = meters
        self.status = status
        self.tenant_limit = tenant_limit
        self._wall_ms = wall_clock_ms

    async def run_forever(self, interval_s: float) -> None:
        """A pass every ``interval_s``, whatever the last one met: a pass that fails (the
        catalog cannot be reached) is logged once per run of failures, not at each."""
        failures = Backoff("an autoscale pass", log, first_s=interval_s, max_s=interval_s)
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                failures.failed(exc)
            else:
                failures.succeeded()

    async def tick(self) -> None:
        """Evaluate every live topic once and apply what the policy decides."""
        topics = list(self.target.scaling_topics())
        live = {(t.tenant, t.incarnation) for t in topics}
        self.meters.keep_topics(live)
        self.status.keep_topics(live)
        tenant_active: Counter[str] = Counter()
        for topic in topics:
            tenant_active[topic.tenant] += len(topic.active)
        limits: dict[str, int | None] = {}
        gone: set[str] = set()
        for topic in topics:
            if topic.tenant in gone:
                continue
            if topic.tenant not in limits:
                try:
                    limits[topic.tenant] = await self.tenant_limit(topic.tenant)
                except TenantNotFoundError:
                    # Deleted since its topics were listed: they go with it, nothing to do.
                    gone.add(topic.tenant)
                    continue
            limit = limits[topic.tenant]
            ceiling = (
                None if limit is None else limit - (tenant_active[topic.tenant] - len(topic.active))
            )
            decision = self.evaluate(topic, tenant_max_partitions=ceiling)
            done = await self.apply(topic, decision)
            tenant_active[topic.tenant] += done

    def evaluate(self, topic: TopicSnapshot, *, tenant_max_partitions: int | None) -> Decision:
        config = autoscale_config(topic.config)
        if config.enabled:
            load = self.meters.topic_load(topic.tenant, topic.incarnation, topic.active, config)
            decision = decide(load, config, tenant_max_partitions=tenant_max_partitions)
        else:
            # Nothing to decide: only keep the meters to the active partitions (reading
            # every partition's sample would cost each second for nothing).
            ids = [p.partition_id for p in topic.active]
            self.meters.sync_topic(topic.tenant, topic.incarnation, ids, config)
            decision = Decision()
        status = self.status.entry(topic.tenant, topic.incarnation)
        _log_news(topic, status.decision, decision)
        status.evaluated_ms = self._wall_ms()
        status.decision = decision
        self.status.evaluations += 1
        return decision

    async def apply(self, topic: TopicSnapshot, decision: Decision) -> int:
        """Apply the splits, then the merges; answers the change in active partitions."""
        delta = 0
        for split in decision.splits:
            if await self._apply(topic, split):
                delta += 1
        for merge in decision.merges:
            if await self._apply(topic, merge):
                delta -= 1
        return delta

    async def _apply(self, topic: TopicSnapshot, item: Split | Merge) -> bool:
        status = self.status.entry(topic.tenant, topic.incarnation)
        parents: tuple[int, ...]
        if isinstance(item, Split):
            action, parents, point = SPLIT, (item.partition_id,), item.at
        else:
            action, parents, point = MERGE, item.partition_ids, None
        try:
            if isinstance(item, Split):
                change = await self.target.split(topic.tenant, topic.name, item.partition_id, point)
            else:
                change = await self.target.merge(topic.tenant, topic.name, list(parents))
        except EventBusError as exc:
            # The topic changed since it was measured (deleted, or reshaped by hand).
            log.warning(
                "autoscale: %s of topic %s/%s partitions %s failed: %s",
                action,
                topic.tenant,
                topic.name,
                list(parents),
                exc,
            )
            self.status.failures[action] += 1
            status.changes.append(
                Change(
                    self._wall_ms(), action, parents, (), point, item.reason, exc.message, exc.code
                )
            )
            return False
        children = tuple(p.partition_id for p in change.created)
        log.info(
            "autoscale: %s of topic %s/%s partitions %s into %s (%s): %s",
            action,
            topic.tenant,
            topic.name,
            list(parents),
            list(children),
            item.reason,
            item.message,
        )
        self.status.changes[(action, item.reason)] += 1
        status.changes.append(
            Change(self._wall_ms(), action, parents, children, point, item.reason, item.message)
        )
        return True


def _log_news(topic: TopicSnapshot, before: Decision, now: Decision) -> None:
    """Log hot keys and held-back changes when they appear, not at every evaluation."""
    seen_blocked = {(b.partition_ids, b.reason) for b in before.blocked}
    for blocked in now.blocked:
        if (blocked.partition_ids, blocked.reason) not in seen_blocked:
            log.info(
                "autoscale: topic %s/%s: %s (%s)",
                topic.tenant,
                topic.name,
                blocked.message,
                blocked.reason,
            )
    seen_keys = {(k.partition_id, k.hash) for k in before.hot_keys}
    for key in now.hot_keys:
        if (key.partition_id, key.hash) not in seen_keys:
            log.warning(
                "autoscale: topic %s/%s partition %d has a hot key (hash %d): %.0f bytes/s, "
                "%.0f records/s",
                topic.tenant,
                topic.name,
                key.partition_id,
                key.hash,
                key.bytes_per_s,
                key.records_per_s,
            )
