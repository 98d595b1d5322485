"""The partition worker across processes: the framed channel, the remote worker against a
real local worker on a Unix socket, freezes, and routing by placement."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from partitions.batch import NewRecord, encode_batch
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.channel import FRAME, ChannelClient, ChannelServer, Connection, Payload
from partitions.errors import (
    OffsetOutOfRangeError,
    PartitionSealedError,
    WorkerLostError,
    WorkerUnreachableError,
)
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from partitions.routing import RoutingPartitionWorker, default_owner
from partitions.worker import LocalPartitionWorker
from partitions.worker_remote import RemotePartitionWorker, WorkerService
from tests.servers import ROOT

KEY = PartitionKey("acme", "2b8e7c1c-0000-4000-8000-000000000001", 3)
CONFIG = LogConfig(segment_bytes=64 * 1024)


def batch(*values: str, key: str | None = None, tag: bytes = b"") -> bytes:
    records = [
        NewRecord(
            value=v.encode(),
            key=None if key is None else key.encode(),
            headers=(("h", v),),
            key_is_text=True,
            value_is_text=True,
        )
        for v in values
    ]
    return encode_batch(
        records, now_ms=1_000 + len(values), max_record_bytes=1 << 20, producer_tag=tag
    )


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[LocalPartitionWorker, ChannelServer]]:
    worker = LocalPartitionWorker(tmp_path / "data")
    server = ChannelServer(tmp_path / "w.sock")
    WorkerService(worker).register(server)
    await server.start()
    try:
        yield worker, server
    finally:
        await server.close()
        await worker.close()


async def test_a_remote_worker_answers_as_the_local_one_does(tmp_path: Path) -> None:
    async with served(tmp_path) as (local, _server):
        client = ChannelClient(tmp_path / "w.sock")
        remote = RemotePartitionWorker(client)
        try:
            await remote.open_partition(KEY, CONFIG)
            first = await remote.append(KEY, batch("a", "b", "c", key="k"))
            second = await remote.append(KEY, batch("d", tag=b"\x07tag"))
            assert (first.base_offset, first.record_count) == (0, 3)
            assert (second.base_offset, second.record_count) == (3, 1)
            # Stored batches come back byte for byte; decoded reads keep the log's limits.
            assert await remote.read_batches(KEY, 1, max_bytes=10) == await local.read_batches(
                KEY, 1, max_bytes=10
            )
            for max_records, max_bytes in ((10, 10_000), (2, 10_000), (10, 3), (1, 1)):
                got = await remote.read(KEY, 1, max_records=max_records, max_bytes=max_bytes)
                want = await local.read(KEY, 1, max_records=max_records, max_bytes=max_bytes)
                assert got == want
            assert await remote.stats(KEY) == await local.stats(KEY)
            assert await remote.offset_for_timestamp(KEY, 0) == 0
            assert await remote.offset_for_timestamp(KEY, 10**12) is None
            assert await remote.producer_tags(KEY, 0) == [(3, b"\x07tag")]
            assert await remote.segment_details(KEY) == await local.segment_details(KEY)
            # Errors cross as the same errors, with their details.
            with pytest.raises(OffsetOutOfRangeError) as caught:
                await remote.read_batches(KEY, 99, max_bytes=100)
            assert caught.value.details["high_watermark"] == 4
            assert await remote.seal(KEY) == 4
            with pytest.raises(PartitionSealedError):
                await remote.append(KEY, batch("e"))
        finally:
            await client.close()


async def test_a_long_poll_wakes_on_an_append_and_a_cancelled_one_ends_at_the_owner(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as (local, server):
        client = ChannelClient(tmp_path / "w.sock")
        remote = RemotePartitionWorker(client)
        try:
            await remote.open_partition(KEY, CONFIG)
            waiting = asyncio.ensure_future(remote.wait_for_data(KEY, 0, 30.0))
            await asyncio.sleep(0.05)
            await local.append(KEY, batch("x"))
            assert await asyncio.wait_for(waiting, 5) is True
            # A wait the caller gives up on is cancelled where it runs, not left to time out.
            abandoned = asyncio.ensure_future(remote.wait_for_data(KEY, 1, 30.0))
            await asyncio.sleep(0.05)
            assert server.calls_in_flight == 1
            abandoned.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await abandoned
            for _ in range(100):
                if not server.calls_in_flight:
                    break
                await asyncio.sleep(0.01)
            assert not server.calls_in_flight
        finally:
            await client.close()


async def test_a_freeze_holds_appends_until_thawed_or_sealed(tmp_path: Path) -> None:
    async with served(tmp_path) as (local, _server):
        client = ChannelClient(tmp_path / "w.sock")
        remote = RemotePartitionWorker(client)
        try:
            await remote.open_partition(KEY, CONFIG)
            await local.append(KEY, batch("a"))
            assert await remote.freeze(KEY) == 1
            held = asyncio.ensure_future(local.append(KEY, batch("b")))
            await asyncio.sleep(0.05)
            assert not held.done() and (await local.stats(KEY)).end_offset == 1
            await remote.thaw(KEY)
            assert (await held).base_offset == 1
            # Frozen again, then sealed: the held append is refused (it goes to a child).
            assert await remote.freeze(KEY) == 2
            held = asyncio.ensure_future(local.append(KEY, batch("c")))
            await asyncio.sleep(0.05)
            assert await remote.seal(KEY) == 2
            with pytest.raises(PartitionSealedError):
                await held
        finally:
            await client.close()


async def test_a_freeze_ends_when_the_process_that_made_it_goes_away(tmp_path: Path) -> None:
    async with served(tmp_path) as (local, _server):
        client = ChannelClient(tmp_path / "w.sock")
        await RemotePartitionWorker(client).open_partition(KEY, CONFIG)
        await RemotePartitionWorker(client).freeze(KEY)
        held = asyncio.ensure_future(local.append(KEY, batch("a")))
        await asyncio.sleep(0.05)
        assert not held.done()
        await client.close()  # as if the splitting process died
        assert (await asyncio.wait_for(held, 5)).base_offset == 0


async def test_a_peer_that_is_down_or_dies_mid_call_is_a_retriable_503(tmp_path: Path) -> None:
    client = ChannelClient(tmp_path / "nobody.sock", name="worker 1")
    with pytest.raises(WorkerUnreachableError) as unreachable:
        await RemotePartitionWorker(client).stats(KEY)
    assert (unreachable.value.status, unreachable.value.retriable) == (503, True)
    # A real process that dies while a call waits for it: the call fails as lost.
    path = tmp_path / "dying.sock"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SILENT_SERVER,
        str(path),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(500):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        dying = ChannelClient(path, name="worker 1")
        call = asyncio.ensure_future(RemotePartitionWorker(dying).append(KEY, batch("v")))
        await asyncio.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        with pytest.raises(WorkerLostError) as lost:
            await asyncio.wait_for(call, 10)
        assert (lost.value.code, lost.value.status, lost.value.retriable) == (
            "worker_lost",
            503,
            True,
        )
        await dying.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


# A channel server whose appends never answer, so that a call is in flight when it dies.
_SILENT_SERVER = """
import asyncio, sys
from pathlib import Path
from partitions.channel import ChannelServer

