"""The autoscaler in the server: its cleanup_ctx entry, topic describe, and /metrics.

The measuring, the policy and the loop live in the ``autoscaler`` package; this module
wires them to the broker and renders what they know for HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler.config import autoscale_config
from autoscaler.loop import MERGE, SPLIT, Autoscaler, Change
from autoscaler.measure import LoadMeters
from autoscaler.policy import BLOCKED_REASONS, MERGE_REASONS, SPLIT_REASONS, Decision, HotKey
from gateway.broker.service import Broker, TopicView, key_hash
from gateway.keys import BROKER, CLOCKS, CONFIG, METRICS
from gateway.logs import log_if_died

log = logging.getLogger(__name__)


AUTOSCALER = web.AppKey("autoscaler", Autoscaler)
AUTOSCALER_TASK = web.AppKey("autoscaler_task", asyncio.Task[None])
# Partitions named in /metrics: the hottest few, so that labels stay bounded.
TOP_PARTITIONS = 10


def new_meters(app: web.Application) -> LoadMeters:
    return LoadMeters(key_hash, clock_ms=app[CLOCKS].autoscale_ms)


async def autoscaler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the autoscaler loop for as long as the app runs."""
    broker = app[BROKER]
    if not broker.leader:
        # One of several worker processes, not the one that decides: its meters go to the
        # leader (gateway/cluster.py), which runs the loop for the whole server.
        yield
        return
    # The tenant's max_partitions quota (tenancy) is the limit.
    autoscaler = Autoscaler(
        broker, broker.meters, broker.scaling, tenant_limit=broker.partition_limit
    )
    app[AUTOSCALER] = autoscaler
    # Public metrics are served to anyone: they must not name tenants or topics.
    public = app[CONFIG].metrics_public
    app[METRICS].registry.register(AutoscaleCollector(broker, name_partitions=not public))
    interval = app[CONFIG].autoscale_interval_ms / 1000
    task = asyncio.get_running_loop().create_task(
        autoscaler.run_forever(interval), name="autoscaler"
    )
    task.add_done_callback(partial(log_if_died, log))
    app[AUTOSCALER_TASK] = task
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- topic describe --------------------------------------------------------------------------


def autoscale_json(broker: Broker, view: TopicView) -> dict[str, Any]:
    """The ``autoscale`` part of topic describe: measurements, hot keys, what is held back
    and why, and the recent automatic changes."""
    config = autoscale_config(view.record.config)
    tenant, incarnation = view.record.tenant, view.record.incarnation
    status = broker.scaling.topic(tenant, incarnation)
    throughput = []
    for pid in sorted(view.active_ids):
        measured = broker.meters.rate(view.key(pid), config)
        rate, age_ms = measured if measured is not None else (None, 0)
        throughput.append(
            {
                "partition": pid,
                "bytes_per_s": None if rate is None else round(rate.bytes_per_s, 1),
                "records_per_s": None if rate is None else round(rate.records_per_s, 1),
                "measured_ms": age_ms,
            }
        )
    decision = status.decision if status is not None else Decision()
    return {
        "enabled": config.enabled,
        "evaluated_ms": None if status is None else status.evaluated_ms,
        "throughput": throughput,
        "hot_keys": [hot_key_json(key) for key in decision.hot_keys],
        "blocked": [
            {"partitions": list(b.partition_ids), "reason": b.reason, "message": b.message}
            for b in decision.blocked
        ],
        "recent_changes": [] if status is None else [change_json(c) for c in status.changes],
    }


def hot_key_json(key: HotKey) -> dict[str, Any]:
    out: dict[str, Any] = {"partition": key.partition_id, "hash": str(key.hash)}
    if key.key is not None:
        try:
            out["key"] = key.key.decode()
        except UnicodeDecodeError:
            out["key_b64"] = base64.b64encode(key.key).decode()
    out["bytes_per_s"] = round(key.bytes_per_s, 1)
    out["records_per_s"] = round(key.records_per_s, 1)
    out["share"] = round(key.share, 3)
    return out


def change_json(change: Change) -> dict[str, Any]:
    return {
        "at_ms": change.at_ms,
        "action": change.action,
        "parents": list(change.parents),
        "children": list(change.children),
        "at": None if change.point is None else str(change.point),
        "reason": change.reason,
        "message": change.message,
        "error": change.error,
    }


# --- /metrics --------------------------------------------------------------------------------


