"""The two middlewares of the HTTP front door, outermost first: the request's id, its error
answer, log line and metrics (:func:`front_middleware`); and the tenant gate
(:func:`tenant_gate`), which in one pass authenticates the key, forwards a request
whose state has its home in another process, counts the request for the tenant's bill,
checks the key's scope and the tenant's quotas, and waits for the tenant's turn in the
fair scheduler. What each route needs is read off the route table
(``gateway/http/routing.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.http.charges import DELIVERED
from gateway.http.errors import error_answer
from gateway.http.keys import ADMIN_ON_TENANT_ROUTE, METRICS, PRINCIPAL
from gateway.http.routing import Access, Handler, Home, Route, RouteIndex, route_of
from gateway.logs import request_id
from gateway.tenancy.auth import Authenticator, ForbiddenError, Principal, UnauthorizedError
from gateway.tenancy.fairness import FairScheduler
from gateway.tenancy.metering import Meter
from gateway.tenancy.quotas import QuotaBook, QuotaExceededError, StorageQuotaExceededError
from gateway.tenancy.scopes import Action
from partitions.errors import EventBusError

log = logging.getLogger("eventbus.http")

# A route that names no action needs the most a key may do.
_MANAGE = Action.MANAGE

# Metric labels take only these methods, so that clients cannot add series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Set on a request one worker process forwards to another (see came_from_peer).
FORWARDED_HEADER = "Eventbus-Forwarded"
# A request whose client went away before the answer (nginx's name for it).
CLIENT_CLOSED = 499


def came_from_peer(request: web.Request) -> bool:
    """Whether the request was forwarded by another worker process (it came over the
    internal Unix socket, which only the server's own processes can open)."""
    if FORWARDED_HEADER not in request.headers or request.transport is None:
        return False
    return isinstance(request.transport.get_extra_info("sockname"), str)


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = uuid.uuid4().hex[:16]


# Request ids made here: a random prefix per process (made again in a forked child) and a
# counter, unique without a random draw per request.
_id_prefix = ""
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)
_request_numbers = itertools.count()


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around everything else: the request's id, every failure turned into the JSON error
    body (``errors.py``), and the structured request log and metrics."""
    rid = request.headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
        rid = f"{_id_prefix}{next(_request_numbers):016x}"
    token = request_id.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets its JSON answer
            response = error_answer(request, exc)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        if not came_from_peer(request):  # counted once, where it was accepted
            request.app[METRICS].observe_request(method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": None if principal is None else principal.tenant,
                },
            )
        request_id.reset(token)


class Forwarder(Protocol):
    """Serves a request in the process that is its state's home (several processes)."""

    async def forward(
        self, request: web.Request, home: Home, tenant: str
    ) -> web.StreamResponse | None:
        """The home's answer, or None when this process is the home."""
        ...


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def billable(route: Route | None, status: int, delivered: int) -> bool:
    """Whether a tenant request counts in ``requests``: everything answered below 500 but
    an empty poll (a read or fetch that delivered nothing, or one the client gave up on)."""
    if status >= 500:
        return False
    delivers = route is not None and route.delivers
    empty_poll = delivers and delivered == 0 and status in (200, CLIENT_CLOSED)
    return not empty_poll


def tenant_gate(
    routes: RouteIndex,
    *,
    authenticator: Callable[[], Authenticator],
    quotas: Callable[[], QuotaBook],
    meter: Callable[[], Meter],
    scheduler: FairScheduler,
    metrics_public: bool,
    forwarder: Callable[[], Forwarder] | None = None,
) -> Middleware:
    """The gate every request passes after its id and error handling (see the module).

    ``authenticator``, ``quotas``, ``meter`` and ``forwarder`` are looked up per request:
    they exist once the app has started."""
    public = frozenset(
        route.path
        for route in routes.values()
        if route.access is Access.PUBLIC or (metrics_public and route.access is Access.METRICS)
    )
    metrics_paths = frozenset(r.path for r in routes.values() if r.access is Access.METRICS)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            raise UnauthorizedError("send an API key as 'Authorization: Bearer <key>'")
        principal = await authenticator().principal(token)
        if principal is None:
            raise UnauthorizedError("the API key is not valid")
        request[PRINCIPAL] = principal
        if request.path in metrics_paths and not principal.admin:
            raise ForbiddenError("metrics need the admin key (or --metrics-public)")
        route = route_of(request, routes)
        access = None if route is None else route.access
        if principal.admin or principal.tenant is None:
            if access is Access.TENANT:
                raise ForbiddenError(ADMIN_ON_TENANT_ROUTE)
            return await handler(request)
        if access is Access.ADMIN:
            raise ForbiddenError("this route needs the admin key")
        if forwarder is not None and route is not None and route.home is not None:
            if not came_from_peer(request):
                answer = await forwarder().forward(request, route.home, principal.tenant)
                if answer is not None:
                    return answer
        return await _tenant_request(request, handler, principal, principal.tenant, route)

    async def _tenant_request(
        request: web.Request,
        handler: Handler,
        principal: Principal,
        tenant: str,
        route: Route | None,
    ) -> web.StreamResponse:
        """Counted for the tenant's bill however it ends, quota refusals included."""
        status = 500
        try:
            if route is None:
                response = await handler(request)  # no route: 404 or 405
            else:
                principal.scope.check(route.action or _MANAGE, request.match_info.get("topic"))
                book = quotas()
                await book.admit_request(tenant)
                # A produce's storage and bytes are checked by the handler (admit_produce),
                # once it knows which records it will append: a replay appends none and
                # pays for none.
                if route.delivers:
                    await book.admit_consume(tenant)
                async with scheduler.slot(tenant):
                    response = await handler(request)
        except (QuotaExceededError, StorageQuotaExceededError) as exc:
            request.app[METRICS].count_quota_refusal(exc.details["quota"])
            status = exc.status
            raise
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
                meter().count_request(tenant)

    return middleware
