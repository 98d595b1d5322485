"""S3 for tests: moto's server over HTTP on loopback, and a proxy in front of it that can
answer with chosen errors (throttling, server errors) or stall every request."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aioboto3
import aiohttp
from aiohttp import web
from moto.server import ThreadedMotoServer

# Fake credentials: moto accepts anything, and nothing must ever reach a real account.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's server on a free loopback port; yields its URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    previous = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def new_bucket_name() -> str:
    return f"eventbus-test-{uuid.uuid4().hex[:16]}"


async def create_bucket(endpoint: str, name: str | None = None) -> str:
    bucket = name or new_bucket_name()
    async with aioboto3.Session().client("s3", endpoint_url=endpoint) as client:
        await client.create_bucket(Bucket=bucket)
    return bucket


async def bucket_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix``, with its bytes (those deleted meanwhile left out)."""
    out: dict[str, bytes] = {}
    async with aioboto3.Session().client("s3", endpoint_url=endpoint) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                try:
                    answer = await client.get_object(Bucket=bucket, Key=item["Key"])
                except client.exceptions.NoSuchKey:
                    continue  # deleted since the listing
                async with answer["Body"] as body:
                    out[item["Key"]] = await body.read()
    return out


_HOP_BY_HOP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "keep-alive",
}


@dataclass
class S3FaultProxy:
    """An HTTP proxy on loopback in front of an S3 endpoint.

    ``fail_next`` holds (status, code) answers given, in order, instead of forwarding the
    next requests. After :meth:`freeze`, every request waits (the store stalls) until
    :meth:`thaw`; with ``hold`` set, only the requests it picks (by ``"METHOD /path?query"``)
    wait, and ``held`` is set when one does. ``stall`` picks requests that wait until
    ``released`` is set, while every other request goes through. ``requests`` lists what
    reached the proxy.
    """

    upstream: str
    fail_next: list[tuple[int, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    thawed: asyncio.Event = field(default_factory=asyncio.Event)
    hold: Callable[[str], bool] | None = None
    # When set, only the requests it picks consume ``fail_next``.
    fail_match: Callable[[str], bool] | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    stall: Callable[[str], bool] | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

    async def start(self) -> S3FaultProxy:
        self.thawed.set()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def release(self) -> None:
        """Let the stalled requests go, and stall no more."""
        self.stall = None
        self.released.set()

    async def close(self) -> None:
        self.thaw()
        self.release()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        line = f"{request.method} {request.path_qs}"
        self.requests.append(line)
        body = await request.read()
        if self.hold is not None and self.hold(line):
            self.held.set()
            self.thawed.clear()
        if self.stall is not None and self.stall(line):
            await self.released.wait()
        await self.thawed.wait()
        if self.fail_next and (self.fail_match is None or self.fail_match(line)):
            status, code = self.fail_next.pop(0)
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
            )
            return web.Response(status=status, text=xml, content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                # A stream: aiohttp warns on raw bodies over 1 MiB.
                data=io.BytesIO(body) if body else None,
            ) as answer:
                data = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=answer.status, body=data, headers=out)
        except aiohttp.ClientConnectionError:
            return web.Response(status=502, text="the proxy is closing")