class AutoscaleCollector(Collector):
    """Measurements and decisions, labelled only by small fixed sets (action, reason), and
    by partition for the :data:`TOP_PARTITIONS` hottest partitions only.

    The hottest partitions are labelled by tenant and topic, which one tenant must not
    learn of another: with ``name_partitions`` false (metrics served without a key) those
    two families are left out."""

    def __init__(self, broker: Broker, *, name_partitions: bool = True) -> None:
        self._broker = broker
        self._name_partitions = name_partitions

    def collect(self) -> Iterator[Metric]:
        broker = self._broker
        status = broker.scaling
        yield CounterMetricFamily(
            "eventbus_autoscale_evaluations",
            "Topic evaluations by the autoscaler",
            status.evaluations,
        )
        changes = CounterMetricFamily(
            "eventbus_autoscale_changes",
            "Splits and merges the autoscaler applied, by action and reason",
            labels=["action", "reason"],
        )
        for action, reasons in ((SPLIT, SPLIT_REASONS), (MERGE, MERGE_REASONS)):
            for reason in reasons:
                changes.add_metric([action, reason], status.changes[(action, reason)])
        yield changes
        failures = CounterMetricFamily(
            "eventbus_autoscale_change_failures",
            "Splits and merges the autoscaler decided that failed (the topic changed first)",
            labels=["action"],
        )
        for action in (SPLIT, MERGE):
            failures.add_metric([action], status.failures[action])
        yield failures
        blocked_now = Counter(b.reason for b in status.blocked())
        blocked = GaugeMetricFamily(
            "eventbus_autoscale_blocked",
            "Changes the measurements call for that a rule or limit holds back now, by reason",
            labels=["reason"],
        )
        for reason in BLOCKED_REASONS:
            blocked.add_metric([reason], blocked_now[reason])
        yield blocked
        yield GaugeMetricFamily(
            "eventbus_autoscale_hot_keys",
            "Keys hotter than a split threshold on their own, now",
            len(status.hot_keys()),
        )
        yield CounterMetricFamily(
            "eventbus_partition_reshapes",
            "Splits and merges done, by hand or automatically",
            broker.reshapes,
        )
        yield CounterMetricFamily(
            "eventbus_partition_reshape_pause_seconds",
            "Time produce to a topic was held for its splits and merges",
            broker.reshape_pause_s,
        )
        yield from self._throughput()

    def _throughput(self) -> Iterator[Metric]:
        broker = self._broker
        active = 0
        total_bytes = total_records = 0.0
        rates: list[tuple[float, float, str, str, int]] = []
        for view in broker.live_views():
            config = autoscale_config(view.record.config)
            active += len(view.active_ids)
            for pid in view.active_ids:
                measured = broker.meters.rate(view.key(pid), config)
                if measured is None:
                    continue
                rate = measured[0]
                total_bytes += rate.bytes_per_s
                total_records += rate.records_per_s
                name = (view.record.tenant, view.record.name)
                rates.append((rate.bytes_per_s, rate.records_per_s, *name, pid))
        yield GaugeMetricFamily(
            "eventbus_active_partitions", "Active partitions over all topics", active
        )
        yield GaugeMetricFamily(
            "eventbus_write_bytes_per_s",
            "Bytes appended per second over all partitions (each over its topic's window_s)",
            total_bytes,
        )
        yield GaugeMetricFamily(
            "eventbus_write_records_per_s",
            "Records appended per second over all partitions (each over its topic's window_s)",
            total_records,
        )
        if not self._name_partitions:
            return
        top_bytes = GaugeMetricFamily(
            "eventbus_top_partition_write_bytes_per_s",
            f"Bytes appended per second to the {TOP_PARTITIONS} busiest partitions",
            labels=["tenant", "topic", "partition"],
        )
        top_records = GaugeMetricFamily(
            "eventbus_top_partition_write_records_per_s",
            f"Records appended per second to the {TOP_PARTITIONS} busiest partitions",
            labels=["tenant", "topic", "partition"],
        )
        for nbytes, nrecords, tenant, topic, pid in heapq.nlargest(TOP_PARTITIONS, rates):
            if nbytes <= 0 and nrecords <= 0:
                continue
            top_bytes.add_metric([tenant, topic, str(pid)], nbytes)
            top_records.add_metric([tenant, topic, str(pid)], nrecords)
        yield top_bytes
        yield top_records
