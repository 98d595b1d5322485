"""A TCP proxy on loopback that can lose answers: the request reaches the server, whose
answer the proxy drops with the connection, as a flaky network would."""

from __future__ import annotations

import asyncio
import contextlib


class LossyProxy:
    """Forwards every connection to ``upstream``; while ``drop_answers`` is above zero, the
    first bytes of an answer close both sides instead of reaching the client (and count one
    down). ``sent`` holds every byte clients sent, for tests that look at requests."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.drop_answers = 0
        self.dropped = 0
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        """Stop accepting, cut every open connection, and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        writers = [client_w]
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            writers.append(up_w)
            self._writers.add(up_w)

            async def to_server() -> None:
                while data := await client_r.read(1 << 16):
                    self.sent += data
                    up_w.write(data)
                    await up_w.drain()

            async def to_client() -> None:
                while data := await up_r.read(1 << 16):
                    if self.drop_answers > 0:
                        self.drop_answers -= 1
                        self.dropped += 1
                        return
                    client_w.write(data)
                    await client_w.drain()

            pumps = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except ConnectionError:
            pass  # one side went away: close the other
        finally:
            for writer in writers:
                writer.transport.abort()
                self._writers.discard(writer)
            for writer in writers:
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            self._tasks.discard(task)
