"""What the route table says of each route (``gateway/http/routes.py`` is the table).

The router, the middlewares, the OpenAPI document and the tests all read the one table:
who may call a route, which action of a key's scope it needs, whether it returns records
(a consume bucket above zero to start; an empty poll is not billed), whether its state
has a home that the request is forwarded to when several processes serve, and the inputs
its handler reads (query parameters, body, headers), which the document describes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from gateway.http.inputs import Body, Header, QueryParams
from gateway.tenancy.scopes import Action

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access(Enum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone, no key
    METRICS = "metrics"  # the admin key, or anyone with --metrics-public
    ADMIN = "admin"  # the admin key only
    TENANT = "tenant"  # a tenant's key, within its scope


class Home(Enum):
    """State that lives in one process of several: its requests are served there."""

    GROUP = "group"  # a consumer group's members, assignment and positions


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    # The action a tenant key's scope must allow (tenant routes only).
    action: Action | None = None
    # Whether the route answers records (reads and group fetches).
    delivers: bool = False
    home: Home | None = None
    # What the handler reads besides the path: the document is written from these.
    query: QueryParams | None = None
    body: Body | None = None
    headers: tuple[Header, ...] = ()


RouteIndex = Mapping[tuple[str, str], Route]


def index(routes: Iterable[Route]) -> dict[tuple[str, str], Route]:
    """The routes by (method, path template), as the middlewares look them up."""
    return {(route.method, route.path): route for route in routes}
