"""Per-tenant quotas: token buckets for rates, limits on topics, partitions and storage.

A tenant's quotas are the server's defaults (``eventbus serve --default-...`` flags) with the
tenant's own overrides on top (``PATCH /v1/admin/tenants/{tenant}``); ``null`` is unlimited.
They hold across all of a tenant's topics, so making more topics gains nothing.

Rates are token buckets that refill continuously at the quota's rate:

- ``requests_per_s``: every tenant request takes one token before anything else happens.
- ``produce_bytes_per_s``: a produce takes as many tokens as its records' key, value and
  header bytes, after the body is parsed and before anything is written. The bucket holds
  one second of rate, so over any window of W seconds a tenant's accepted produce bytes are
  at most ``quota x (W + 1)`` plus one request. A request costing more than the bucket
  holds is admitted when the bucket is full and leaves it in debt, which the tenant's next
  produce waits out (Kafka's throttle-after model): it is never refused forever.
- ``consume_bytes_per_s``: a read or a group fetch goes ahead while the bucket is above
  zero, and the bytes it returned are taken after the read, which may leave the bucket in
  debt; the next read waits until the debt is repaid. The bucket holds one second of rate.

A request the bucket cannot pay for is refused at once, before it changes anything: 429
``quota_exceeded``, with ``Retry-After`` (whole seconds, rounded up) and the exact wait in
``details.retry_after_ms``. Nothing is queued on the server, so a refused request holds no
memory or connection slot; a produce is told exactly when the bucket will hold enough for
it (all of it, or for a request larger than the bucket, a full bucket). Buckets start full.

``max_stored_bytes`` refuses produce while the tenant's stored bytes (every partition's
log, sealed ones included) are at or over it: 429 ``storage_quota_exceeded``. A produce
accepted just under the limit may pass it by that one request. The stored size is measured
at most every ``refresh_s`` and grows with each accepted produce between measurements.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from gateway.settings import setting
from gateway.tenancy.buckets import TokenBucket
from partitions.catalog import Catalog, TenantLimits
from partitions.errors import CatalogUnavailableError, EventBusError, InvalidInputError
from partitions.shapes import Choice, Integer, Nullable, Object, OneOf

Clock = Callable[[], float]

MAX_QUOTA = 2**62
RATE_QUOTAS = ("produce_bytes_per_s", "consume_bytes_per_s", "requests_per_s")
COUNT_QUOTAS = ("max_topics", "max_partitions", "max_stored_bytes")
QUOTA_NAMES = RATE_QUOTAS + COUNT_QUOTAS
# In a PATCH, this value removes the tenant's override: the server default applies again.
DEFAULT = "default"


class InvalidQuotasError(InvalidInputError):
    code = "invalid_quotas"


class QuotaExceededError(EventBusError):
    """A rate quota is used up; ``details`` name it and say when to retry."""

    code = "quota_exceeded"
    status = 429
    retriable = True


class StorageQuotaExceededError(EventBusError):
    code = "storage_quota_exceeded"
    status = 429
    retriable = True


def _quota_text(low: int) -> Callable[[str], int | None]:
    """A quota as a flag gives it: a number, or none/unlimited."""

    def parse(text: str) -> int | None:
        if text.strip().lower() in ("", "none", "unlimited"):
            return None
        value = int(text)
        if value < low:
            raise ValueError(f"must be at least {low}, or 'unlimited'")
        return value

    return parse


def _quota(help_text: str, low: int) -> Any:
    return setting(None, help_text, parse=_quota_text(low), metavar="N", none_means="unlimited")


@dataclass(frozen=True, slots=True)
class Quotas:
    """Effective quotas of a tenant; None is unlimited. As settings, the defaults of every
    tenant without its own (``--default-produce-bytes-per-s`` and so on)."""

    produce_bytes_per_s: int | None = _quota("record bytes a tenant may produce per second", 1)
    consume_bytes_per_s: int | None = _quota("record bytes a tenant may read per second", 1)
    requests_per_s: int | None = _quota("requests a tenant may make per second", 1)
    max_topics: int | None = _quota("topics a tenant may have", 0)
    max_partitions: int | None = _quota("active partitions a tenant may have", 0)
    max_stored_bytes: int | None = _quota("bytes a tenant may store", 0)

    def to_json(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def overlay(self, overrides: Mapping[str, Any]) -> Quotas:
        """These quotas with a tenant's stored overrides on top (unknown names ignored)."""
        known = {name: value for name, value in overrides.items() if name in QUOTA_NAMES}
        return replace(self, **known)


