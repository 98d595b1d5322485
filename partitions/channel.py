"""A framed request/answer channel between the processes of one server, over Unix sockets,
and between nodes, over TCP.

One :class:`ChannelServer` per process listens on a socket path (or a TCP address); a
:class:`ChannelClient` per peer connects to it on first use and multiplexes every call over
that one connection, each call waiting for the answer with its request id. Payloads are
bytes: an operation's small fixed fields (``meta``, packed with :mod:`struct` by the
caller) and an opaque blob (record batches exactly as they are stored), so that no record
is ever turned into JSON or copied into another shape on its way.

Frame layout, every integer big-endian (``FRAME``)::

    length      u32  bytes after this field
    request_id  u32  chosen by the caller, unique among its calls in flight
    kind        u8   1 request, 2 answer, 3 error answer, 4 cancel
    op          u8   the operation (a request's; echoed in its answer)
    meta_length u32  bytes of ``meta``; the blob is the rest of the frame
    meta        bytes
    blob        bytes

A *cancel* frame says the caller no longer waits for that request (a long-poll it gave up
on): the server cancels the handler and sends nothing more for it. An *error answer*'s meta
is a small JSON object ``{"code", "message", "details", "status", "retriable"}``, raised on
the caller's side as the :class:`~partitions.errors.EventBusError` with that code.

Failures of the channel itself are errors of the root too: a peer that cannot be reached
raises :class:`~partitions.errors.WorkerUnreachableError` (nothing was sent), and a
connection lost while a call waited raises :class:`~partitions.errors.WorkerLostError`
(the request may or may not have been carried out). Both are retriable 503s.

Over TCP, each connection first runs the handshake of ``partitions/channel_auth.py``: both
ends prove that they share the nodes' secret before the first frame, and a peer that cannot
is refused. A Unix socket needs none (its file is for this server's own user only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson

from partitions.batch import BatchBytes
from partitions.channel_auth import (
    HANDSHAKE_TIMEOUT_S,
    PeerAuth,
    ServerHandshake,
    TcpAddress,
    connect,
)
from partitions.errors import (
    EventBusError,
    WorkerLostError,
    WorkerUnreachableError,
)

log = logging.getLogger(__name__)

FRAME = struct.Struct(">IIBBI")
_LENGTH = struct.Struct(">I")
# FRAME's fields after ``length`` (what ``length`` counts besides meta and blob).
_AFTER_LENGTH = FRAME.size - _LENGTH.size
REQUEST, ANSWER, ERROR, CANCEL = 1, 2, 3, 4
# Largest frame accepted: a read answer is at most 16 MiB of batches; this leaves room and
# stops a corrupt length from allocating gigabytes.
MAX_FRAME = 256 * 1024 * 1024
_IDS = 1 << 32

# meta and blob of a request or answer as it is sent (the blob maybe in parts or views, so
# stored batches go out without a copy); a received pair is plain bytes (``Received``).
Blob = BatchBytes | Sequence[BatchBytes]
Payload = tuple[bytes, Blob]
Received = tuple[bytes, bytes]
Handler = Callable[[bytes, bytes, "Connection"], Awaitable[Payload]]
# Where a channel listens: a Unix socket's path, or a TCP address (then with a PeerAuth).
Where = Path | TcpAddress


def _checked(where: Where, auth: PeerAuth | None) -> Where:
    if isinstance(where, TcpAddress):
        _required(auth)
    return where


def _required(auth: PeerAuth | None) -> PeerAuth:
    if auth is None:
        raise ValueError("a channel over TCP needs the nodes' shared secret (a PeerAuth)")
    return auth


class ChannelProtocolError(Exception):
    """The byte stream does not follow the frame layout (a bug, or not our peer)."""


def _error_classes() -> dict[str, type[EventBusError]]:
    """Every error class imported so far, by code (the first of a code wins)."""
    found: dict[str, type[EventBusError]] = {}
    stack: list[type[EventBusError]] = [EventBusError]
    while stack:
        cls = stack.pop(0)
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found


_remote_classes: dict[tuple[str, int, bool], type[EventBusError]] = {}


def error_from(body: Mapping[str, Any]) -> EventBusError:
    """The error an error answer describes, as the class of its code where this process
    knows it, else as an error with the same code, status and retriable flag."""
    code = str(body.get("code", "internal_error"))
    message = str(body.get("message", "the peer failed"))
    details = body.get("details") or {}
    cls = _error_classes().get(code)
    if cls is None:
        shape = (code, int(body.get("status", 500)), bool(body.get("retriable", False)))
        cls = _remote_classes.get(shape)
        if cls is None:
            cls = type(
                "RemoteError",
                (EventBusError,),
                {"code": shape[0], "status": shape[1], "retriable": shape[2]},
            )
            _remote_classes[shape] = cls
    return cls(message, **details)


def error_body(exc: BaseException) -> bytes:
    if isinstance(exc, EventBusError):
        body = {
            "code": exc.code,
            "message": exc.message,
            "details": exc.details,
            "status": exc.status,
            "retriable": exc.retriable,
        }
    else:
        body = {"code": "internal_error", "message": "the peer failed", "status": 500}
    return orjson.dumps(body, default=str)


class Connection(asyncio.Protocol):
    """One end of a channel connection: parses frames and hands them to ``on_frame``."""

    def __init__(self, on_frame: Callable[[Connection, int, int, int, bytes, bytes], None]) -> None:
        self._on_frame = on_frame
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Whatever the owner of the connection wants released when it closes.
        self.on_close: list[Callable[[], None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport (uvloop's do not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        for release in self.on_close:
            try:
                release()
            except Exception:
                log.exception("releasing what a closed channel connection held failed")
        self.on_close.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            consumed = self._frames(buffer)
        except ChannelProtocolError:
            log.exception("closing a channel connection")
            self.abort()
            buffer.clear()
            return
        if consumed:
            del buffer[:consumed]

    def _frames(self, buffer: bytearray) -> int:
        """Hand every whole frame in ``buffer`` on; answers the bytes they took."""
        pos = 0
        size = len(buffer)
        while size - pos >= FRAME.size:
            length, request_id, kind, op, meta_length = FRAME.unpack_from(buffer, pos)
            if length > MAX_FRAME or meta_length > length - _AFTER_LENGTH:
                raise ChannelProtocolError(f"a frame of {length} bytes is not valid")
            end = pos + _LENGTH.size + length
            if end > size:
                break
            meta_start = pos + FRAME.size
            blob_start = meta_start + meta_length
            # Through a view: slicing the bytearray itself would copy each part twice.
            view = memoryview(buffer)
            meta = bytes(view[meta_start:blob_start])
            blob = bytes(view[blob_start:end])
            view.release()  # the buffer is resized after the loop
            pos = end
            self._on_frame(self, request_id, kind, op, meta, blob)
        return pos

    def send(
        self,
        request_id: int,
        kind: int,
        op: int,
        meta: bytes,
        blob: Blob,
    ) -> bool:
        """Write one frame; answers False when the connection is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        parts = [blob] if isinstance(blob, (bytes, bytearray, memoryview)) else list(blob)
        blob_length = sum(len(part) for part in parts)
        length = _AFTER_LENGTH + len(meta) + blob_length
        header = FRAME.pack(length, request_id, kind, op, len(meta))
        transport.writelines([header, meta, *parts])
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _unknown_op(meta: bytes, blob: bytes, conn: Connection) -> Payload:
    raise EventBusError("no handler for this channel op (peers of different builds?)")


