"""Metering in the app: the meter (made after the broker, whose footprint it samples), and
its loop, which flushes, samples and exports; with worker processes the loop starts once
this worker serves the others and stops before it does, with a last sample and flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.broker.service import Broker
from gateway.http.collectors import UsageCollector
from gateway.http.keys import BROKER, CONFIG, HEALTH, METER, METERING, METRICS
from gateway.tenancy.billing import PricePlan
from gateway.tenancy.metering import Footprint, Meter, NothingHeld
from gateway.tenancy.usage_export import Metering, UsageExporter, run_metering
from gateway.wiring.state import CATALOG, CLOCKS, OBJECT_STORE, TOPOLOGY
from partitions.catalog import Catalog
from partitions.errors import EventBusError, TenantNotFoundError

log = logging.getLogger(__name__)


class BrokerFootprint:
    """Stored bytes as the broker counts them (every partition's local log, plus the bytes
    of segments that are only in the object store: each byte once), and active partitions
    from the catalog."""

    def __init__(self, broker: Broker, catalog: Catalog) -> None:
        self._broker = broker
        self._catalog = catalog

    async def stored_bytes(self, tenant: str) -> int:
        return await self._broker.stored_bytes(tenant)

    async def active_partitions(self, tenant: str) -> int:
        return (await self._catalog.tenant_counts(tenant)).active_partitions


async def meter_ctx(app: web.Application) -> AsyncIterator[None]:
    """The meter and the hourly exporter (the loop starts in :func:`metering_loop_ctx`)."""
    config, catalog, topology = app[CONFIG], app[CATALOG], app[TOPOLOGY]
    # With several worker processes, one (the leader) samples what tenants hold.
    footprint: Footprint = (
        BrokerFootprint(app[BROKER], catalog) if topology.leader else NothingHeld()
    )
    others = topology.other_meters
    meter = Meter(catalog, footprint, clock_ms=app[CLOCKS].usage_ms, others=others)

    async def plan_of(tenant: str) -> PricePlan | None:
        try:
            record = await catalog.get_tenant(tenant)
        except TenantNotFoundError:
            return None
        return config.default_plan.overlay(record.plan)

    exporter = UsageExporter(
        catalog,
        meter,
        app[OBJECT_STORE],
        plan_of,
        delay_ms=config.usage_export_delay_ms,
        others=others,
    )
    app[METER] = meter
    app[METERING] = metering = Metering(meter, exporter, config.default_plan, catalog)
    app[METRICS].watch(UsageCollector(metering))
    yield


async def metering_loop_ctx(app: web.Application) -> AsyncIterator[None]:
    """Flush, sample and export until the app stops; then, every request having finished,
    count storage up to now and flush it all."""
    config, metering = app[CONFIG], app[METERING]
    meter = metering.meter
    await meter.sample()  # the start of every tenant's storage interval
    flush_s, sample_s = config.usage_flush_ms / 1000, config.usage_sample_ms / 1000
    task = app[HEALTH].start(run_metering(metering, flush_s, sample_s), "metering")
    try:
        yield
    finally:
        metering.stop.set()
        # Its last pass finishes (a loop that died is reported by the health already).
        await asyncio.wait([task])
        try:
            await meter.sample()
        finally:
            await _last_flush(meter)


async def _last_flush(meter: Meter) -> None:
    """The shutdown's flush: if the catalog cannot take it (a full disk), the counts since
    the last flush are lost, as in a crash, and the log says so; the server still stops
    cleanly."""
    try:
        await meter.flush()
    except EventBusError as exc:
        log.warning(
            "metering: the counts of %d tenant-hours since the last flush could not be "
            "stored at shutdown and are lost: %s",
            meter.unflushed,
            exc,
        )
