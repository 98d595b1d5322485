"""Usage metering: per-tenant, per-UTC-hour counters, flushed to the catalog, exported hourly.

On the request path nothing waits: a request adds to in-memory counters of its tenant and
hour (:class:`Meter`), and one background task
(:func:`gateway.tenancy.usage_export.run_metering`) does the rest:

- every ``usage_flush_ms`` (at most 5 s) it adds the counts gathered since the last flush
  to the catalog, as deltas in one transaction (:meth:`Catalog.add_usage`), so a SIGKILL
  loses at most that interval's counts; a failed flush keeps them for the next one; at
  shutdown a last sample and flush lose nothing;
- every ``usage_sample_ms`` it samples what each tenant holds (:class:`Footprint`: stored
  bytes and active partitions) and integrates it over time, each interval at the value
  sampled at its start, split at hour boundaries, in whole seconds of the clock (so the
  seconds of consecutive intervals add up exactly);
- once an hour is complete (``usage_export_delay_ms`` after its end) it writes one JSON
  line per tenant that used anything in it to the object store
  (:class:`~gateway.tenancy.usage_export.UsageExporter`).

Readings (:meth:`Meter.usage`) add the catalog's rows, the counts not flushed yet and the
storage held since the last sample, so they are exact at any moment and never go back. With
several worker processes a reading first has every worker flush and the one that samples
storage sample it, whichever worker serves the reading.

What is counted, per tenant request (requests made with a tenant's key; admin requests and
public routes are not metered; the front door calls :class:`Meter` as it serves them):

- ``requests``: every request answered with a status below 500, except an *empty poll*: a
  read or group fetch that delivered no records (a 200 with none, or a long-poll the client
  gave up on). A refused request (400, 403, 404, 429...) counts.
- ``records_in``/``bytes_in``: the records a produce appended, and their key, value and
  header bytes (``IncomingRecords.cost`` in :mod:`partitions.incoming`). A replayed
  idempotent produce appends nothing and adds nothing here (it still counts as a
  request); a retry that finishes a request cut short counts only the records it appended.
- ``records_out``/``bytes_out``: the records a read or group fetch answered, in JSON or in
  binary batches (records below the asked offset in a binary answer's first batch are not
  counted), and their key, value and header bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Protocol

from partitions.catalog import HOUR_MS, Catalog, UsageCounters, UsageRecord
from partitions.errors import EventBusError, TenantNotFoundError, UsagePartlyAddedError

log = logging.getLogger(__name__)

HOUR_S = HOUR_MS // 1000

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


class OtherMeters(Protocol):
    """The meters of the other processes of a server (``gateway/processes/usage.py``)."""

    async def settle(self) -> None:
        """Have every other process flush what it counted (and the one that samples
        storage sample it), before a reading."""
        ...

    async def settled_before(self, end_ms: int) -> bool:
        """Whether every count of the hours before ``end_ms`` is in the catalog, as far as
        the export is concerned (only the process that exports says yes)."""
        ...


class Footprint(Protocol):
    """What a tenant holds at a moment: the one source the meter samples for
    ``stored_byte_seconds`` and ``partition_seconds``."""

    async def stored_bytes(self, tenant: str) -> int:
        """Bytes the tenant stores, each counted once wherever it lives (local disk, the
        object store, or both)."""
        ...

    async def active_partitions(self, tenant: str) -> int: ...


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
        self,
        catalog: Catalog,
        footprint: Footprint,
        *,
        clock_ms: ClockMs = wall_clock_ms,
        others: OtherMeters | None = None,
    ) -> None:
        self._catalog = catalog
        self._footprint = footprint
        self.clock_ms = clock_ms
        # With several processes: the meters of the others, settled before a reading.
        self._others = others
        self._pending: dict[tuple[str, int], _Tally] = {}
        self._samples: dict[str, _Sample] = {}
        self._flush_lock = asyncio.Lock()
        self._sample_lock = asyncio.Lock()
        self.flushes = 0
        self.flush_failures = 0

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
                    self._restore(
                        _not_added(batch, None if write.cancelled() else write.exception())
                    )
                raise
            except BaseException as exc:
                self.flush_failures += 1
                self._restore(_not_added(batch, exc))
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
        if self._others is not None:
            # The leader samples storage before every reading, whichever worker serves it:
            # the others ask it to, and this process may be the leader. Else a reading the
            # leader serves keeps its timer's last measure, and storage written since is
            # billed from a later sample (by then maybe much later on the clock).
            await self.sample()
            await self._others.settle()
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


def _not_added(
    batch: Mapping[tuple[str, int], _Tally], failure: BaseException | None
) -> Mapping[tuple[str, int], _Tally]:
    """What of a failed flush was not added: all of it, unless the catalog added it in
    parts and says which rows it did not (a large flush to DynamoDB)."""
    if not isinstance(failure, UsagePartlyAddedError):
        return batch
    left = {(str(tenant), int(hour)) for tenant, hour in failure.details["not_added"]}
    return {key: tally for key, tally in batch.items() if key in left}
