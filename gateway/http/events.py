"""Server-sent events: a partition's records, a consumer group's records and a topic's changes
as ``text/event-stream`` answers (docs/api.md, "Server-sent events").

Each event is ``event: NAME``, ``id: CURSOR`` where the stream has one, ``data: JSON`` on one
line, then a blank line; a ``: keepalive`` comment goes out after :data:`KEEPALIVE_S` of
silence. Everything that can be refused is checked before the answer starts (so that it is
the usual JSON error); once it has, a stream ends with ``event: end`` and the reason: the
partition ``sealed``, the topic ``deleted``, the server's ``shutdown``, ``expired`` after
``--max-stream-ms``, or an ``error`` (with its code). A client that went away gets nothing
more. The streams themselves, positions and cursors are the broker's
(``gateway/broker/streams.py``); this module frames them and applies what a request pays:
every record sent counts as a read's do, and the tenant's consume quota is taken before each
read as it is before a fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web

from gateway.broker.streams import (
    IDLE,
    Cursor,
    GroupEvent,
    GroupStream,
    MemberEvent,
    PartitionEvent,
    PartitionFollower,
    RecordEvent,
    SealedEvent,
    Throughput,
    TopicChanged,
    TopicDeleted,
    TopicEvent,
    TopicWatch,
)
from gateway.http.bodies import EVENT_STREAM
from gateway.http.charges import admit_consume, charge_consume, meter_delivered
from gateway.http.inputs import Header
from gateway.http.keys import BROKER, CONFIG, METRICS, tenant_of
from gateway.http.params import InvalidParameterError
from gateway.http.record_json import render_record
from gateway.logs import request_id
from partitions.errors import EventBusError
from partitions.shapes import Text
from partitions.waiting import waiting

log = logging.getLogger(__name__)

LAST_EVENT_ID: Final = "Last-Event-ID"
# A comment after this long without an event keeps proxies from closing an idle stream.
KEEPALIVE_S: Final = 15.0

T = TypeVar("T")


class TooManyStreamsError(EventBusError):
    """The tenant holds as many open streams as it may."""

    code = "too_many_streams"
    status = 429
    retriable = True


class Streams:
    """The open event streams of this process: at most ``per_tenant`` each tenant, and all
    of them ended at once by :meth:`stop` (the server's shutdown)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self.stopping = asyncio.Event()
        self._open: Counter[str] = Counter()

    def open_count(self, tenant: str) -> int:
        return self._open[tenant]

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """A stream's place for as long as it is open; 429 when the tenant has none left."""
        if self._open[tenant] >= self.per_tenant:
            raise TooManyStreamsError(
                f"the tenant has {self._open[tenant]} event streams open, as many as it may; "
                "close one or retry later",
                limit=self.per_tenant,
                retry_after_ms=1000,
            )
        self._open[tenant] += 1
        try:
            yield
        finally:
            self._open[tenant] -= 1
            if not self._open[tenant]:
                del self._open[tenant]

    def stop(self) -> None:
        self.stopping.set()


STREAMS = web.AppKey("event_streams", Streams)

# The header as routes declare it (the document says it; :func:`last_event_id` reads it).
LAST_EVENT_ID_HEADER: Final = Header(
    LAST_EVENT_ID,
    Text(
        pattern=r"[0-9]{1,10}-[0-9]{1,19}(\.[0-9]{1,10}-[0-9]{1,19})*",
        max_length=64 * 1024,
        description="Resume an event stream where it was: the id of the last event seen",
    ),
)


def last_event_id(request: web.Request) -> Cursor | None:
    """The cursor a reconnecting client sent in ``Last-Event-ID``; 400 for one that is not."""
    text = request.headers.get(LAST_EVENT_ID)
    if text is None:
        return None
    try:
        return Cursor.parse(text)
    except ValueError as exc:
        raise InvalidParameterError(
            f"{LAST_EVENT_ID} is not a cursor: {exc}", parameter=LAST_EVENT_ID
        ) from None


class EventStream:
    """One ``text/event-stream`` answer, written an event at a time."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response = web.StreamResponse(
            headers={
                "Content-Type": EVENT_STREAM + "; charset=utf-8",
                "Cache-Control": "no-store",
                # Proxies that buffer answers (nginx) send events as they come.
                "X-Accel-Buffering": "no",
            }
        )
        rid = request_id.get()
        if rid is not None:
            # Set here: the front door sets it once the answer has started.
            self._response.headers["X-Request-Id"] = rid
        self.response: web.StreamResponse = self._response
        self.last_write = 0.0

    async def open(self) -> None:
        await self._response.prepare(self._request)
        self.last_write = asyncio.get_running_loop().time()

    @property
    def gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def send(self, event: str, data: Any, event_id: object = None) -> None:
        lines = [f"event: {event}"]
        if event_id is not None:
            lines.append(f"id: {event_id}")
        lines.append("data: " + orjson.dumps(data).decode())
        await self._write(("\n".join(lines) + "\n\n").encode())

    async def keepalive(self) -> None:
        await self._write(b": keepalive\n\n")

    async def _write(self, frame: bytes) -> None:
        # A slow client's write gives the request's place in the fair scheduler back.
        async with waiting():
            await self._response.write(frame)
        self.last_write = asyncio.get_running_loop().time()


async def pump(
    request: web.Request,
    stream: EventStream,
    source: AsyncIterator[T],
    send: Callable[[T], Awaitable[None]],
    *,
    finished: str,
    delivers: bool = False,
) -> bool:
    """Send what ``source`` yields until it ends (then ``end`` with ``finished``), the
    deadline passes, the server stops, or the client goes. Answers whether the stream
    ended with its ``end`` event (False: the client went away, or an error cut it)."""
    loop = asyncio.get_running_loop()
    streams = request.app[STREAMS]
    deadline = loop.time() + request.app[CONFIG].max_stream_ms / 1000
    ending: dict[str, Any] | None = None
    try:
        while ending is None:
            if streams.stopping.is_set():
                ending = {"reason": "shutdown"}
            elif loop.time() >= deadline:
                ending = {"reason": "expired"}
            elif stream.gone:
                return False
            else:
                if delivers:
                    await admit_consume(request)
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    ending = {"reason": finished}
                    break
                except EventBusError as exc:
                    log.info("event stream ended by %s: %s", exc.code, exc)
                    ending = {"reason": "error", "code": exc.code, "message": str(exc)}
                    break
                if item is not IDLE:
                    await send(item)
                elif loop.time() - stream.last_write >= KEEPALIVE_S:
                    await stream.keepalive()
        await stream.send("end", ending)
    except ConnectionError:
        return False  # the client went away while an event was being written
    finally:
        await _close(source)
    return ending.get("reason") != "error"


async def _close(source: AsyncIterator[Any]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _count_record(request: web.Request, event: RecordEvent) -> None:
    """A record sent: charged and metered as a read's."""
    payload = event.record.payload_bytes
    charge_consume(request, payload)
    meter_delivered(request, 1, payload)
    request.app[METRICS].count_read(1)


async def _send_record(request: web.Request, stream: EventStream, event: RecordEvent) -> None:
    _count_record(request, event)
    await stream.send("record", render_record(event.record, event.partition), event.cursor)


async def partition_stream(
    request: web.Request,
    partition: int,
    *,
    offset: int | None,
    timestamp_ms: int | None,
    follow_children: bool,
) -> web.StreamResponse:
    """``GET .../partitions/{partition}/records`` as an event stream."""
    tenant = tenant_of(request)
    resume = last_event_id(request)
    follower = PartitionFollower(
        request.app[BROKER],
        tenant,
        request.match_info["topic"],
        follow_children=follow_children,
    )
    await follower.start(
        partition=partition, offset=offset, timestamp_ms=timestamp_ms, resume=resume
    )
    stream = EventStream(request)

    async def send(event: PartitionEvent) -> None:
        if isinstance(event, RecordEvent):
            await _send_record(request, stream, event)
        elif isinstance(event, SealedEvent):
            data = {
                "partition": event.partition,
                "end_offset": event.end_offset,
                "children": list(event.children),
            }
            await stream.send("sealed", data, event.cursor)

    with request.app[STREAMS].hold(tenant):
        await stream.open()
        await pump(request, stream, follower.events(), send, finished="sealed", delivers=True)
    return stream.response


async def group_stream(
    request: web.Request,
    group: str,
    *,
    auto_commit: bool,
    auto_offset_reset: str,
    session_timeout_ms: int | None,
) -> web.StreamResponse:
    """``GET .../groups/{group}/records``: one member of the group, as an event stream."""
    tenant = tenant_of(request)
    seen = last_event_id(request)
    member = GroupStream(
        request.app[BROKER],
        tenant,
        request.match_info["topic"],
        group,
        auto_commit=auto_commit,
        auto_offset_reset=auto_offset_reset,
        session_timeout_ms=session_timeout_ms,
    )
    stream = EventStream(request)

    async def send(event: GroupEvent) -> None:
        if isinstance(event, RecordEvent):
            await _send_record(request, stream, event)
        if isinstance(event, MemberEvent):
            data = {
                "member_id": event.member_id,
                "generation": event.generation,
                "assignment": list(event.assignment),
            }
            await stream.send("member", data)

    with request.app[STREAMS].hold(tenant):
        await member.start(seen)
        await stream.open()
        clean = False
        try:
            clean = await pump(request, stream, member.events(), send, finished="", delivers=True)
        finally:
            # A stream that ended cleanly sent everything it fetched: that is committed (in
            # auto mode). One whose client went away leaves its last batch uncommitted.
            await member.close(commit=clean)
    return stream.response


async def topic_stream(
    request: web.Request, interval_ms: int, describe: Callable[[Any], Awaitable[Any]]
) -> web.StreamResponse:
    """``GET /v1/topics/{topic}/events``: the topic (``describe`` renders it as GET
    /v1/topics/{topic} does) first and after every change, and its throughput."""
    tenant = tenant_of(request)
    watch = TopicWatch(
        request.app[BROKER], tenant, request.match_info["topic"], interval_s=interval_ms / 1000
    )
    await watch.start()
    stream = EventStream(request)

    async def send(event: TopicEvent) -> None:
        if isinstance(event, TopicChanged):
            await stream.send("topic", await describe(event.view), event.change)
        elif isinstance(event, Throughput):
            data = {
                "ts_ms": event.ts_ms,
                "partitions": [
                    {
                        "partition": rate.partition,
                        "bytes_per_s": rate.bytes_per_s,
                        "records_per_s": rate.records_per_s,
                        "end_offset": rate.end_offset,
                    }
                    for rate in event.partitions
                ],
            }
            await stream.send("throughput", data)
        elif isinstance(event, TopicDeleted):
            await stream.send("deleted", {"topic": request.match_info["topic"]})

    with request.app[STREAMS].hold(tenant):
        await stream.open()
        await pump(request, stream, watch.events(), send, finished="deleted")
    return stream.response
