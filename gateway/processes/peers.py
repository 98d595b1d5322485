"""One worker process's line to the others: the channel server it answers on, a client per
peer, and what the peers said of themselves lately.

Workers reach each other over Unix sockets in the server's run directory: one for the
channel (``partitions/channel.py``: the partition worker interface and every shared
feature's calls) and one for forwarded HTTP requests (``forwarding.py``). Each feature's
remote half registers the operations it answers on :attr:`Peers.server` as its local
objects are built; the server starts serving once every feature has (``serve()``), so a
peer asking earlier finds the process unreachable, a retriable error, as while it restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.processes.role import WorkerRole
from partitions.channel import ChannelClient, ChannelServer, Connection, Payload
from partitions.errors import EventBusError, WorkerUnreachableError

log = logging.getLogger(__name__)

# The channel ops of the gateway's features (the partition worker's are below 32).
TOPIC_CHANGED = 32
TENANT_CHANGED = 33
QUOTA = 34
METERS = 35
AUTOSCALE = 36
METRICS_TEXT = 37
STATUS = 38
TIERING_STATUS = 39
WILL_RETRY = 40
LOAD = 41
USAGE_SETTLE = 42
USAGE_SETTLED = 43
ANSWER_CLAIM = 44
ANSWER_SETTLE = 45
KEY_USES = 46
TOKEN_LEASE = 47
TOKEN_RETURN = 48

STATUS_INTERVAL_S = 0.25
# A worker that does not answer a broadcast within this long is left to catch up by itself.
BROADCAST_TIMEOUT_S = 10.0

JsonOp = Callable[[Any], Awaitable[Any]]


def json_handler(op: JsonOp) -> Callable[[bytes, bytes, Connection], Awaitable[Payload]]:
    """A channel handler whose request and answer are small JSON values."""

    async def handler(meta: bytes, blob: bytes, conn: Connection) -> Payload:
        answer = await op(orjson.loads(meta) if meta else None)
        return orjson.dumps(answer), b""

    return handler


class Peers:
    """This worker process's channel server, and a client per other worker."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role
        self.index = role.index
        self.count = role.count
        self.server = ChannelServer(role.channel_path(role.index))
        self.clients = {
            worker: ChannelClient(role.channel_path(worker), name=f"worker {worker}")
            for worker in range(role.count)
            if worker != role.index
        }
        # What the others said of themselves lately: upload backlog, health.
        self.statuses: dict[int, dict[str, Any]] = {}

    def register_json(self, op: int, handler: JsonOp) -> None:
        self.server.register(op, json_handler(handler))

    async def ask(self, worker: int, op: int, body: Any = None) -> Any:
        meta, _ = await self.clients[worker].call(op, orjson.dumps(body))
        return orjson.loads(meta) if meta else None

    async def broadcast(self, op: int, body: Any) -> None:
        """Tell every other worker, and wait until each has taken it in (or is down)."""

        async def one(worker: int) -> None:
            try:
                async with asyncio.timeout(BROADCAST_TIMEOUT_S):
                    await self.ask(worker, op, body)
            except WorkerUnreachableError:
                pass  # down: it reads everything afresh when it starts
            except (EventBusError, TimeoutError) as exc:
                log.warning("worker %d did not take in op %d: %s", worker, op, exc)

        await asyncio.gather(*(one(w) for w in self.clients))

    async def metrics_texts(self) -> list[bytes]:
        """Every other worker's ``/metrics`` text (empty where one does not answer)."""

        async def one(worker: int) -> bytes:
            try:
                _, blob = await self.clients[worker].call(METRICS_TEXT)
            except EventBusError:
                return b""
            return bytes(blob)

        return list(await asyncio.gather(*(one(w) for w in self.clients)))

    async def watch_statuses(self) -> None:
        """Keep :attr:`statuses` fresh: what each peer says of itself (a loop)."""
        while True:
            for worker in self.clients:
                try:
                    self.statuses[worker] = await self.ask(worker, STATUS)
                except EventBusError:
                    self.statuses.pop(worker, None)
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def serve(self) -> None:
        """Answer the others (once every feature registered what it answers)."""
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()
        for client in self.clients.values():
            await client.close()
