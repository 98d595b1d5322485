"""Running the server: bind, say where, serve until SIGTERM or SIGINT, stop cleanly."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.config import ServerConfig

# How long in-flight requests get to finish at shutdown.
SHUTDOWN_GRACE_S = 30.0


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve(config: ServerConfig) -> int:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls_context(config))
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        print(f"eventbus listening on {config.scheme}://{config.host}:{port}", flush=True)
        await stop.wait()
    finally:
        # Stop accepting, let in-flight requests finish, then close every resource (all
        # appends are durable before the logs close).
        await runner.cleanup()
    return 0


def run(config: ServerConfig) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config))
    return int(uvloop.run(serve(config)))  # pragma: no cover - where uvloop is installed


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(ServerConfig()))
