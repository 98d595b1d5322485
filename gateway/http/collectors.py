"""The collectors of ``/metrics``: what each part of the server counts, read at scrape time.

Label sets stay bounded: nothing is labelled by topic or partition, which come and go,
except the ten busiest partitions' write rates (left out when metrics are public, since
they name tenants and topics). Per-partition numbers are summed at scrape time.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from autoscaler.config import autoscale_config
from autoscaler.loop import MERGE, SPLIT
from autoscaler.policy import BLOCKED_REASONS, MERGE_REASONS, SPLIT_REASONS
from gateway.broker.answers import IdempotentProducer
from gateway.broker.service import Broker
from gateway.tenancy.usage_export import Metering
from partitions.worker import WorkerTotals
from tiered_storage.read_counters import LatencyHistogram
from tiered_storage.reader import RemoteSegmentReader
from tiered_storage.state import TieringCounters

# Partitions named in /metrics: the hottest few, so that labels stay bounded.
TOP_PARTITIONS = 10


class WorkerCollector(Collector):
    def __init__(self, totals: Callable[[], WorkerTotals], waiting: Callable[[], int]) -> None:
        self._totals = totals
        self._waiting = waiting

    def collect(self) -> Iterator[Metric]:
        totals = self._totals()
        yield GaugeMetricFamily(
            "eventbus_partitions_open", "Partition logs open here", totals.partitions_open
        )
        yield CounterMetricFamily(
            "eventbus_log_appends", "Batches appended durably", totals.appends
        )
        yield CounterMetricFamily(
            "eventbus_log_group_commits", "fsyncs that made appends durable", totals.group_commits
        )
        yield CounterMetricFamily(
            "eventbus_long_poll_wakeups",
            "Times a waiting reader was woken by new data (one per publish it saw)",
            totals.wait_wakeups,
        )
        yield GaugeMetricFamily(
            "eventbus_long_polls_waiting", "Reads waiting for data now", self._waiting()
        )


class IdempotencyCollector(Collector):
    def __init__(self, answers: IdempotentProducer) -> None:
        self._answers = answers

    def collect(self) -> Iterator[Metric]:
        table = self._answers.table
        yield GaugeMetricFamily(
            "eventbus_idempotency_entries",
            "Idempotent produce requests remembered (for ten minutes each)",
            len(table),
        )
        yield CounterMetricFamily(
            "eventbus_idempotency_replays",
            "Produce retries answered from memory without appending",
            self._answers.replays,
        )
        yield CounterMetricFamily(
            "eventbus_idempotency_forgotten_early",
            "Answers dropped before ten minutes because the table was full",
            table.forgotten_early,
        )


class SchedulerLike(Protocol):
    @property
    def in_service(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def admitted(self) -> int: ...


class SchedulerCollector(Collector):
    def __init__(self, scheduler: SchedulerLike) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "eventbus_requests_in_service",
            "Tenant requests being served now (at most --max-concurrent-requests)",
            self._scheduler.in_service,
        )
        yield GaugeMetricFamily(
            "eventbus_requests_queued",
            "Tenant requests waiting for their turn",
            self._scheduler.queued,
        )
        yield CounterMetricFamily(
            "eventbus_requests_admitted",
            "Tenant requests admitted to service (long-polls again after their wait)",
            self._scheduler.admitted,
        )


class TieringCollector(Collector):
    def __init__(
        self, counters: Callable[[], TieringCounters], remote_bytes: Callable[[], int]
    ) -> None:
        self._counters = counters
        self._remote_bytes = remote_bytes

    def collect(self) -> Iterator[Metric]:
        c = self._counters()
        yield GaugeMetricFamily(
            "eventbus_tiering_upload_backlog_bytes",
            "Bytes of rolled segments waiting for upload to object storage",
            c.backlog_bytes,
        )
        yield GaugeMetricFamily(
            "eventbus_tiering_upload_backlog_segments",
            "Rolled segments waiting for upload to object storage",
            c.backlog_segments,
        )
        yield GaugeMetricFamily(
            "eventbus_tiering_upload_lag_seconds",
            "How long the oldest segment waiting for upload has waited",
            c.upload_lag_s,
        )
        yield GaugeMetricFamily(
            "eventbus_tiering_uploads_in_flight", "Segment uploads running now", c.uploads_in_flight
        )
        yield CounterMetricFamily(
            "eventbus_tiering_uploaded_segments",
            "Segments copied to object storage",
            c.uploaded_segments,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_uploaded_bytes",
            "Bytes sent to object storage (logs and indexes)",
            c.uploaded_bytes,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_upload_failures",
            "Segment upload attempts that failed (each is retried with backoff)",
            c.upload_failures,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_remote_segments_deleted",
            "Remote segments deleted by retention or cleanup",
            c.remote_segments_deleted,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_local_segments_deleted",
            "Local segments deleted by retention (total or local)",
            c.local_segments_deleted,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_orphans_deleted",
            "Objects and abandoned copies removed by cleanup after the grace period",
            c.orphans_deleted,
        )
        yield CounterMetricFamily(
            "eventbus_tiering_backpressure_rejections",
            "Produce requests refused with storage_backpressure",
            c.backpressure_rejections,
        )
        yield GaugeMetricFamily(
            "eventbus_tiering_remote_bytes",
            "Bytes of copy-finished segments in object storage (partitions open here)",
            self._remote_bytes(),
        )


def _histogram(name: str, documentation: str, histogram: LatencyHistogram) -> Metric:
    return HistogramMetricFamily(
        name, documentation, buckets=histogram.cumulative(), sum_value=histogram.total
    )


class ColdReadCollector(Collector):
    """The cold-read path and its cache (no labels: a fixed set of series)."""

    def __init__(self, reader: RemoteSegmentReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        c, cache = self._reader.counters, self._reader.cache
        yield CounterMetricFamily(
            "eventbus_cold_reads",
            "Reads (and timestamp lookups) of offsets only the object store holds",
            c.reads,
        )
        yield _histogram(
            "eventbus_cold_read_seconds",
            "Time to answer the object-store part of a read, fetches included",
            c.read_seconds,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_hits",
            "Chunks and indexes cold reads found cached or already being fetched",
            c.hits,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_misses",
            "Chunks and indexes cold reads had to fetch from the object store themselves",
            c.misses,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_fetches",
            "GET requests made for cold reads (read-ahead included)",
            c.fetches,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_fetched_bytes",
            "Bytes fetched from the object store for cold reads (read-ahead included)",
            c.fetched_bytes,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_fetch_failures",
            "Fetches for cold reads that failed (the reads waiting on them failed too)",
            c.fetch_failures,
        )
        yield CounterMetricFamily(
            "eventbus_read_ahead_chunks",
            "Chunks fetched ahead of sequential cold readers",
            c.read_ahead_chunks,
        )
        yield _histogram(
            "eventbus_read_cache_fetch_seconds",
            "Time of one GET from the object store for a cold read",
            c.fetch_seconds,
        )
        yield CounterMetricFamily(
            "eventbus_read_cache_evictions",
            "Entries the read cache dropped to stay within its bound",
            cache.evictions,
        )
        yield GaugeMetricFamily(
            "eventbus_read_cache_bytes", "Bytes the read cache holds now", cache.size_bytes
        )
        yield GaugeMetricFamily(
            "eventbus_read_cache_peak_bytes",
            "The most bytes the read cache ever held (never above its bound)",
            cache.peak_bytes,
        )
        yield GaugeMetricFamily(
            "eventbus_read_cache_capacity_bytes",
            "The read cache's bound (--read-cache-bytes)",
            cache.capacity_bytes,
        )
        yield GaugeMetricFamily(
            "eventbus_read_cache_entries", "Chunks and indexes the read cache holds", len(cache)
        )


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
            broker.reshaper.reshapes,
        )
        yield CounterMetricFamily(
            "eventbus_partition_reshape_pause_seconds",
            "Time produce to a topic was held for its splits and merges",
            broker.reshaper.pause_s,
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


class UsageCollector(Collector):
    def __init__(self, metering: Metering) -> None:
        self._metering = metering

    def collect(self) -> Iterator[Metric]:
        meter = self._metering.meter
        yield CounterMetricFamily(
            "eventbus_usage_flushes", "Flushes of metered usage to the catalog", meter.flushes
        )
        yield CounterMetricFamily(
            "eventbus_usage_flush_failures",
            "Flushes that failed (their counts wait for the next one)",
            meter.flush_failures,
        )
        yield GaugeMetricFamily(
            "eventbus_usage_unflushed_rows",
            "Tenant-hours counted here and not in the catalog yet",
            meter.unflushed,
        )
        yield CounterMetricFamily(
            "eventbus_usage_exported_objects",
            "Hourly usage objects written to the object store",
            self._metering.exporter.created,
        )
