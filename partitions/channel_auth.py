"""The channel between nodes, over TCP: each connection proves, both ways, that its two ends
share a secret before a single frame is served (``partitions/channel.py`` then runs on it
unchanged).

Over a Unix socket the file's permissions say who may connect; a TCP port says nothing, so
the two ends run a challenge-response first. Each sends a fresh random nonce, and each proves
that it knows the secret with an HMAC-SHA256 over both hellos (both nonces, the version and
both node ids) and its own role, so that a proof cannot be replayed on another connection nor
reflected back as the other side's. The server proves first: a client that cannot check the
server's proof leaves without sending its own proof or any request. The secret never
crosses the wire, but the bytes after the handshake are not encrypted: the port is for a
private network.

Handshake layout, every integer big-endian, in the order the messages go::

    client -> server   HELLO   magic b"EBCH", version u8, nonce 32 bytes, node_id_length u8
                       node_id (UTF-8, node_id_length bytes)
    server -> client   HELLO   (the server's own, same layout) and node_id
                       PROOF   mac 32 bytes = HMAC(secret, b"server" + client hello + server hello)
    client -> server   PROOF   mac 32 bytes = HMAC(secret, b"client" + client hello + server hello)
    server -> client   VERDICT u8, 1 = accepted; channel frames follow

where each *hello* is its HELLO header and node id exactly as sent. A server that does not
like what it reads (another magic or version, a wrong proof, more bytes than the step
expects, or no proof within the handshake deadline) closes the connection without a word and
logs a warning naming the peer's address. A version the server does not speak is refused the
same way, so a new version is a new number here and both sides speak it before it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar, cast

from partitions.errors import PeerAuthenticationError

log = logging.getLogger(__name__)

HELLO = struct.Struct(">4sB32sB")
PROOF = struct.Struct(">32s")
VERDICT = struct.Struct(">B")
MAGIC = b"EBCH"
VERSION = 1
ACCEPTED = 1
_NONCE_BYTES = 32
_MAX_NODE_ID = 255
# The most a peer may send before it is authenticated: its hello, the longest node id, its
# proof. Anything more is refused before it is buffered.
MAX_UNAUTHENTICATED = HELLO.size + _MAX_NODE_ID + PROOF.size
HANDSHAKE_TIMEOUT_S = 5.0
# Anyone who can connect gets a server's proof, against which to guess secrets offline: the
# secret must be random and long enough that guessing is hopeless, not a password.
MIN_SECRET_BYTES = 16

P = TypeVar("P", bound=asyncio.Protocol)


class TcpAddress(NamedTuple):
    """Where a node's channel listens (its advertised host) or is reached."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """What this node proves itself with: the secret the nodes share, and its node id (bound
    into the proofs and named in logs)."""

    secret: bytes = field(repr=False)
    node_id: str

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the nodes' shared secret needs {MIN_SECRET_BYTES} bytes or more")
        if len(self.node_id.encode()) > _MAX_NODE_ID:
            raise ValueError(f"a node id is at most {_MAX_NODE_ID} bytes of UTF-8")

    def hello(self) -> bytes:
        node_id = self.node_id.encode()
        return HELLO.pack(MAGIC, VERSION, secrets.token_bytes(_NONCE_BYTES), len(node_id)) + node_id

    def proof(self, role: bytes, client_hello: bytes, server_hello: bytes) -> bytes:
        return hmac.new(self.secret, role + client_hello + server_hello, hashlib.sha256).digest()


class _Refused(Exception):
    """Why a handshake failed (for this side's log and errors, never sent to the peer)."""


def _hello_length(buffer: bytearray) -> int | None:
    """The length of the hello at the start of ``buffer`` once its header is in (None
    before); refuses another magic or version as soon as their bytes arrive."""
    if len(buffer) >= len(MAGIC) and bytes(buffer[: len(MAGIC)]) != MAGIC:
        raise _Refused("it does not speak the channel handshake")
    if len(buffer) > len(MAGIC) and buffer[len(MAGIC)] != VERSION:
        raise _Refused(f"it speaks handshake version {buffer[len(MAGIC)]}, not {VERSION}")
    if len(buffer) < HELLO.size:
        return None
    node_id_length: int = HELLO.unpack_from(buffer)[3]
    return HELLO.size + node_id_length


def _node_id(hello: bytes) -> str:
    try:
        return hello[HELLO.size :].decode()
    except UnicodeDecodeError:
        raise _Refused("its node id is not UTF-8") from None


def _switch(transport: asyncio.Transport, protocol: asyncio.Protocol, rest: bytes) -> None:
    """Hand the authenticated connection to the channel's own protocol."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if rest:
        protocol.data_received(rest)


class ServerHandshake(asyncio.Protocol):
    """The server's side of one connection until its peer is authenticated; then the
    connection belongs to the protocol ``accepted`` makes. ``pending`` holds the handshakes
    under way, so that a server closing can end them."""

    def __init__(
        self,
        auth: PeerAuth,
        accepted: Callable[[], asyncio.Protocol],
        pending: set[ServerHandshake],
        timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self._auth = auth
        self._accepted = accepted
        self._pending = pending
        self._timeout_s = timeout_s
        self._buffer = bytearray()
        self._client_hello = b""
        self._server_hello = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout_s, self._refuse, _Refused("it did not finish the handshake in time")
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        self._transport = None

    def _done(self) -> None:
        self._pending.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _refuse(self, why: _Refused) -> None:
        log.warning("refused a channel peer at %s: %s", self._peer, why)
        self._done()
        self._buffer.clear()
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        buffer = self._buffer
        if len(buffer) + len(data) > MAX_UNAUTHENTICATED:
            self._refuse(_Refused("it sent more than a handshake before it was accepted"))
            return
        buffer += data
        try:
            self._step(self._transport, buffer)
        except _Refused as why:
            self._refuse(why)

    def _step(self, transport: asyncio.Transport, buffer: bytearray) -> None:
        if not self._client_hello:
            length = _hello_length(buffer)
            if length is None or len(buffer) < length:
                return
            self._client_hello = bytes(buffer[:length])
            del buffer[:length]
            _node_id(self._client_hello)
            self._server_hello = self._auth.hello()
            mine = self._auth.proof(b"server", self._client_hello, self._server_hello)
            transport.write(self._server_hello + PROOF.pack(mine))
        if len(buffer) < PROOF.size:
            return
        if len(buffer) > PROOF.size:
            raise _Refused("it sent more than its proof before it was accepted")
        want = self._auth.proof(b"client", self._client_hello, self._server_hello)
        if not hmac.compare_digest(bytes(buffer), want):
            raise _Refused("its proof is wrong (another secret?)")
        self._done()
        log.debug("channel peer %s at %s accepted", _node_id(self._client_hello), self._peer)
        transport.write(VERDICT.pack(ACCEPTED))
        _switch(transport, self._accepted(), b"")


class _ClientHandshake(asyncio.Protocol):
    """The client's side: proves itself only once the server has, then hands the connection
    to the channel's protocol and resolves ``done`` with it."""

    def __init__(self, auth: PeerAuth, accepted: Callable[[], asyncio.Protocol], name: str) -> None:
        self._auth = auth
        self._accepted = accepted
        self._name = name
        self._buffer = bytearray()
        self._hello = b""
        self._proved = False
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[asyncio.Protocol] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._hello = self._auth.hello()
        self._transport.write(self._hello)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(
            _Refused(
                "it closed the connection during the handshake: it refused this node's proof"
                " (another secret or handshake version?), or it is not a channel server"
            )
        )

    def _fail(self, why: _Refused) -> None:
        if not self.done.done():
            self.done.set_exception(
                PeerAuthenticationError(
                    f"the channel peer {self._name} could not be authenticated: {why}",
                    peer=self._name,
                )
            )
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.done.done() or self._transport is None:
            return
        self._buffer += data
        try:
            self._step(self._transport, self._buffer)
        except _Refused as why:
            self._fail(why)

    def _step(self, transport: asyncio.Transport, buffer: bytearray) -> None:
        if not self._proved:
            length = _hello_length(buffer)
            if length is None:
                return
            if len(buffer) > length + PROOF.size:
                raise _Refused("it sent more than a hello and a proof")
            if len(buffer) < length + PROOF.size:
                return
            server_hello = bytes(buffer[:length])
            _node_id(server_hello)
            want = self._auth.proof(b"server", self._hello, server_hello)
            if not hmac.compare_digest(bytes(buffer[length:]), want):
                raise _Refused("its proof is wrong (another secret?)")
            buffer.clear()
            self._proved = True
            transport.write(PROOF.pack(self._auth.proof(b"client", self._hello, server_hello)))
            return
        (verdict,) = VERDICT.unpack_from(buffer)
        if verdict != ACCEPTED:
            raise _Refused(f"it answered verdict {verdict}")
        rest = bytes(buffer[VERDICT.size :])
        buffer.clear()
        protocol = self._accepted()
        self.done.set_result(protocol)
        _switch(transport, protocol, rest)


async def connect(address: TcpAddress, auth: PeerAuth, accepted: Callable[[], P], name: str) -> P:
    """A connection to ``address`` once both ends are authenticated, run by the protocol
    ``accepted`` makes. Raises :class:`OSError` where the peer cannot be reached, and
    :class:`~partitions.errors.PeerAuthenticationError` where it cannot be authenticated
    (this side sent no proof and no request then). Bound its time by the caller's timeout:
    a cancelled handshake closes its connection."""
    loop = asyncio.get_running_loop()
    handshake = _ClientHandshake(auth, accepted, name)
    transport, _ = await loop.create_connection(lambda: handshake, address.host, address.port)
    try:
        return cast(P, await handshake.done)
    except BaseException:
        transport.abort()
        raise