def _lowest(name: str) -> int:
    # A rate of zero would refuse everything forever; a count limit of zero is a way to
    # say "none at all".
    return 1 if name in RATE_QUOTAS else 0


# A ``quotas`` object of the admin API: each value an integer, ``null`` (unlimited) or
# ``"default"`` (drop the tenant's own value: the server's default applies again).
QUOTA_CHANGES_SHAPE = Object(
    fields={
        name: Nullable(
            shape=OneOf(
                shapes=(Integer(low=_lowest(name), high=MAX_QUOTA), Choice(values=(DEFAULT,))),
                meaning=f'an integer from {_lowest(name)} to {MAX_QUOTA}, or "{DEFAULT}"',
            )
        )
        for name in QUOTA_NAMES
    },
    description='Each quota an integer, null (unlimited) or "default" (the server\'s '
    "default applies again)",
    error=InvalidQuotasError,
)


def parse_quota_changes(given: Any) -> dict[str, int | str | None]:
    """Validate a ``quotas`` object of the admin API."""
    checked: dict[str, int | str | None] = QUOTA_CHANGES_SHAPE.parse(
        given, InvalidQuotasError, where="quotas", detail="quota"
    )
    return checked


def apply_quota_changes(
    stored: Mapping[str, Any], changes: Mapping[str, int | str | None]
) -> dict[str, int | None]:
    """A tenant's overrides after a PATCH."""
    merged = {name: value for name, value in stored.items() if name in QUOTA_NAMES}
    for name, value in changes.items():
        if value == DEFAULT:
            merged.pop(name, None)
        else:
            merged[name] = value if isinstance(value, int) else None
    return merged


@dataclass(slots=True)
class _Known:
    quotas: Quotas
    read_at: float


# How long quotas read from the catalog are still applied while it cannot be reached.
STALE_QUOTAS_S = 300.0


