"""The hourly export of usage, and the loop that flushes, samples and exports.

Once an hour is complete (``usage_export_delay_ms`` after its end) one JSON line per tenant
that used anything in it is written to the object store, under ``_usage/``, create-only:
a pass repeated after a crash (or by another process) writes nothing new. The loop
(:func:`run_metering`) flushes every ``usage_flush_ms``, samples every ``usage_sample_ms``
and exports what is complete; after a failed pass (the catalog or the object store cannot
be written: a full disk) the next one comes later and later, up to ``RETRY_MAX_S``, and
the counts wait in memory; one line is logged when the failures start and one when they
end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from gateway.tenancy.billing import PricePlan, usage_json
from gateway.tenancy.metering import Meter, OtherMeters, hour_of, hour_text
from partitions.backoff import Backoff
from partitions.catalog import HOUR_MS, Catalog

log = logging.getLogger(__name__)

EXPORT_PREFIX = "_usage/"
EXPORTED_SETTING = "usage_exported_until_ms"


CREATED = "created"
# The longest wait between two passes while they keep failing.
RETRY_MAX_S = 60.0


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
        others: OtherMeters | None = None,
    ) -> None:
        self._catalog = catalog
        self._meter = meter
        self._sink = sink
        self._plan_of = plan_of
        self._delay_ms = delay_ms
        self._until: int | None = None
        self.created = 0
        self._others = others

    async def settled(self, end_ms: int) -> bool:
        """Whether every count of the hours before ``end_ms`` is in the catalog: this
        process's meter's word, and (several worker processes) every other's."""
        if not self._meter.settled_before(end_ms):
            return False
        return self._others is None or await self._others.settled_before(end_ms)

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


@dataclass(slots=True)
class Metering:
    """The meter, the exporter and the default plan, for the usage routes."""

    meter: Meter
    exporter: UsageExporter
    default_plan: PricePlan
    catalog: Catalog
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _tick(metering: Metering, sample_due: bool) -> None:
    if sample_due:
        await metering.meter.sample()
    await metering.meter.flush()
    await metering.exporter.export_completed()


async def run_metering(metering: Metering, flush_s: float, sample_s: float) -> None:
    """Flush every ``flush_s``, sample every ``sample_s``, export what is complete; until
    ``metering.stop`` is set. After a failed pass the next one waits longer (see the
    module's docstring); the counts are kept meanwhile."""
    loop = asyncio.get_running_loop()
    next_sample = loop.time() + sample_s
    backoff = Backoff(
        "metering: a flush, sample or export",
        log,
        first_s=flush_s,
        max_s=max(flush_s, RETRY_MAX_S),
    )
    wait_s = flush_s
    while not metering.stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await metering.stop.wait()
        due = loop.time() >= next_sample
        if due:
            next_sample = loop.time() + sample_s
        try:
            await _tick(metering, due)
        except Exception as exc:  # noqa: BLE001 - whatever failed is tried again later
            wait_s = max(flush_s, backoff.failed(exc))
        else:
            backoff.succeeded()
            wait_s = flush_s
