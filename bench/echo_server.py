"""A bare aiohttp server: the ceiling for small requests in the comparison benchmark.

``python -m bench.echo_server`` listens on a free loopback port, prints
``echo listening on http://127.0.0.1:PORT`` and then serves one route: ``POST /echo`` reads
the request body and answers a tiny JSON object. It runs on the same event loop as
``eventbus serve`` (uvloop where installed) and stops on SIGTERM, so that the same load
generator measures what aiohttp itself costs per request on this machine.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

from aiohttp import web

ANSWER = b'{"ok":true}'


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    if not body:
        raise web.HTTPBadRequest(text="an empty body")
    return web.Response(body=ANSWER, content_type="application/json")


async def serve() -> int:
    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        print(f"echo listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()
    return 0


def main() -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve())
    return int(uvloop.run(serve()))


if __name__ == "__main__":
    sys.exit(main())
