"""Requests whose state lives in one worker process, forwarded there.

Every worker process serves the whole API, but a consumer group's members, assignment and
positions have one owner: every group route of one group is served by the worker
``hash(tenant, topic, group) mod N``. The process that accepted such a request
authenticates it, then forwards it unchanged (its body decompressed) over the owner's
internal HTTP socket and relays the answer as it came (an event stream as it comes,
a chunk at a time). Quotas, fair service, metering and
everything else are the owner's to apply, once. An owner that cannot be reached (it is
restarting) answers a retriable 503, ``worker_unavailable`` (or ``worker_lost``, when it
went away with the request in flight).

(Idempotent produce's answers have one owner too, but its requests are not forwarded: the
process that accepted one writes it and asks the owner only what to write and where it
went; see ``answers.py``.) The route table (``gateway/http/routes.py``) says which routes
have a home.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.http.bodies import EVENT_STREAM, read_body
from gateway.http.middlewares import FORWARDED_HEADER
from gateway.http.routing import Home
from gateway.processes.homes import group_home
from partitions.errors import WorkerLostError, WorkerUnreachableError

log = logging.getLogger(__name__)

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
# How often a relayed event stream with nothing to send looks whether its client went away.
_CLIENT_LOOK_S = 1.0
_NOT_RELAYED = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Date", "Server")
)


class Forwarding:
    """Serves a request whose state has its home in another worker there (the front door
    of ``gateway/http/middlewares.py`` asks it for each such route)."""

    def __init__(self, index: int, count: int, http: HttpForwarder) -> None:
        self._index = index
        self._count = count
        self._http = http

    async def forward(
        self, request: web.Request, home: Home, tenant: str
    ) -> web.StreamResponse | None:
        topic = request.match_info.get("topic", "")
        group = request.match_info.get("group", "")
        owner = group_home(tenant, topic, group, self._count)
        if owner == self._index:
            return None
        return await self._http.forward(owner, request)


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

    async def forward(self, owner: int, request: web.Request) -> web.StreamResponse:
        body = await read_body(request) if request.can_read_body else b""
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
                relayed = [
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in _NOT_RELAYED
                ]
                if answer.content_type == EVENT_STREAM:
                    return await _relay_stream(request, answer, relayed)
                payload = await answer.read()
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


async def _relay_stream(
    request: web.Request, answer: aiohttp.ClientResponse, headers: list[tuple[str, str]]
) -> web.StreamResponse:
    """Relay an event stream as it comes, a chunk at a time, until the home ends it or
    either side goes away (leaving the upstream answer unread closes its connection, so
    that the home sees its client gone)."""
    response = web.StreamResponse(status=answer.status)
    for name, value in headers:
        response.headers.add(name, value)
    await response.prepare(request)
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        while True:
            try:
                chunk = await asyncio.wait_for(answer.content.readany(), _CLIENT_LOOK_S)
            except TimeoutError:
                # Nothing from the home: is the client still there? (Its going away is seen
                # only here, or at the next write.)
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if not chunk:
                break
            await response.write(chunk)
    return response