class TenantQuotas:
    """Every tenant's effective quotas (the defaults with its overrides), read from the
    catalog and kept for ``refresh_s``; :meth:`forget` has a tenant read again at once (its
    quotas changed), :meth:`drop` forgets it (deleted). The broker asks it for a tenant's
    limits on topics and partitions; the :class:`QuotaBook` for its rates.

    While the catalog cannot be reached (:class:`CatalogUnavailableError`), quotas read
    within :data:`STALE_QUOTAS_S` go on being applied, without waiting for it, so that
    requests needing nothing else of the catalog are served through an outage."""

    def __init__(
        self,
        catalog: Catalog,
        defaults: Quotas,
        *,
        refresh_s: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self.defaults = defaults
        self.refresh_s = refresh_s
        self.clock = clock
        self._known: dict[str, _Known] = {}
        # Set while the catalog's last answer was that it cannot be reached.
        self._catalog_out = False
        self._refreshing: dict[str, asyncio.Task[Quotas]] = {}

    async def quotas(self, tenant: str) -> Quotas:
        now = self.clock()
        known = self._known.get(tenant)
        if known is not None and now - known.read_at < self.refresh_s:
            return known.quotas
        stale = known if known is not None and now - known.read_at < STALE_QUOTAS_S else None
        if stale is not None and self._catalog_out:
            self._refresh_behind(tenant)  # the request does not wait on an outage
            return stale.quotas
        try:
            return await self._read(tenant)
        except CatalogUnavailableError:
            if stale is None:
                raise
            return stale.quotas

    async def _read(self, tenant: str) -> Quotas:
        now = self.clock()
        try:
            record = await self._catalog.get_tenant(tenant)
        except CatalogUnavailableError:
            self._catalog_out = True
            raise
        self._catalog_out = False
        quotas = self.defaults.overlay(record.quotas)
        self._known[tenant] = _Known(quotas, now)
        return quotas

    def _refresh_behind(self, tenant: str) -> None:
        if tenant in self._refreshing:
            return
        task = asyncio.get_running_loop().create_task(self._read(tenant))
        self._refreshing[tenant] = task

        def done(finished: asyncio.Task[Quotas]) -> None:
            self._refreshing.pop(tenant, None)
            if not finished.cancelled():
                finished.exception()  # an outage, already noted: nothing more to say

        task.add_done_callback(done)

    def fresh(self, tenant: str) -> Quotas | None:
        """The tenant's quotas if read within ``refresh_s`` (None: read them)."""
        known = self._known.get(tenant)
        if known is not None and self.clock() - known.read_at < self.refresh_s:
            return known.quotas
        return None

    def last_read(self, tenant: str) -> Quotas | None:
        """The tenant's quotas as last read (None: not read yet), without reading."""
        known = self._known.get(tenant)
        return None if known is None else known.quotas

    def forget(self, tenant: str) -> None:
        """Read the tenant's quotas again at its next request."""
        known = self._known.get(tenant)
        if known is not None:
            known.read_at = -math.inf

    def drop(self, tenant: str) -> None:
        self._known.pop(tenant, None)

    async def limits(self, tenant: str) -> TenantLimits:
        """The tenant's limits on topics and active partitions (the broker enforces them)."""
        quotas = await self.quotas(tenant)
        return TenantLimits(max_topics=quotas.max_topics, max_partitions=quotas.max_partitions)

    async def partition_limit(self, tenant: str) -> int | None:
        """The most active partitions the tenant may have across its topics (None: no
        limit). For the autoscaler: it stops splitting a tenant's topics there."""
        return (await self.quotas(tenant)).max_partitions


class QuotaHome(Protocol):
    """The process that keeps a tenant's buckets, when it is another one: an operation of
    the book asked of it (``gateway/processes/quota_home.py``)."""

    async def ask(self, operation: str, tenant: str, cost: int) -> None:
        """Run the operation there and wait: its refusal is raised here."""
        ...

    def tell(self, operation: str, tenant: str, cost: int) -> None:
        """Run the operation there without waiting (a charge after the request); the next
        ``ask`` for the tenant goes after it."""
        ...


class QuotaHomes(Protocol):
    def quota_home(self, tenant: str) -> QuotaHome | None:
        """Where the tenant's buckets are, when not here."""
        ...


class _HereOnly:
    def quota_home(self, tenant: str) -> QuotaHome | None:
        return None


@dataclass(slots=True)
class _Tenant:
    quotas: Quotas
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    stored_bytes: int = 0
    stored_at: float | None = None


def retry_details(quota: str, limit: int, wait_s: float) -> dict[str, Any]:
    return {"quota": quota, "limit": limit, "retry_after_ms": max(1, math.ceil(wait_s * 1000))}


def refusal(quota: str, limit: int, wait_s: float) -> QuotaExceededError:
    message = f"the tenant's {quota} quota ({limit}) is used up; retry in {wait_s:.3f} s"
    return QuotaExceededError(message, **retry_details(quota, limit, wait_s))


class QuotaBook:
    """Every tenant's buckets and stored-bytes measure, where they live.

    With several processes a tenant's buckets live in one of them, its *home*
    (``homes``): the others ask it for each charge, and it answers exactly as it would its
    own requests (tokens taken, or a 429 with the wait), so N processes never give a
    tenant N buckets. A process asks only for the quotas the tenant has: a tenant without
    rate or storage quotas costs no call. ``stored_bytes`` measures what a tenant stores
    now. The clock (seconds, monotonic) is the quotas' own, injectable, so tests count
    tokens without sleeping.
    """

    def __init__(
        self,
        quotas: TenantQuotas,
        *,
        stored_bytes: Callable[[str], Awaitable[int]],
        storage_retry_s: float = 30.0,
        homes: QuotaHomes | None = None,
    ) -> None:
        self.tenant_quotas = quotas
        self._stored_bytes = stored_bytes
        self._storage_retry_s = storage_retry_s
        self._homes: QuotaHomes = homes or _HereOnly()
        self._tenants: dict[str, _Tenant] = {}

    @property
    def defaults(self) -> Quotas:
        return self.tenant_quotas.defaults

    @property
    def clock(self) -> Clock:
        return self.tenant_quotas.clock

    async def quotas(self, tenant: str) -> Quotas:
        return await self.tenant_quotas.quotas(tenant)

    async def limits(self, tenant: str) -> TenantLimits:
        return await self.tenant_quotas.limits(tenant)

    async def partition_limit(self, tenant: str) -> int | None:
        return await self.tenant_quotas.partition_limit(tenant)

    def forget(self, tenant: str) -> None:
        """The tenant's quotas changed: read them again at its next request. Buckets keep
        their tokens across a change of quotas."""
        self.tenant_quotas.forget(tenant)

    def drop(self, tenant: str) -> None:
        """The tenant was deleted."""
        self.tenant_quotas.drop(tenant)
        self._tenants.pop(tenant, None)

    async def _state(self, tenant: str) -> _Tenant:
        # On every request's path: the quotas read within refresh_s, without a coroutine.
        quotas = self.tenant_quotas.fresh(tenant) or await self.tenant_quotas.quotas(tenant)
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(quotas)
            self._shape_buckets(state, self.clock())
        elif state.quotas is not quotas:
            state.quotas = quotas
            self._shape_buckets(state, self.clock())
        return state

    def _shape_buckets(self, state: _Tenant, now: float) -> None:
        for quota in RATE_QUOTAS:
            rate = getattr(state.quotas, quota)
            bucket = state.buckets.get(quota)
            if rate is None:
                state.buckets.pop(quota, None)
                continue
            # One second of rate: what a bucket holds, and so the most a tenant can burst.
            capacity = float(rate)
            if bucket is None:
                state.buckets[quota] = TokenBucket(rate, capacity, capacity, now)
            elif (bucket.rate, bucket.capacity) != (rate, capacity):
                bucket.reshape(rate, capacity, now)

    async def rate_bucket(self, tenant: str, quota: str) -> TokenBucket | None:
        """The tenant's bucket of a rate quota (None: unlimited), to lease out of it."""
        return (await self._state(tenant)).buckets.get(quota)

    # --- without waiting: the usual case, on every tenant request's path -----------------
    #
    # Each answers True once it has done what its async namesake does (or raised its
    # refusal), and False, having done nothing, when that needs a wait: the tenant's quotas
    # are not fresh, its buckets live in another process, or they must be reshaped first.

    def _ready(self, tenant: str, quotas: Quotas) -> _Tenant | None:
        """The tenant's state here, current with ``quotas`` (None: take the async path)."""
        state = self._tenants.get(tenant)
        if state is None or state.quotas is not quotas or self._homes.quota_home(tenant):
            return None
        return state

    def _now(self, tenant: str, quota: str) -> tuple[bool, _Tenant | None]:
        """Whether ``quota`` can be charged without waiting, and the state whose bucket
        takes the charge (None: the tenant has no such quota)."""
        quotas = self.tenant_quotas.fresh(tenant)
        if quotas is None:
            return False, None
        if getattr(quotas, quota) is None:
            return True, None
        state = self._ready(tenant, quotas)
        return state is not None, state

    def admit_request_now(self, tenant: str) -> bool:
        ready, state = self._now(tenant, "requests_per_s")
        if state is not None:
            self._take(state, "requests_per_s", 1)
        return ready

    def admit_consume_now(self, tenant: str) -> bool:
        ready, state = self._now(tenant, "consume_bytes_per_s")
        if state is not None:
            self._wait_positive(state)
        return ready

    def admit_produce_now(self, tenant: str, cost: int) -> bool:
        """:meth:`check_storage`, then :meth:`admit_produce` of ``cost``, both or none."""
        quotas = self.tenant_quotas.fresh(tenant)
        if quotas is None:
            return False
        limit = quotas.max_stored_bytes
        if limit is None and quotas.produce_bytes_per_s is None:
            return True
        state = self._ready(tenant, quotas)
        if state is None:
            return False
        if limit is not None:
            if not self._stored_fresh(state):
                return False
            self._check_stored(state, limit)
        self._take(state, "produce_bytes_per_s", cost)
        return True

    # --- the book's operations: here, or asked of the tenant's home ----------------------

    async def _limited(self, tenant: str, quota: str) -> bool:
        quotas = self.tenant_quotas.fresh(tenant) or await self.tenant_quotas.quotas(tenant)
        return getattr(quotas, quota) is not None

    def _limited_now(self, tenant: str, quota: str) -> bool:
        """As :meth:`_limited`, from what this process read last (its admission did)."""
        quotas = self.tenant_quotas.last_read(tenant)
        return quotas is not None and getattr(quotas, quota) is not None

    async def admit_request(self, tenant: str) -> None:
        home = self._homes.quota_home(tenant)
        if home is None:
            await self._admit_request(tenant)
        elif await self._limited(tenant, "requests_per_s"):
            await home.ask("admit_request", tenant, 0)

    async def admit_produce(self, tenant: str, cost: int) -> None:
        """Take ``cost`` produce tokens, or refuse the request (nothing taken)."""
        home = self._homes.quota_home(tenant)
        if home is None:
            await self._admit_produce(tenant, cost)
        elif await self._limited(tenant, "produce_bytes_per_s"):
            await home.ask("admit_produce", tenant, cost)

    def refund_produce(self, tenant: str, cost: int) -> None:
        """Give back the tokens of a produce that failed before writing."""
        home = self._homes.quota_home(tenant)
        if home is None:
            self._refund_produce(tenant, cost)
        elif self._limited_now(tenant, "produce_bytes_per_s"):
            home.tell("refund_produce", tenant, cost)

    async def admit_consume(self, tenant: str) -> None:
        home = self._homes.quota_home(tenant)
        if home is None:
            await self._admit_consume(tenant)
        elif await self._limited(tenant, "consume_bytes_per_s"):
            await home.ask("admit_consume", tenant, 0)

    def charge_consume(self, tenant: str, cost: int) -> None:
        """Take the bytes a read returned (after the read: it may leave a debt)."""
        home = self._homes.quota_home(tenant)
        if home is None:
            self._charge_consume(tenant, cost)
        elif cost and self._limited_now(tenant, "consume_bytes_per_s"):
            home.tell("charge_consume", tenant, cost)

    async def check_storage(self, tenant: str) -> None:
        home = self._homes.quota_home(tenant)
        if home is None:
            await self._check_storage(tenant)
        elif await self._limited(tenant, "max_stored_bytes"):
            await home.ask("check_storage", tenant, 0)

    def note_stored(self, tenant: str, nbytes: int) -> None:
        """An accepted produce adds to the stored size until the next measurement."""
        home = self._homes.quota_home(tenant)
        if home is None:
            self._note_stored(tenant, nbytes)
        elif self._limited_now(tenant, "max_stored_bytes"):
            home.tell("note_stored", tenant, nbytes)

    async def serve(self, operation: str, tenant: str, cost: int) -> None:
        """Run an operation another process asked of this one, the tenant's home."""
        if operation == "admit_request":
            await self._admit_request(tenant)
        elif operation == "admit_produce":
            await self._admit_produce(tenant, cost)
        elif operation == "admit_consume":
            await self._admit_consume(tenant)
        elif operation == "check_storage":
            await self._check_storage(tenant)
        else:
            await self._state(tenant)  # the tenant's state exists before it is charged
            if operation == "refund_produce":
                self._refund_produce(tenant, cost)
            elif operation == "charge_consume":
                self._charge_consume(tenant, cost)
            elif operation == "note_stored":
                self._note_stored(tenant, cost)
            else:
                raise ValueError(f"unknown quota operation {operation!r}")

    # --- the buckets, in this process -----------------------------------------------------

    def _take(self, state: _Tenant, quota: str, cost: int) -> None:
        """Take ``cost`` tokens of the quota's bucket, if it has one, or refuse."""
        bucket = state.buckets.get(quota)
        if bucket is not None:
            wait = bucket.take(cost, self.clock())
            if wait:
                raise refusal(quota, int(bucket.rate), wait)

    def _wait_positive(self, state: _Tenant) -> None:
        bucket = state.buckets.get("consume_bytes_per_s")
        if bucket is not None:
            wait = bucket.wait_positive(self.clock())
            if wait:
                raise refusal("consume_bytes_per_s", int(bucket.rate), wait)

    async def _admit_request(self, tenant: str) -> None:
        self._take(await self._state(tenant), "requests_per_s", 1)

    async def _admit_produce(self, tenant: str, cost: int) -> None:
        self._take(await self._state(tenant), "produce_bytes_per_s", cost)

    def _refund_produce(self, tenant: str, cost: int) -> None:
        state = self._tenants.get(tenant)
        bucket = None if state is None else state.buckets.get("produce_bytes_per_s")
        if bucket is not None:
            bucket.refund(cost, self.clock())

    async def _admit_consume(self, tenant: str) -> None:
        self._wait_positive(await self._state(tenant))

    def _charge_consume(self, tenant: str, cost: int) -> None:
        state = self._tenants.get(tenant)
        bucket = None if state is None else state.buckets.get("consume_bytes_per_s")
        if bucket is not None and cost:
            bucket.charge(cost, self.clock())

    def _stored_fresh(self, state: _Tenant) -> bool:
        """Whether the tenant's stored bytes were measured within ``refresh_s``."""
        at = state.stored_at
        return at is not None and self.clock() - at < self.tenant_quotas.refresh_s

    async def _check_storage(self, tenant: str) -> None:
        state = await self._state(tenant)
        limit = state.quotas.max_stored_bytes
        if limit is None:
            return
        if not self._stored_fresh(state):
            now = self.clock()
            state.stored_bytes = await self._stored_bytes(tenant)
            state.stored_at = now
        self._check_stored(state, limit)

    def _check_stored(self, state: _Tenant, limit: int) -> None:
        if state.stored_bytes >= limit:
            raise StorageQuotaExceededError(
                f"the tenant stores {state.stored_bytes} bytes, at or over its "
                f"max_stored_bytes ({limit}); delete topics or lower retention",
                stored_bytes=state.stored_bytes,
                **retry_details("max_stored_bytes", limit, self._storage_retry_s),
            )

    def _note_stored(self, tenant: str, nbytes: int) -> None:
        state = self._tenants.get(tenant)
        if state is not None and state.stored_at is not None:
            state.stored_bytes += nbytes
