"""The broker: made with the catalog, the partition worker, tiered storage, the tenants'
limits, the autoscaler's meters and the topology; started (every live partition opened,
interrupted deletions finished); and at the end, every log closed durably."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from autoscaler.measure import LoadMeters, MeterOutbox
from gateway.broker.names import key_hash
from gateway.broker.service import Broker
from gateway.http.collectors import IdempotencyCollector, WorkerCollector
from gateway.http.keys import BROKER, METRICS
from gateway.wiring.state import CATALOG, CLOCKS, TENANT_QUOTAS, TIERED, TOPOLOGY, WORKER


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    topology, worker = app[TOPOLOGY], app[WORKER]
    clock_ms = app[CLOCKS].autoscale_ms
    # The leader decides for the whole server; the others send it what they measure.
    meters = (
        LoadMeters(key_hash, clock_ms=clock_ms)
        if topology.leader
        else MeterOutbox(key_hash, clock_ms=clock_ms)
    )
    broker = Broker(
        app[CATALOG],
        worker,
        app[TIERED],
        topology=topology,
        limits=app[TENANT_QUOTAS].limits,
        meters=meters,
    )
    try:
        await broker.start()
        app[BROKER] = broker
        app[METRICS].watch(WorkerCollector(worker.totals, lambda: broker.reader.waiting))
        app[METRICS].watch(IdempotencyCollector(broker.idempotent))
        yield
    finally:
        # Everything appended is durable before the logs close.
        await worker.close()
