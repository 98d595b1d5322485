"""Usage metering: per-tenant, per-UTC-hour counters, flushed to the catalog, exported hourly.

On the request path nothing waits: a request adds to in-memory counters of its tenant and
hour (:class:`Meter`), and one background task (:func:`metering_ctx`) does the rest:

- every ``usage_flush_ms`` (at most 5 s) it adds the counts gathered since the last flush
  to the catalog, as deltas in one transaction (:meth:`Catalog.add_usage`), so a SIGKILL
  loses at most that interval's counts; a failed flush keeps them for the next one; at
  shutdown a last sample and flush lose nothing;
- every ``usage_sample_ms`` it samples what each tenant holds (:class:`Footprint`: stored
  bytes and active partitions) and integrates it over time, each interval at the value
  sampled at its start, split at hour boundaries, in whole seconds of the clock (so the
  seconds of consecutive intervals add up exactly);
- once an hour is complete (``usage_export_delay_ms`` after its end) it writes one JSON
  line per tenant that used anything in it to the object store (:class:`UsageExporter`).

Readings (:meth:`Meter.usage`) add the catalog's rows, the counts not flushed yet and the
storage held since the last sample, so they are exact at any moment and never go back. With
several worker processes a reading first has every worker flush and the one that samples
storage sample it, whichever worker serves the reading.

What is counted, per tenant request (requests made with a tenant's key; admin requests and
public routes are not metered):

- ``requests``: every request answered with a status below 500, except an *empty poll*: a
  read or group fetch that delivered no records (a 200 with none, or a long-poll the client
  gave up on). A refused request (400, 403, 404, 429...) counts.
- ``records_in``/``bytes_in``: the records a produce appended, and their key, value and
  header bytes (:func:`gateway.tenancy.produce_cost`). A replayed idempotent produce
  appends nothing and adds nothing here (it still counts as a request); a retry that
  finishes a request cut short counts only the records it appended.
- ``records_out``/``bytes_out``: the records a read or group fetch answered, in JSON or in
  binary batches (records below the asked offset in a binary answer's first batch are not
  counted), and their key, value and header bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.auth import PRINCIPAL
from gateway.billing import PricePlan, usage_json
from gateway.broker.service import Broker
from gateway.cluster import CLUSTER
from gateway.http_errors import Handler
from gateway.keys import CLOCKS, CONFIG, METRICS
from gateway.logs import log_if_died
from gateway.tenancy import ADMIN_PREFIX, CONSUME_ROUTES, PRODUCE_CHARGE, TENANCY, produce_cost
from gateway.tiering import OBJECT_STORE
from partitions.batch import NewRecord
from partitions.catalog import HOUR_MS, Catalog, UsageCounters, UsageRecord
from partitions.errors import EventBusError, TenantNotFoundError

log = logging.getLogger(__name__)

HOUR_S = HOUR_MS // 1000
MAX_FLUSH_MS = 5_000
# A request whose client went away before the answer (nginx's name for it).
CLIENT_CLOSED = 499
EXPORT_PREFIX = "_usage/"
EXPORTED_SETTING = "usage_exported_until_ms"

ClockMs = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def hour_of(ms: int) -> int:
    """The start of the UTC hour holding ``ms``."""
    return ms - ms % HOUR_MS


def hour_text(ms: int) -> str:
    """RFC 3339, as the API writes times: ``2026-01-05T13:00:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class _Tally:
    """Counts of one tenant and hour not flushed yet (mutable: the request path adds)."""

    requests: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stored_byte_seconds: int = 0
    partition_seconds: int = 0

    def freeze(self) -> UsageCounters:
        return UsageCounters(*(getattr(self, f.name) for f in fields(self)))

    def add(self, counters: UsageCounters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(counters, f.name))


class Footprint(Protocol):
    """What a tenant holds at a moment: the one source the meter samples for
    ``stored_byte_seconds`` and ``partition_seconds``."""

    async def stored_bytes(self, tenant: str) -> int:
        """Bytes the tenant stores, each counted once wherever it lives (local disk, the
        object store, or both)."""
        ...

    async def active_partitions(self, tenant: str) -> int: ...


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


