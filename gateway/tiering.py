"""Wiring tiered storage into the app: the object store and the tiering service as
``cleanup_ctx`` entries, the cold-read path into the partition worker, and their numbers in
``/metrics``.

The object store opens before the broker (topic deletions finished at start delete their
objects) and closes after it. The tiering service is made with the broker, so that rolls
wake the uploader and retention, backpressure and topic deletion reach it from the first
request; its loops start in :func:`tiering_ctx`, after the partitions are open, so the first
upload pass re-uploads whatever a crash left unfinished.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.broker.service import Broker
from gateway.config import ServerConfig
from gateway.keys import BROKER, CONFIG, METRICS
from partitions.catalog import Catalog
from partitions.worker import LocalPartitionWorker
from tiered_storage.objects import ObjectStore
from tiered_storage.read_counters import LatencyHistogram
from tiered_storage.read_settings import ColdReadSettings
from tiered_storage.reader import RemoteSegmentReader
from tiered_storage.service import TieredStorage
from tiered_storage.state import TieringCounters, TieringSettings
from tiered_storage.store_url import open_object_store

log = logging.getLogger(__name__)

OBJECTS_DIR = "objects"

OBJECT_STORE = web.AppKey("object_store", ObjectStore)
TIERING = web.AppKey("tiering", TieredStorage)


def object_store_url(config: ServerConfig) -> str:
    """``--object-store``, else ``file://`` under the data directory."""
    if config.object_store:
        return config.object_store
    return f"file://{config.data_dir / OBJECTS_DIR}"


def tiering_settings(config: ServerConfig) -> TieringSettings:
    return TieringSettings(
        upload_concurrency=config.upload_concurrency,
        max_upload_backlog_bytes=config.max_upload_backlog_bytes,
        upload_retry_ms=(min(200, config.upload_retry_max_ms), config.upload_retry_max_ms),
        orphan_grace_ms=config.orphan_grace_ms,
        orphan_check_ms=config.orphan_check_ms,
    )


async def object_store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_object_store(
        object_store_url(config),
        s3_endpoint=config.s3_endpoint,
        timeout_s=config.object_store_timeout_ms / 1000,
    )
    log.info("object store: %s", store.url)
    app[OBJECT_STORE] = store
    try:
        yield
    finally:
        await store.close()


def cold_read_settings(config: ServerConfig) -> ColdReadSettings:
    return ColdReadSettings(
        cache_bytes=config.read_cache_bytes,
        chunk_bytes=config.read_chunk_bytes,
        read_ahead_chunks=config.read_ahead_chunks,
    )


def attach_tiering(
    app: web.Application, catalog: Catalog, broker: Broker, worker: LocalPartitionWorker
) -> TieredStorage:
    """Make the tiering service for ``broker`` and ``worker`` (its loops start later), and
    let the worker read tiered offsets through it."""
    config = app[CONFIG]
    tiering = TieredStorage(
        catalog,
        worker,
        app[OBJECT_STORE],
        tiering_settings(config),
        read_settings=cold_read_settings(config),
    )
    worker.on_roll = tiering.notify_roll
    worker.remote = tiering.reader
    broker.tiered = tiering
    app[TIERING] = tiering
    app[METRICS].registry.register(
        TieringCollector(lambda: tiering.counters, tiering.index.remote_bytes)
    )
    app[METRICS].registry.register(ColdReadCollector(tiering.reader))
    return tiering


async def tiering_ctx(app: web.Application) -> AsyncIterator[None]:
    tiering = app[TIERING]
    # Cleanup assumes one writer per store prefix: one worker process (the leader) runs it.
    tiering.start(cleanup=app[BROKER].leader)
    try:
        yield
    finally:
        await tiering.close()


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
