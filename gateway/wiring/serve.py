"""Running the server: bind, say where, serve until SIGTERM or SIGINT, stop cleanly; as one
process, or as one of the worker processes a supervisor runs
(``gateway/processes/supervisor.py``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway.config import Clocks, ServerConfig
from gateway.http.keys import HEALTH
from gateway.processes import memory
from gateway.processes.role import READY, WorkerRole
from gateway.processes.worker import (
    WorkerControl,
    die_with_parent,
    drain_barrier,
    listening_socket,
    worker_lock,
)
from gateway.settings import describe
from gateway.wiring.app import create_app

log = logging.getLogger("eventbus.server")

# How long in-flight requests get to finish at shutdown.
SHUTDOWN_GRACE_S = 30.0


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def app_runner(app: web.Application) -> web.AppRunner:
    # No aiohttp access log: the request log (gateway/http/middlewares.py) says the same.
    return web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S, access_log=None
    )


def log_settings(config: ServerConfig) -> None:
    """The settings this server runs with, as ``eventbus serve --help`` names them."""
    log.info("settings", extra={"settings": describe(config)})


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve(config: ServerConfig, clocks: Clocks) -> int:
    memory.limit_arenas()  # before the app starts its threads
    log_settings(config)
    app = create_app(config, clocks=clocks)
    runner = app_runner(app)
    stop = _stop_on_signals()
    try:
        # Inside: a start that fails part way (the catalog unreachable) closes what it
        # opened before the failure is reported.
        await runner.setup()
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


async def serve_worker(config: ServerConfig, role: WorkerRole, clocks: Clocks) -> int:
    """One worker process of ``eventbus serve --workers N`` (started by the supervisor)."""
    die_with_parent()
    memory.limit_arenas()  # before the worker starts its threads
    control = WorkerControl(role)
    control.start()
    app = create_app(config, clocks=clocks, role=role, control=control)
    if control.reader is not None:
        app[HEALTH].watch(control.reader)
    # Last, so that it closes first: every worker keeps serving the others until all have
    # finished their own requests.
    app.cleanup_ctx.append(drain_barrier(control))
    runner = app_runner(app)
    stop = _stop_on_signals()
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


def run(config: ServerConfig, clocks: Clocks) -> int:
    return _run(serve(config, clocks))


def run_worker(config: ServerConfig, role: WorkerRole, clocks: Clocks) -> int:
    return _run(serve_worker(config, role, clocks))
