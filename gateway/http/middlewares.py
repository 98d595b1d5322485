"""The HTTP front door: one middleware (:func:`front_door`) that every request passes, in
one pass. It gives the request its id, authenticates the key, forwards a request whose state
has its home in another process, counts the request for the tenant's bill, checks the key's
scope and the tenant's quotas, waits for the tenant's turn in the fair scheduler, turns
every failure into the JSON error answer, and writes the request's log line and metrics.
What each route needs is read off the route table (``gateway/http/routing.py``).

It is on every request's path, so it is one coroutine where it can be: the key's
principal, the quotas and the fair turn are each taken without a coroutine of their own
when they need no wait (a key read within a second, quotas fresh and kept here, a free
slot), and metrics are plain counts that a scrape reads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.http.charges import DELIVERED
from gateway.http.errors import error_answer
from gateway.http.keys import ADMIN_ON_TENANT_ROUTE, PRINCIPAL
from gateway.http.metrics import Metrics
from gateway.http.routing import Access, Handler, Home, Route, RouteIndex
from gateway.logs import request_id
from gateway.tenancy.auth import Authenticator, ForbiddenError, Principal, UnauthorizedError
from gateway.tenancy.fairness import FairScheduler
from gateway.tenancy.metering import Meter
from gateway.tenancy.quotas import QuotaBook, QuotaExceededError, StorageQuotaExceededError
from gateway.tenancy.scopes import Action
from partitions.errors import EventBusError

log = logging.getLogger("eventbus.http")

T = TypeVar("T")

# A route that names no action needs the most a key may do.
_MANAGE = Action.MANAGE

# Refusals of a tenant quota, counted in the metrics by quota.
_QUOTA_REFUSALS = (QuotaExceededError, StorageQuotaExceededError)
# Metric labels take only these methods, so that clients cannot add series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Set on a request one worker process forwards to another (see came_from_peer).
FORWARDED_HEADER = "Eventbus-Forwarded"
# A placeholder of a route's path, as ``{topic}``.
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
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
    _id_prefix = uuid.uuid4().int >> 64 << 64


# Request ids made here: 32 hex digits, a random prefix per process (made again in a forked
# child) in the high half and a counter in the low half, unique without a random draw per
# request.
_id_prefix = 0
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)
_request_numbers = itertools.count()


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


def billable(route: Route | None, status: int, request: web.Request) -> bool:
    """Whether a tenant request counts in ``requests``: everything answered below 500 but
    an empty poll (a read or fetch that delivered nothing, or one the client gave up on)."""
    if status >= 500:
        return False
    if route is None or not route.delivers:
        return True
    return request.get(DELIVERED, 0) > 0 or status not in (200, CLIENT_CLOSED)


def front_door(
    routes: RouteIndex,
    *,
    metrics: Metrics,
    authenticator: Callable[[], Authenticator],
    quotas: Callable[[], QuotaBook],
    meter: Callable[[], Meter],
    scheduler: FairScheduler,
    metrics_public: bool,
    forwarder: Callable[[], Forwarder] | None = None,
) -> Middleware:
    """The one middleware every request passes (see the module).

    ``authenticator``, ``quotas``, ``meter`` and ``forwarder`` are looked up at the first
    request that needs them: they exist once the app has started, and are never replaced."""
    authenticator, quotas, meter = _once(authenticator), _once(quotas), _once(meter)
    forwarder = None if forwarder is None else _once(forwarder)
    public = frozenset(
        route.path
        for route in routes.values()
        if route.access is Access.PUBLIC or (metrics_public and route.access is Access.METRICS)
    )
    metrics_paths = frozenset(r.path for r in routes.values() if r.access is Access.METRICS)
    # The public routes with placeholders (the console's files), to tell a request that
    # matched no route (a method they do not have: 405) that it needs no key either.
    public_templates = [
        re.compile("[^/]+".join(re.escape(part) for part in _PLACEHOLDER.split(path)))
        for path in public
        if _PLACEHOLDER.search(path)
    ]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
            rid = "%032x" % (_id_prefix + next(_request_numbers))
        token = request_id.set(rid)
        started = time.perf_counter()
        resource = request.match_info.route.resource
        label = "unmatched" if resource is None else resource.canonical
        route = routes.get((request.method, label))
        principal: Principal | None = None
        # Set once the request counts for a tenant's bill, however it ends; ``billed`` is
        # the status the bill sees (499: the client went away; 500: an unknown failure).
        tenant: str | None = None
        billed = status = 500
        try:
            try:
                # Public by its path, by the route it matched (a console file), or, for a
                # method a public route does not have, by the path of that route.
                if (
                    request.path in public
                    or label in public
                    or (
                        resource is None
                        and any(t.fullmatch(request.path) for t in public_templates)
                    )
                ):
                    response = await handler(request)
                else:
                    principal = _known_caller(request) or await _read_caller(request)
                    _admit_caller(request, principal, route)
                    if principal.admin or principal.tenant is None:
                        response = await handler(request)
                    elif route is None:
                        tenant = principal.tenant
                        response = await handler(request)  # no route: 404 or 405
                    elif (
                        forwarder is not None
                        and route.home is not None
                        and (forwarded := await _forward(request, route.home, principal.tenant))
                    ):
                        response = forwarded  # served, and counted, by the home
                    else:
                        tenant = principal.tenant
                        principal.scope.check(
                            route.action or _MANAGE, request.match_info.get("topic")
                        )
                        book = quotas()
                        if not book.admit_request_now(tenant):
                            await book.admit_request(tenant)
                        # A produce's storage and bytes are checked by its handler
                        # (admit_produce) once it knows which records it appends: a replay
                        # appends none and pays for none.
                        if route.delivers and not book.admit_consume_now(tenant):
                            await book.admit_consume(tenant)
                        turn = scheduler.turn_now(tenant) or await scheduler.turn(tenant)
                        try:
                            response = await handler(request)
                        finally:
                            turn.end()
            except asyncio.CancelledError:
                billed = CLIENT_CLOSED
                raise
            except Exception as exc:  # noqa: BLE001 - every failure gets its JSON answer
                if isinstance(exc, EventBusError | web.HTTPException):
                    billed = exc.status
                    if tenant is not None and isinstance(exc, _QUOTA_REFUSALS):
                        metrics.count_quota_refusal(exc.details["quota"])
                response = error_answer(request, exc)
                status = response.status
            else:
                billed = status = response.status
            response.headers["X-Request-Id"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - started
            if tenant is not None and billable(route, billed, request):
                meter().count_request(tenant)
            if not came_from_peer(request):  # counted once, where it was accepted
                method = request.method if request.method in _METHODS else "other"
                metrics.observe_request(method, label, status, elapsed)
            if log.isEnabledFor(logging.INFO):
                _log_request(request, label, status, elapsed, principal)
            request_id.reset(token)

    def _known_caller(request: web.Request) -> Principal | None:
        """The caller, when its key needs no catalog read (None: :func:`_read_caller`);
        401 without a key."""
        token = bearer_token(request)
        if token is None:
            raise UnauthorizedError("send an API key as 'Authorization: Bearer <key>'")
        return authenticator().cached(token)

    async def _read_caller(request: web.Request) -> Principal:
        """The caller, its key read from the catalog; 401 for a key that is not valid."""
        principal = await authenticator().principal(bearer_token(request) or "")
        if principal is None:
            raise UnauthorizedError("the API key is not valid")
        return principal

    def _admit_caller(request: web.Request, principal: Principal, route: Route | None) -> None:
        """403 for a key on a route it may not call; else the request is the caller's."""
        request[PRINCIPAL] = principal
        if not principal.admin and request.path in metrics_paths:
            raise ForbiddenError("metrics need the admin key (or --metrics-public)")
        if principal.admin or principal.tenant is None:
            if route is not None and route.access is Access.TENANT:
                raise ForbiddenError(ADMIN_ON_TENANT_ROUTE)
        elif route is not None and route.access is Access.ADMIN:
            raise ForbiddenError("this route needs the admin key")

    async def _forward(request: web.Request, home: Home, tenant: str) -> web.StreamResponse | None:
        """The home's answer to a request whose state lives in another process."""
        if forwarder is None or came_from_peer(request):
            return None
        return await forwarder().forward(request, home, tenant)

    return middleware


def _once(get: Callable[[], T]) -> Callable[[], T]:
    """``get``, called the first time only."""
    found: list[T] = []

    def once() -> T:
        if not found:
            found.append(get())
        return found[0]

    return once


def _log_request(
    request: web.Request, route: str, status: int, elapsed: float, principal: Principal | None
) -> None:
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
