"""Running the server: bind, say where, serve until SIGTERM or SIGINT, stop cleanly; as one
process, or as one of the worker processes a supervisor runs (``gateway/supervisor.py``)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway import memory
from gateway.app import create_app
from gateway.config import ServerConfig
from gateway.supervisor import (
    READY,
    WORKER_CONTROL,
    WorkerControl,
    die_with_parent,
    listening_socket,
    worker_lock,
)
from gateway.workers import WorkerRole

# How long in-flight requests get to finish at shutdown.
SHUTDOWN_GRACE_S = 30.0


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _runner(app: web.Application) -> web.AppRunner:
    # No aiohttp access log: the request log (gateway/app.py) says the same, with more.
    return web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None
    )


async def serve(config: ServerConfig) -> int:
    memory.limit_arenas()  # before the app starts its threads
    app = create_app(config)
    runner = _runner(app)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls_context(config))
        await site.start()
        memory.freeze_startup()
        port = runner.addresses[0][1] if runner.addresses else config.port
        print(f"eventbus listening on {config.scheme}://{config.host}:{port}", flush=True)
        await stop.wait()
    finally:
        # Stop accepting, let in-flight requests finish, then close every resource (all
        # appends are durable before the logs close).
        await runner.cleanup()
    return 0


async def serve_worker(config: ServerConfig, role: WorkerRole) -> int:
    """One worker process of ``eventbus serve --workers N`` (started by the supervisor)."""
    die_with_parent()
    memory.limit_arenas()  # before the worker starts its threads
    control = WorkerControl(role)
    control.start()
    app = create_app(config, workers=role)
    app[WORKER_CONTROL] = control
    runner = _runner(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with worker_lock(config.data_dir, role.index):
        try:
            await runner.setup()
            sock = listening_socket(config.host, config.port if role.port is None else role.port)
            # The other workers' forwarded requests come over this socket.
            await web.UnixSite(runner, str(role.http_path(role.index))).start()
            await web.SockSite(runner, sock, ssl_context=tls_context(config)).start()
            memory.freeze_startup()
            control.say(READY)
            await stop.wait()
        finally:
            await runner.cleanup()
            await control.close()
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))  # pragma: no cover - where uvloop is installed


def run(config: ServerConfig) -> int:
    return _run(serve(config))


def run_worker(config: ServerConfig, role: WorkerRole) -> int:
    return _run(serve_worker(config, role))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(ServerConfig()))