async def never(meta, blob, conn):
    await asyncio.sleep(3600)

async def main():
    server = ChannelServer(Path(sys.argv[1]), {2: never})
    await server.start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_frames_split_anywhere_and_a_bad_frame_closes_only_its_connection(
    tmp_path: Path,
) -> None:
    async def echo(meta: bytes, blob: bytes, conn: Connection) -> Payload:
        return meta[::-1], [blob, blob]

    server = ChannelServer(tmp_path / "e.sock", {9: echo})
    await server.start()
    client = ChannelClient(tmp_path / "e.sock")
    try:
        # Byte by byte: the parser waits for whole frames.
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "e.sock"))
        frame = FRAME.pack(FRAME.size - 4 + 3 + 2, 5, 1, 9, 3) + b"abc" + b"xy"
        for byte in frame:
            writer.write(bytes([byte]))
            await writer.drain()
        header = await reader.readexactly(FRAME.size)
        length, request_id, kind, op, meta_length = FRAME.unpack(header)
        rest = await reader.readexactly(length - (FRAME.size - 4))
        assert (request_id, kind, op) == (5, 2, 9) and rest == b"cba" + b"xyxy"
        # A frame that claims more meta than it has: that connection closes, others go on.
        writer.write(FRAME.pack(FRAME.size - 4, 6, 1, 9, 100))
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        answers = await asyncio.gather(*(client.call(9, b"%d" % n, b"z") for n in range(50)))
        assert [meta for meta, _ in answers] == [(b"%d" % n)[::-1] for n in range(50)]
    finally:
        await client.close()
        await server.close()


async def test_routing_follows_placements_and_defaults_for_unplaced_partitions(
    tmp_path: Path,
) -> None:
    catalog = await SqliteCatalog.open(tmp_path / CATALOG_FILE)
    await catalog.create_tenant("acme")
    topic, _ = await catalog.create_topic("acme", "placed", {}, placement=[1])
    change = await catalog.split_partition(
        "acme", "placed", 0, at=1 << 63, end_offset=0, placement=[0, 1]
    )
    assert [p.partition_id for p in change.created] == [1, 2]
    legacy, _ = await catalog.create_topic("acme", "legacy", {})
    assert await catalog.list_placements("acme", topic.incarnation) == {0: 1, 1: 0, 2: 1}
    assert await catalog.list_placements("acme", legacy.incarnation) == {}
    async with served(tmp_path) as (peer, _server):
        client = ChannelClient(tmp_path / "w.sock")
        local = LocalPartitionWorker(tmp_path / "data")
        routing = RoutingPartitionWorker(
            local,
            {1: RemotePartitionWorker(client)},
            index=0,
            count=2,
            placements=catalog.list_placements,
        )
        try:
            keys = [PartitionKey("acme", topic.incarnation, pid) for pid in range(3)]
            for key in keys:
                await routing.open_partition(key, CONFIG)
                await routing.append(key, batch(str(key.partition_id)))
            assert sorted(k.partition_id for k in local.partition_keys()) == [1]
            assert sorted(k.partition_id for k in peer.partition_keys()) == [0, 2]
            assert [await routing.owner(k) for k in keys] == [1, 0, 1]
            # Unplaced partitions (made before placements existed): the same owner everywhere.
            old = PartitionKey("acme", legacy.incarnation, 0)
            assert await routing.owner(old) == default_owner(old, 2)
            # Dropping the topic lets go of it everywhere, then removes the files.
            await routing.drop_topic("acme", topic.incarnation)
            assert local.partition_keys() == [] and peer.partition_keys() == []
            assert not (tmp_path / "data" / "topics" / "acme" / topic.incarnation).exists()
        finally:
            await client.close()
            await local.close()
            await catalog.close()