class ChannelServer:
    """Answers requests on a Unix socket, or on a TCP address to authenticated peers only,
    with the handler registered for each op.

    Each request runs as its own task, so a long-poll never holds up the calls behind it.
    """

    def __init__(
        self,
        where: Where,
        handlers: Mapping[int, Handler] | None = None,
        *,
        auth: PeerAuth | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.where = _checked(where, auth)
        # The address it listens on once started (the port chosen, where 0 was asked).
        self.address: TcpAddress | None = None
        self.handlers: dict[int, Handler] = dict(handlers or {})
        self._auth = auth
        self._handshake_timeout_s = handshake_timeout_s
        self._server: asyncio.Server | None = None
        self._handshakes: set[ServerHandshake] = set()
        self._connections: set[Connection] = set()
        self._tasks: dict[tuple[Connection, int], asyncio.Task[None]] = {}

    @property
    def calls_in_flight(self) -> int:
        """Requests being handled now (a cancelled one leaves at once)."""
        return len(self._tasks)

    def register(self, op: int, handler: Handler) -> None:
        if op in self.handlers:
            raise ValueError(f"op {op} already has a handler")
        self.handlers[op] = handler

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        where = self.where
        if isinstance(where, TcpAddress):
            auth = _required(self._auth)
            self._server = await loop.create_server(
                lambda: ServerHandshake(
                    auth, self._connection, self._handshakes, self._handshake_timeout_s
                ),
                where.host,
                where.port,
            )
            host, port = self._server.sockets[0].getsockname()[:2]
            self.address = TcpAddress(host, port)
            return
        with contextlib.suppress(FileNotFoundError):
            where.unlink()  # left by a process that died
        self._server = await loop.create_unix_server(self._connection, str(where))
        where.chmod(0o600)

    def _connection(self) -> Connection:
        conn = Connection(self._on_frame)
        self._connections.add(conn)
        conn.on_close.append(lambda: self._dropped(conn))
        return conn

    def _dropped(self, conn: Connection) -> None:
        self._connections.discard(conn)
        for (owner, request_id), task in list(self._tasks.items()):
            if owner is conn:
                task.cancel()
                self._tasks.pop((owner, request_id), None)

    def _on_frame(
        self, conn: Connection, request_id: int, kind: int, op: int, meta: bytes, blob: bytes
    ) -> None:
        if kind == CANCEL:
            task = self._tasks.pop((conn, request_id), None)
            if task is not None:
                task.cancel()
            return
        if kind != REQUEST:
            raise ChannelProtocolError(f"a server got a frame of kind {kind}")
        task = asyncio.get_running_loop().create_task(self._serve(conn, request_id, op, meta, blob))
        self._tasks[(conn, request_id)] = task

    async def _serve(
        self, conn: Connection, request_id: int, op: int, meta: bytes, blob: bytes
    ) -> None:
        try:
            handler = self.handlers.get(op, _unknown_op)
            answer_meta, answer_blob = await handler(meta, blob, conn)
        except asyncio.CancelledError:
            return  # the caller gave up, or the connection closed: nothing to send
        except EventBusError as exc:
            conn.send(request_id, ERROR, op, error_body(exc), b"")
        except Exception as exc:
            log.exception("channel op %d failed", op)
            conn.send(request_id, ERROR, op, error_body(exc), b"")
        else:
            conn.send(request_id, ANSWER, op, answer_meta, answer_blob)
        finally:
            self._tasks.pop((conn, request_id), None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for handshake in list(self._handshakes):
            handshake.abort()
        for conn in list(self._connections):
            conn.abort()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if isinstance(self.where, Path):
            with contextlib.suppress(FileNotFoundError):
                self.where.unlink()


class ChannelClient:
    """Calls to one peer's :class:`ChannelServer`, over one connection made on first use
    and made again after it is lost."""

    def __init__(
        self,
        where: Where,
        *,
        name: str = "",
        connect_timeout_s: float = 2.0,
        auth: PeerAuth | None = None,
    ) -> None:
        self.where = _checked(where, auth)
        self.name = name or str(where)
        self.connect_timeout_s = connect_timeout_s
        self._auth = auth
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self._pending: dict[int, asyncio.Future[Received]] = {}
        self._next_id = 0
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.transport is not None

    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            return conn
        if self._closed:
            raise WorkerUnreachableError(f"the channel to {self.name} is closed", worker=self.name)
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    protocol = await self._connect()
            except (OSError, TimeoutError) as exc:
                raise WorkerUnreachableError(
                    f"worker {self.name} cannot be reached ({type(exc).__name__}); retry",
                    worker=self.name,
                ) from None
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: the callers get it themselves
            self._connecting = None
            raise
        protocol.on_close.append(lambda: self._lost(protocol))
        self._conn = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        return protocol

    async def _connect(self) -> Connection:
        """A new connection to the peer (authenticated both ways over TCP)."""
        where = self.where
        if isinstance(where, TcpAddress):
            auth = _required(self._auth)
            return await connect(where, auth, lambda: Connection(self._on_frame), self.name)
        _, protocol = await asyncio.get_running_loop().create_unix_connection(
            lambda: Connection(self._on_frame), str(where)
        )
        return protocol

    def _lost(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    WorkerLostError(
                        f"worker {self.name} went away before it answered; retry",
                        worker=self.name,
                    )
                )

    def _on_frame(
        self, conn: Connection, request_id: int, kind: int, op: int, meta: bytes, blob: bytes
    ) -> None:
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return  # an answer to a call that was cancelled
        if kind == ANSWER:
            future.set_result((meta, blob))
        elif kind == ERROR:
            future.set_exception(error_from(orjson.loads(meta)))
        else:
            raise ChannelProtocolError(f"a client got a frame of kind {kind}")

    async def call(self, op: int, meta: bytes = b"", blob: Blob = b"") -> Received:
        """Send one request and wait for its answer (meta, blob)."""
        conn = await self._connection()
        self._next_id = (self._next_id + 1) % _IDS
        request_id = self._next_id
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if not conn.send(request_id, REQUEST, op, meta, blob):
            self._pending.pop(request_id, None)
            raise WorkerUnreachableError(
                f"worker {self.name} cannot be reached (connection closing); retry",
                worker=self.name,
            )
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(request_id, None) is not None:
                conn.send(request_id, CANCEL, op, b"", b"")
            raise

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.closed
