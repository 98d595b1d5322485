"""The channel between nodes, over TCP on 127.0.0.1: calls, blobs, multiplexing and cancels
as over a Unix socket, and the handshake that refuses every peer that cannot prove it
shares the nodes' secret, on both sides, before a single frame is served or sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from partitions.channel import FRAME, ChannelClient, ChannelServer, Connection, Payload
from partitions.channel_auth import (
    ACCEPTED,
    HELLO,
    MAGIC,
    MAX_UNAUTHENTICATED,
    PROOF,
    VERDICT,
    VERSION,
    PeerAuth,
    TcpAddress,
)
from partitions.errors import (
    OffsetOutOfRangeError,
    PeerAuthenticationError,
    WorkerUnreachableError,
)
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker
from partitions.worker_remote import RemotePartitionWorker, WorkerService
from tests.test_worker_remote import batch

SECRET = b"the nodes share this secret, 42 bytes long"
NODE_A = PeerAuth(SECRET, "node-a")
NODE_B = PeerAuth(SECRET, "node-b")
STRANGER = PeerAuth(b"a different secret of some length", "node-x")
LOOPBACK = TcpAddress("127.0.0.1", 0)
ECHO, WAIT, FAIL = 9, 10, 11
AUTH_LOG = "partitions.channel_auth"


class Served:
    """A channel server on TCP whose handlers count what they were asked."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def echo(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        self.calls += 1
        return meta[::-1], [blob, memoryview(blob)]

    async def wait(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        self.calls += 1
        await self.release.wait()
        return b"released", b""

    async def fail(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        self.calls += 1
        raise OffsetOutOfRangeError("not there", high_watermark=7)


@contextlib.asynccontextmanager
async def serving(
    auth: PeerAuth = NODE_A, handshake_timeout_s: float = 5.0
) -> AsyncIterator[tuple[Served, ChannelServer, TcpAddress]]:
    served = Served()
    server = ChannelServer(
        LOOPBACK,
        {ECHO: served.echo, WAIT: served.wait, FAIL: served.fail},
        auth=auth,
        handshake_timeout_s=handshake_timeout_s,
    )
    await server.start()
    assert server.address is not None and server.address.port != 0
    try:
        yield served, server, server.address
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def client_of(address: TcpAddress, auth: PeerAuth = NODE_B) -> AsyncIterator[ChannelClient]:
    client = ChannelClient(address, name=f"node at {address}", auth=auth)
    try:
        yield client
    finally:
        await client.close()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed)."""
    got = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += chunk
    return bytes(got)


def hello(node_id: bytes = b"raw", *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return HELLO.pack(magic, version, b"n" * 32, len(node_id)) + node_id


async def until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_calls_blobs_and_errors_cross_an_authenticated_connection() -> None:
    async with serving() as (served, _server, address), client_of(address) as client:
        blob = bytes(range(256)) * 4096  # 1 MiB, answered twice over
        meta, answer = await client.call(ECHO, b"abc", blob)
        assert (meta, answer) == (b"cba", blob + blob)
        with pytest.raises(OffsetOutOfRangeError) as caught:
            await client.call(FAIL)
        assert caught.value.details == {"high_watermark": 7}
        # Many calls in flight over the one connection, each answered to its caller.
        answers = await asyncio.gather(
            *(client.call(ECHO, b"%d" % n, b"x" * n) for n in range(300))
        )
        assert answers == [((b"%d" % n)[::-1], b"x" * (2 * n)) for n in range(300)]
        assert served.calls == 302


async def test_a_partition_worker_answers_over_tcp_byte_for_byte(tmp_path: Path) -> None:
    key = PartitionKey("acme", "2b8e7c1c-0000-4000-8000-000000000002", 0)
    local = LocalPartitionWorker(tmp_path / "data")
    server = ChannelServer(LOOPBACK, auth=NODE_A)
    WorkerService(local).register(server)
    await server.start()
    assert server.address is not None
    try:
        async with client_of(server.address) as client:
            remote = RemotePartitionWorker(client)
            await remote.open_partition(key, LogConfig(segment_bytes=64 * 1024))
            appended = await remote.append(key, batch("a", "b", key="k"))
            assert (appended.base_offset, appended.record_count) == (0, 2)
            assert await remote.read_batches(key, 0, max_bytes=1 << 20) == (
                await local.read_batches(key, 0, max_bytes=1 << 20)
            )
    finally:
        await server.close()
        await local.close()


async def test_a_cancelled_call_ends_where_it_runs() -> None:
    async with serving() as (served, server, address), client_of(address) as client:
        waiting = asyncio.ensure_future(client.call(WAIT))
        await until(lambda: server.calls_in_flight == 1, "the call arrives")
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await until(lambda: server.calls_in_flight == 0, "the call is cancelled at the server")
        assert (await client.call(ECHO, b"ok"))[0] == b"ko"


async def test_a_server_with_another_secret_is_left_before_anything_is_sent() -> None:
    async with serving(auth=STRANGER) as (served, server, address):
        async with client_of(address) as client:
            with pytest.raises(PeerAuthenticationError) as caught:
                await client.call(ECHO, b"secret data")
            assert "could not be authenticated" in caught.value.message
            assert caught.value.code == "peer_unauthenticated"
        assert served.calls == 0 and server.calls_in_flight == 0


async def test_a_client_sends_only_its_hello_to_a_server_whose_proof_is_wrong() -> None:
    received = bytearray()
    done = asyncio.Event()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.extend(await reader.readexactly(HELLO.size + len(b"node-b")))
            writer.write(hello(b"impostor") + PROOF.pack(b"\0" * PROOF.size))
            await writer.drain()
            received.extend(await read_to_end(reader))
        finally:
            writer.close()
            done.set()

    listener = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with client_of(TcpAddress("127.0.0.1", port)) as client:
            with pytest.raises(PeerAuthenticationError) as caught:
                await client.call(ECHO, b"secret data", b"blob")
            assert "proof is wrong" in caught.value.message
            await asyncio.wait_for(done.wait(), 5)
        # Its hello and nothing more: no proof of its own, no request.
        assert len(received) == HELLO.size + len(b"node-b")
        assert received.startswith(MAGIC) and received.endswith(b"node-b")
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_client_with_a_wrong_proof_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=AUTH_LOG)
    async with serving() as (served, _server, address):
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(hello())
            server_hello = await reader.readexactly(HELLO.size + len(b"node-a") + PROOF.size)
            assert server_hello.startswith(MAGIC)
            writer.write(PROOF.pack(b"\x01" * PROOF.size))
            # No verdict, no detail: the connection just closes.
            assert await read_to_end(reader) == b""
        finally:
            writer.close()
        assert served.calls == 0
        refusals = [r.getMessage() for r in caplog.records if r.name == AUTH_LOG]
        assert any("127.0.0.1" in m and "proof is wrong" in m for m in refusals)


@pytest.mark.parametrize(
    "opening",
    [
        pytest.param(FRAME.pack(FRAME.size - 4 + 2, 1, 1, ECHO, 2) + b"hi", id="channel-frame"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(hello(version=VERSION + 1), id="other-version"),
        pytest.param(hello() + b"\0" * MAX_UNAUTHENTICATED, id="too-much"),
        pytest.param(hello() + PROOF.pack(b"\0" * PROOF.size) + b"extra", id="frames-too-soon"),
    ],
)
async def test_whatever_is_not_the_handshake_is_closed_unserved(
    opening: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=AUTH_LOG)
    async with serving() as (served, server, address):
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(opening)
            got = await read_to_end(reader)
        finally:
            writer.close()
        # At most the server's own hello and proof (a well-formed hello gets those): never a
        # verdict nor an answer.
        assert len(got) in (0, HELLO.size + len(b"node-a") + PROOF.size)
        assert served.calls == 0 and server.calls_in_flight == 0
        assert any("127.0.0.1" in r.getMessage() for r in caplog.records if r.name == AUTH_LOG)


async def test_a_slow_handshake_runs_out_of_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=AUTH_LOG)
    async with serving(handshake_timeout_s=0.3) as (served, _server, address):
        silent_reader, silent = await asyncio.open_connection(address.host, address.port)
        halting_reader, halting = await asyncio.open_connection(address.host, address.port)
        try:
            halting.write(hello()[:10])
            assert await read_to_end(silent_reader) == b""
            assert await read_to_end(halting_reader) == b""
        finally:
            silent.close()
            halting.close()
        assert served.calls == 0
        assert any("in time" in r.getMessage() for r in caplog.records if r.name == AUTH_LOG)


async def test_refused_peers_do_not_disturb_authenticated_ones() -> None:
    async with serving() as (served, server, address), client_of(address) as client:
        waiting = asyncio.ensure_future(client.call(WAIT))
        await until(lambda: server.calls_in_flight == 1, "the call arrives")
        async with client_of(address, auth=STRANGER) as stranger:
            with pytest.raises(PeerAuthenticationError):
                await stranger.call(ECHO)
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"\xff" * 64)
        assert await read_to_end(reader) == b""
        writer.close()
        # The authenticated connection still carries calls, and its waiting call ends well.
        assert (await client.call(ECHO, b"still"))[0] == b"llits"
        served.release.set()
        assert await asyncio.wait_for(waiting, 5) == (b"released", b"")
        assert client.connected


async def test_a_client_meeting_no_channel_server_says_so() -> None:
    async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-something else entirely\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(talker, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with client_of(TcpAddress("127.0.0.1", port)) as client:
            with pytest.raises(PeerAuthenticationError, match="does not speak"):
                await client.call(ECHO)
    finally:
        listener.close()
        await listener.wait_closed()
    # A port nobody listens on is unreachable, as a Unix socket nobody serves.
    async with client_of(TcpAddress("127.0.0.1", port)) as client:
        with pytest.raises(WorkerUnreachableError):
            await client.call(ECHO)


async def test_a_server_accepts_and_answers_with_the_verdict_byte() -> None:
    """The handshake as its layout says, driven by hand with the right secret."""
    async with serving() as (served, _server, address):
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            mine = hello(b"by-hand")
            writer.write(mine)
            theirs = await reader.readexactly(HELLO.size + len(b"node-a"))
            (proof,) = PROOF.unpack(await reader.readexactly(PROOF.size))
            assert proof == NODE_A.proof(b"server", mine, theirs)
            writer.write(PROOF.pack(NODE_A.proof(b"client", mine, theirs)))
            assert VERDICT.unpack(await reader.readexactly(VERDICT.size)) == (ACCEPTED,)
            writer.write(FRAME.pack(FRAME.size - 4 + 2, 5, 1, ECHO, 2) + b"hi")
            length, request_id, kind, _op, _meta_length = FRAME.unpack(
                await reader.readexactly(FRAME.size)
            )
            assert (request_id, kind) == (5, 2)
            assert await reader.readexactly(length - (FRAME.size - 4)) == b"ih"
        finally:
            writer.close()
        assert served.calls == 1


def test_tcp_needs_a_secret_long_enough_to_resist_guessing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shared secret"):
        ChannelServer(LOOPBACK)
    with pytest.raises(ValueError, match="shared secret"):
        ChannelClient(LOOPBACK)
    with pytest.raises(ValueError, match="16 bytes"):
        PeerAuth(b"short", "node-a")
    with pytest.raises(ValueError, match="node id"):
        PeerAuth(SECRET, "n" * 300)
    # A Unix socket needs none.
    ChannelServer(tmp_path / "w.sock")
    ChannelClient(tmp_path / "w.sock")
