"""Requests whose state lives in one worker process, forwarded there.

Every worker process serves the whole API, but a consumer group's members, assignment and
positions have one owner: every group route of one group is served by the worker
``hash(tenant, topic, group) mod N``. The process that accepted such a request
authenticates it, then forwards it unchanged (its body decompressed) over the owner's
internal HTTP socket and relays the answer as it came. Quotas, fair service, metering and
everything else are the owner's to apply, once. An owner that cannot be reached (it is
restarting) answers a retriable 503, ``worker_unavailable`` (or ``worker_lost``, when it
went away with the request in flight).

(Idempotent produce's answers have one owner too, but its requests are not forwarded: the
process that accepted one writes it and asks the owner only what to write and where it
went; see ``gateway/cluster.py``.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import aiohttp
import xxhash
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from gateway import wire
from gateway.http_errors import Handler
from partitions.errors import WorkerLostError, WorkerUnreachableError

log = logging.getLogger(__name__)

FORWARDED_HEADER = "Eventbus-Forwarded"
GROUP_ROUTES = "/v1/topics/{topic}/groups/{group}"
# Headers that belong to one connection, or that forwarding changes.
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Content-Length",
        "Content-Encoding",
    )
)
_NOT_RELAYED = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Date", "Server")
)


def stable_hash(*parts: str) -> int:
    """The same in every process (unlike ``hash``)."""
    return int(xxhash.xxh3_64_intdigest("\0".join(parts).encode()))


def request_owner(request: web.Request, tenant: str, count: int) -> int | None:
    """The worker that must serve this tenant's request, or None when any may."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    route = resource.canonical
    topic = request.match_info.get("topic", "")
    if route.startswith(GROUP_ROUTES):
        group = request.match_info.get("group", "")
        return stable_hash(tenant, topic, "group", group) % count
    return None


def came_from_peer(request: web.Request) -> bool:
    """Whether the request was forwarded by another worker process (it came over the
    internal Unix socket, which only the server's own processes can open)."""
    if FORWARDED_HEADER not in request.headers or request.transport is None:
        return False
    return isinstance(request.transport.get_extra_info("sockname"), str)


class Forwarder(Protocol):
    index: int
    count: int

    def tenant_of(self, request: web.Request) -> str | None: ...

    async def forward(self, owner: int, request: web.Request) -> web.StreamResponse: ...


def forwarding_middleware(forwarder: Callable[[], Forwarder]) -> Middleware:
    """Serve here, or forward to the owner; placed after authentication, before tenancy."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if came_from_peer(request):
            return await handler(request)
        cluster = forwarder()
        tenant = cluster.tenant_of(request)
        if tenant is None:
            return await handler(request)  # the admin, or public: answered here
        owner = request_owner(request, tenant, cluster.count)
        if owner is None or owner == cluster.index:
            return await handler(request)
        return await cluster.forward(owner, request)

    return middleware


class HttpForwarder:
    """One HTTP client per peer, over its internal Unix socket."""

    def __init__(self, sockets: dict[int, str]) -> None:
        self._sessions = {
            worker: aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
                auto_decompress=False,
            )
            for worker, path in sockets.items()
        }

    async def forward(self, owner: int, request: web.Request) -> web.Response:
        body = await wire.read_body(request) if request.can_read_body else b""
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        }
        headers[FORWARDED_HEADER] = "1"
        url = URL("http://worker" + request.raw_path, encoded=True)
        session = self._sessions[owner]
        try:
            async with session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as answer:
                payload = await answer.read()
                relayed = [
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in _NOT_RELAYED
                ]
                status = answer.status
        except aiohttp.ClientConnectorError:
            raise WorkerUnreachableError(
                f"worker {owner} cannot be reached; retry", worker=owner
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise WorkerLostError(
                f"worker {owner} went away before it answered ({type(exc).__name__}); retry",
                worker=owner,
            ) from None
        response = web.Response(status=status, body=payload)
        for name, value in relayed:
            response.headers.add(name, value)
        return response

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
