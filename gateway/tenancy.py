"""Tenancy on the request path: scopes, quotas and fair service, in one middleware.

For a request made with a tenant's key, in this order, each before anything is read or
changed: the key's scope must allow the route and its topic (403 ``out_of_scope``); the
tenant's ``requests_per_s`` bucket pays one token; a read or group fetch needs a
consume bucket above zero. Then the request waits for its turn in the fair scheduler and
runs. Handlers make the calls for what only they know: a produce, once it knows which
records it will append, needs the tenant under its ``max_stored_bytes`` and pays their
bytes (before writing; an idempotent replay appends and pays nothing), and is settled
after (tokens of records not written go back); the bytes a read returned are charged
after it; the page of topics a list may show.

Admin requests and public routes pass straight through: the operator's requests never
queue behind tenants.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.auth import PRINCIPAL, Authenticator, Principal
from gateway.broker.service import Broker
from gateway.fairness import FairScheduler
from gateway.http_errors import Handler
from gateway.keys import METRICS
from gateway.quotas import QuotaBook, QuotaExceededError, StorageQuotaExceededError
from gateway.scopes import route_action
from partitions.batch import NewRecord
from partitions.catalog import Catalog, TopicRecord
from partitions.errors import TopicNotFoundError


class TenantAnnouncer(Protocol):
    """Tells the server's other worker processes that a tenant's keys or quotas changed."""

    async def __call__(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Tenancy:
    """What the admin routes and the middleware work with, wired by the app factory."""

    catalog: Catalog
    broker: Broker
    authenticator: Authenticator
    quotas: QuotaBook
    announce: TenantAnnouncer | None = None

    async def tenant_changed(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None:
        """Another process must forget what it cached of the tenant (a key revoked, quotas
        changed, the tenant deleted) before the change is answered."""
        if self.announce is not None:
            await self.announce(tenant, key_id=key_id, dropped=dropped)


TENANCY = web.AppKey("tenancy", Tenancy)
SCHEDULER = web.AppKey("scheduler", FairScheduler)
# The produce tokens a request took for the records it was to append.
PRODUCE_CHARGE = web.RequestKey("produce_charge", int)

ADMIN_PREFIX = "/v1/admin"

# Routes that return records: they need a consume bucket above zero to start.
CONSUME_ROUTES = frozenset(
    {
        "/v1/topics/{topic}/partitions/{partition}/records",
        "/v1/topics/{topic}/groups/{group}/fetch",
    }
)


def _tenant_principal(request: web.Request) -> Principal | None:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None or principal.admin or principal.tenant is None:
        return None
    return principal


def tenancy_middleware(tenancy: Callable[[], Tenancy], scheduler: FairScheduler) -> Middleware:
    """``tenancy`` is looked up per request: it exists only once the broker is up."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = _tenant_principal(request)
        resource = request.match_info.route.resource
        if principal is None or principal.tenant is None or resource is None:
            return await handler(request)
        if resource.canonical.startswith(ADMIN_PREFIX):
            return await handler(request)  # refused there (403), quotas untouched
        try:
            return await _tenant_request(
                request, handler, principal.tenant, principal, resource.canonical
            )
        except (QuotaExceededError, StorageQuotaExceededError) as exc:
            request.app[METRICS].quota_refusals.labels(exc.details["quota"]).inc()
            raise

    async def _tenant_request(
        request: web.Request, handler: Handler, tenant: str, principal: Principal, route: str
    ) -> web.StreamResponse:
        action = route_action(request.method, route)
        principal.scope.check(action, request.match_info.get("topic"))
        quotas = tenancy().quotas
        await quotas.admit_request(tenant)
        # A produce's storage and bytes are checked by the handler (admit_produce), once it
        # knows which records it will append: a replay appends none and pays for none.
        if route in CONSUME_ROUTES:
            await quotas.admit_consume(tenant)
        async with scheduler.slot(tenant):
            return await handler(request)

    return middleware


def produce_cost(records: Sequence[NewRecord]) -> int:
    """Key, value and header bytes: what the produce quota counts (as reads count them)."""
    total = 0
    for record in records:
        total += len(record.value) + (len(record.key) if record.key is not None else 0)
        for name, value in record.headers:
            total += len(name.encode()) + len(value.encode())
    return total


async def admit_produce(
    request: web.Request, records: Sequence[NewRecord], indexes: Sequence[int]
) -> None:
    """Before a produce appends the records at ``indexes`` (all of them, or what an
    idempotent retry still misses; never called for a replay, which appends nothing): the
    tenant must be under its ``max_stored_bytes``, and the produce quota takes their bytes;
    otherwise refuse with 429, nothing written."""
    principal = _tenant_principal(request)
    if principal is None or principal.tenant is None:
        return
    quotas = request.app[TENANCY].quotas
    await quotas.check_storage(principal.tenant)
    cost = produce_cost(records if len(indexes) == len(records) else [records[i] for i in indexes])
    await quotas.admit_produce(principal.tenant, cost)
    request[PRODUCE_CHARGE] = cost


def settle_produce(
    request: web.Request, records: Sequence[NewRecord], appended: Sequence[int]
) -> None:
    """After a produce, whether it succeeded or not: the tokens of admitted records it did
    not append go back, and the bytes it appended count as stored until the next
    measurement."""
    principal = _tenant_principal(request)
    charge = request.get(PRODUCE_CHARGE)
    if principal is None or principal.tenant is None or not charge:
        return
    everything = len(appended) == len(records)
    stored = charge if everything else produce_cost([records[i] for i in appended])
    quotas = request.app[TENANCY].quotas
    if charge > stored:
        quotas.refund_produce(principal.tenant, charge - stored)
    quotas.note_stored(principal.tenant, stored)


def charge_consume(request: web.Request, nbytes: int) -> None:
    """Charge the bytes a read or fetch returned; a debt slows the tenant's next read."""
    principal = _tenant_principal(request)
    if principal is not None and principal.tenant is not None:
        request.app[TENANCY].quotas.charge_consume(principal.tenant, nbytes)


async def visible_topic_page(
    request: web.Request, broker: Broker, tenant: str, *, after: str | None, limit: int
) -> tuple[list[TopicRecord], bool]:
    """One page of the topics the key may see, in name order after ``after``, and whether
    another page follows.

    A key limited to some topics pages over its own names only (at most
    ``MAX_SCOPE_TOPICS`` lookups): filtering a page of all the tenant's topics would leave
    pages short or empty and, worse, start the next page after a topic the key may not see.
    """
    principal = _tenant_principal(request)
    allowed = None if principal is None else principal.scope.topics
    if allowed is None:
        # One more than asked tells whether another page exists.
        topics = await broker.list_topics(tenant, after=after, limit=limit + 1)
        return topics[:limit], len(topics) > limit
    found: list[TopicRecord] = []
    for name in sorted(n for n in allowed if after is None or n > after):
        if len(found) > limit:
            break
        with contextlib.suppress(TopicNotFoundError):
            found.append(await broker.catalog.get_topic(tenant, name))
    return found[:limit], len(found) > limit