class NothingHeld:
    """The footprint of a worker process that does not sample storage (another does)."""

    async def stored_bytes(self, tenant: str) -> int:
        return 0

    async def active_partitions(self, tenant: str) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class _Sample:
    at_s: int  # whole seconds of the meter's clock
    stored_bytes: int
    partitions: int


class Meter:
    """Every tenant's usage counted in this process, and its readings.

    The clock (ms since the epoch, UTC) is injectable: tests move it across hours.
    """

    def __init__(
        self, catalog: Catalog, footprint: Footprint, *, clock_ms: ClockMs = wall_clock_ms
    ) -> None:
        self._catalog = catalog
        self._footprint = footprint
        self.clock_ms = clock_ms
        self._pending: dict[tuple[str, int], _Tally] = {}
        self._samples: dict[str, _Sample] = {}
        self._flush_lock = asyncio.Lock()
        self._sample_lock = asyncio.Lock()
        self.flushes = 0
        self.flush_failures = 0
        # With several worker processes: has the others flush what they counted (and the
        # one that samples storage sample it) before a reading (gateway/cluster.py).
        self.before_reading: Callable[[], Awaitable[None]] | None = None

    # --- the request path ----------------------------------------------------------------

    def _tally(self, tenant: str) -> _Tally:
        key = (tenant, hour_of(self.clock_ms()))
        tally = self._pending.get(key)
        if tally is None:
            tally = self._pending[key] = _Tally()
        return tally

    def count_request(self, tenant: str) -> None:
        self._tally(tenant).requests += 1

    def count_in(self, tenant: str, records: int, nbytes: int) -> None:
        tally = self._tally(tenant)
        tally.records_in += records
        tally.bytes_in += nbytes

    def count_out(self, tenant: str, records: int, nbytes: int) -> None:
        tally = self._tally(tenant)
        tally.records_out += records
        tally.bytes_out += nbytes

    # --- storage and partitions over time ------------------------------------------------

    @staticmethod
    def _integrate(
        tenant: str, sample: _Sample, end_s: int, into: dict[tuple[str, int], _Tally]
    ) -> None:
        """Add ``sample``'s holdings from its time to ``end_s``, split at hours."""
        if not (sample.stored_bytes or sample.partitions):
            return
        at = sample.at_s
        while at < end_s:
            stop = min(end_s, (at // HOUR_S + 1) * HOUR_S)
            key = (tenant, (at // HOUR_S) * HOUR_MS)
            tally = into.get(key)
            if tally is None:
                tally = into[key] = _Tally()
            tally.stored_byte_seconds += sample.stored_bytes * (stop - at)
            tally.partition_seconds += sample.partitions * (stop - at)
            at = stop

    async def sample(self) -> None:
        """Measure every tenant now; bill each the interval since its last sample."""
        async with self._sample_lock:
            now_s = self.clock_ms() // 1000
            taken: dict[str, _Sample] = {}
            unmeasured: set[str] = set()
            for record in await self._catalog.list_tenants():
                try:
                    stored = await self._footprint.stored_bytes(record.name)
                    partitions = await self._footprint.active_partitions(record.name)
                except TenantNotFoundError:
                    continue  # deleted meanwhile: it holds nothing any more
                except EventBusError as exc:
                    # Billed at its last measurement until one succeeds.
                    log.warning("metering: cannot measure tenant %s now: %s", record.name, exc)
                    unmeasured.add(record.name)
                    continue
                taken[record.name] = _Sample(now_s, stored, partitions)
            # No await from here on: readings see the old samples or the new ones with
            # their intervals, never both. Tenants not seen again were deleted.
            for tenant in unmeasured:
                if tenant in self._samples:
                    taken[tenant] = self._samples[tenant]
            for tenant, fresh in list(taken.items()):
                last = self._samples.get(tenant)
                if last is None or tenant in unmeasured:
                    continue
                if last.at_s < now_s:
                    self._integrate(tenant, last, now_s, self._pending)
                else:  # the same second (or a clock set back): nothing to bill yet
                    taken[tenant] = _Sample(last.at_s, fresh.stored_bytes, fresh.partitions)
            self._samples = taken

    # --- flushing ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Add the counts gathered since the last flush to the catalog.

        On failure they are kept for the next flush. Cancelled while the catalog writes,
        it waits for the write's outcome, so that counts are neither lost nor added twice.
        """
        async with self._flush_lock:
            batch, self._pending = self._pending, {}
            deltas = [UsageRecord(t, h, tally.freeze()) for (t, h), tally in batch.items()]
            deltas = [d for d in deltas if d.counters]
            if not deltas:
                return
            write = asyncio.ensure_future(self._catalog.add_usage(deltas))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await asyncio.wait([write])
                if write.cancelled() or write.exception() is not None:
                    self._restore(batch)
                raise
            except BaseException:
                self.flush_failures += 1
                self._restore(batch)
                raise
            self.flushes += 1

    def _restore(self, batch: Mapping[tuple[str, int], _Tally]) -> None:
        for key, tally in batch.items():
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = tally
            else:
                pending.add(tally.freeze())

    @property
    def unflushed(self) -> int:
        return len(self._pending)

    def settled_before(self, end_ms: int) -> bool:
        """Whether everything counted here for hours before ``end_ms`` is in the catalog:
        nothing of them waits to be flushed, and every tenant was sampled since."""
        if any(hour < end_ms and tally.freeze() for (_, hour), tally in self._pending.items()):
            return False
        return all(s.at_s * 1000 >= end_ms for s in self._samples.values())

    # --- readings ------------------------------------------------------------------------

    async def usage(
        self, start_ms: int, end_ms: int, *, tenant: str | None = None
    ) -> dict[str, UsageCounters]:
        """Each tenant's usage in the hours of ``[start_ms, end_ms)``, up to this moment:
        the catalog's rows, the counts not flushed yet, and what tenants held since their
        last sample."""
        if self.before_reading is not None:
            # The leader samples storage before every reading, whichever worker serves it:
            # the others ask it to, and this process may be the leader. Else a reading the
            # leader serves keeps its timer's last measure, and storage written since is
            # billed from a later sample (by then maybe much later on the clock).
            await self.sample()
            await self.before_reading()
        async with self._flush_lock:  # no flush in flight: its counts are in one place
            rows = await self._catalog.list_usage(start_ms, end_ms, tenant=tenant)
            now_s = self.clock_ms() // 1000
            extra: dict[tuple[str, int], _Tally] = {}
            for name, sample in self._samples.items():
                if tenant is None or name == tenant:
                    self._integrate(name, sample, now_s, extra)
            out: dict[str, UsageCounters] = {}
            for row in rows:
                out[row.tenant] = out.get(row.tenant, UsageCounters()) + row.counters
            for source in (self._pending, extra):
                for (name, hour), tally in source.items():
                    if start_ms <= hour < end_ms and (tenant is None or name == tenant):
                        out[name] = out.get(name, UsageCounters()) + tally.freeze()
            return out


# --- the request path: middleware and the handlers' calls ------------------------------------

METER = web.AppKey("meter", Meter)
# Records a read or group fetch delivered (an empty poll delivered none).
DELIVERED = web.RequestKey("usage_delivered", int)


def billable(route: str | None, status: int, delivered: int) -> bool:
    """Whether a tenant request counts in ``requests`` (see the module's docstring)."""
    if status >= 500:
        return False
    empty_poll = route in CONSUME_ROUTES and delivered == 0 and status in (200, CLIENT_CLOSED)
    return not empty_poll


def metering_middleware(meter: Callable[[], Meter]) -> Middleware:
    """Count every tenant request once it is answered; ``meter`` is looked up per request
    because it exists only once the app has started. Placed after authentication and
    before quotas, so that a request the quotas refuse is counted too."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is None or principal.admin or principal.tenant is None:
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        if route is not None and route.startswith(ADMIN_PREFIX):
            return await handler(request)  # refused there (403), not the tenant's usage
        status = 500
        try:
            response = await handler(request)
        except (EventBusError, web.HTTPException) as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        else:
            status = response.status
            return response
        finally:
            if billable(route, status, request.get(DELIVERED, 0)):
                meter().count_request(principal.tenant)

    return middleware


def _tenant(request: web.Request) -> str | None:
    principal = request.get(PRINCIPAL)
    return None if principal is None or principal.admin else principal.tenant


def meter_produced(
    request: web.Request, records: Sequence[NewRecord], appended: Sequence[int]
) -> None:
    """Count the records of a produce at the indexes it appended (a replay appends none)."""
    tenant = _tenant(request)
    if tenant is None or not appended:
        return
    if len(appended) == len(records):
        # All of them: the quota already counted their bytes.
        nbytes = request.get(PRODUCE_CHARGE) or produce_cost(records)
    else:
        nbytes = produce_cost([records[i] for i in appended])
    request.app[METER].count_in(tenant, len(appended), nbytes)


def meter_delivered(request: web.Request, records: int, nbytes: int) -> None:
    """Count records a read or group fetch answers, with their key, value and header bytes."""
    request[DELIVERED] = request.get(DELIVERED, 0) + records
    tenant = _tenant(request)
    if tenant is not None and records:
        request.app[METER].count_out(tenant, records, nbytes)


# --- the hourly export -----------------------------------------------------------------------


CREATED = "created"


class ObjectSink(Protocol):
    """The one call of an object store the export needs: a create-only put.

    It never replaces an object: if ``key`` exists it changes nothing and answers
    ``"already_exists"``, else the object appears whole and it answers ``"created"``.
    Tiered storage's :class:`~tiered_storage.objects.ObjectStore` is one (its ``PutResult``
    is a string enum of these values); the export needs nothing else of it.
    """

    async def put(self, key: str, source: bytes | Path) -> str: ...


def export_key(tenant: str, hour_ms: int) -> str:
    """``_usage/hour=2026-01-05T13/tenant=acme.jsonl``: keys list by hour."""
    return f"{EXPORT_PREFIX}hour={hour_text(hour_ms)[:13]}/tenant={tenant}.jsonl"


PlanOf = Callable[[str], Awaitable[PricePlan | None]]


class UsageExporter:
    """Writes each completed hour's usage, one object per tenant that used anything in it.

    An hour is exported once it ended ``delay_ms`` ago and this process's counts of it are
    in the catalog; then ``usage_exported_until_ms`` in the catalog's settings moves past
    it. Puts are create-only, so a pass repeated after a crash (or by another process)
    writes nothing new.
    """

    def __init__(
        self,
        catalog: Catalog,
        meter: Meter,
        sink: ObjectSink,
        plan_of: PlanOf,
        *,
        delay_ms: int,
    ) -> None:
        self._catalog = catalog
        self._meter = meter
        self._sink = sink
        self._plan_of = plan_of
        self._delay_ms = delay_ms
        self._until: int | None = None
        self.created = 0
        # Whether every count of the hours before a moment is in the catalog: this
        # process's meter's word, or (several worker processes) every process's.
        self.settled: Callable[[int], Awaitable[bool]] = self._settled_here

    async def _settled_here(self, end_ms: int) -> bool:
        return self._meter.settled_before(end_ms)

    async def _exported_until(self, complete: int) -> int:
        if self._until is None:
            stored = await self._catalog.get_setting(EXPORTED_SETTING)
            if stored is not None:
                self._until = int(stored)
            else:
                rows = await self._catalog.list_usage(0, complete)
                return rows[0].hour_ms if rows else complete
        return self._until

    async def export_completed(self) -> int:
        """Export every completed hour not exported yet; answers the objects created."""
        complete = hour_of(self._meter.clock_ms() - self._delay_ms)
        hour = await self._exported_until(complete)
        created = 0
        while hour < complete and await self.settled(hour + HOUR_MS):
            created += await self.export_hour(hour)
            hour += HOUR_MS
            await self._catalog.put_setting(EXPORTED_SETTING, str(hour))
            self._until = hour
        return created

    async def export_hour(self, hour_ms: int) -> int:
        created = 0
        for row in await self._catalog.list_usage(hour_ms, hour_ms + HOUR_MS):
            plan = await self._plan_of(row.tenant)
            line = {
                "tenant": row.tenant,
                "hour": hour_text(hour_ms),
                "usage": usage_json(row.counters),
                # The prices in force at export (null: the tenant was deleted).
                "plan": None if plan is None else plan.to_json(),
            }
            outcome = await self._sink.put(
                export_key(row.tenant, hour_ms), orjson.dumps(line) + b"\n"
            )
            if outcome == CREATED:
                created += 1
        self.created += created
        return created


# --- the background task ---------------------------------------------------------------------


@dataclass(slots=True)
class Metering:
    """The meter, the exporter and the default plan, for the usage routes."""

    meter: Meter
    exporter: UsageExporter
    default_plan: PricePlan
    catalog: Catalog
    stop: asyncio.Event = field(default_factory=asyncio.Event)


METERING = web.AppKey("metering", Metering)


class _UsageCollector(Collector):
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


OBJECTS_DIR = "objects"


async def _tick(metering: Metering, sample_due: bool) -> None:
    if sample_due:
        await metering.meter.sample()
    await metering.meter.flush()
    await metering.exporter.export_completed()


async def run_metering(metering: Metering, flush_s: float, sample_s: float) -> None:
    """Flush every ``flush_s``, sample every ``sample_s``, export what is complete; until
    ``metering.stop`` is set. A failed step is logged and tried again next time."""
    loop = asyncio.get_running_loop()
    next_sample = loop.time() + sample_s
    while not metering.stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                await metering.stop.wait()
        due = loop.time() >= next_sample
        if due:
            next_sample = loop.time() + sample_s
        try:
            await _tick(metering, due)
        except Exception:
            log.exception("metering: a flush, sample or export failed; trying again next time")


async def metering_ctx(app: web.Application) -> AsyncIterator[None]:
    """The meter and its task: after the entries it needs (the catalog, the object store,
    the broker), closed before them with a last sample and flush."""
    config = app[CONFIG]
    clocks = app[CLOCKS]
    tenancy = app[TENANCY]
    catalog = tenancy.catalog
    peers = app.get(CLUSTER)
    # With several worker processes, one (the leader) samples what tenants hold.
    footprint: Footprint = (
        BrokerFootprint(tenancy.broker, catalog)
        if peers is None or peers.role.leader
        else NothingHeld()
    )
    meter = Meter(catalog, footprint, clock_ms=clocks.usage_ms)

    async def plan_of(tenant: str) -> PricePlan | None:
        try:
            record = await catalog.get_tenant(tenant)
        except TenantNotFoundError:
            return None
        return config.default_plan.overlay(record.plan)

    exporter = UsageExporter(
        catalog, meter, app[OBJECT_STORE], plan_of, delay_ms=config.usage_export_delay_ms
    )
    metering = Metering(meter, exporter, config.default_plan, catalog)
    if peers is not None:
        peers.share_meter(meter, exporter)
    await meter.sample()  # the start of every tenant's storage interval
    app[METER] = meter
    app[METERING] = metering
    app[METRICS].registry.register(_UsageCollector(metering))
    task = asyncio.get_running_loop().create_task(
        run_metering(metering, config.usage_flush_ms / 1000, config.usage_sample_ms / 1000),
        name="metering",
    )
    task.add_done_callback(partial(log_if_died, log))
    try:
        yield
    finally:
        metering.stop.set()
        try:
            await task
        finally:
            # Every request has finished: count storage up to now and flush it all.
            try:
                await meter.sample()
            finally:
                await meter.flush()
