"""The durability seam wired into the partition worker and its logs: in cluster mode an
append is answered only once its batch is fsync'd here and in a committed object of the
node's write-ahead log, and readers see only that WAL-committed end.

Real components throughout: a partition worker over a data directory, a WAL writer over
moto's S3 (behind a proxy that can fail or stall requests), and the writer's fence check a
consistent read of the node's row in moto's DynamoDB.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import partitions.catalog_dynamodb.keys as keys
from partitions.batch import NewRecord, encode_batch
from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_dynamodb.nodes import ALIVE, Session, Timing, fence, join
from partitions.durability import WalEntry
from partitions.errors import (
    EventBusError,
    PartitionSealedError,
    SessionFencedError,
    StorageBackpressureError,
    StorageIOError,
    WalUnavailableError,
)
from partitions.fileio import FileOps
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker
from tests.dynamodb import fresh_dynamo
from tests.s3 import S3FaultProxy, create_bucket
from tiered_storage.s3_store import S3ObjectStore
from tiered_storage.wal import WalWriter
from tiered_storage.wal_format import decode_object
from tiered_storage.wal_reader import PartitionReplay, ReplayStop, list_session

KEY = PartitionKey("acme", "inc-1", 0)
EPOCH = 3
TIMING = Timing(heartbeat_s=1.0, lease_s=10.0, margin_s=2.0)


def batch(*values: str) -> bytes:
    records = [NewRecord(value=v.encode()) for v in values]
    return encode_batch(records, now_ms=1_700_000_000_000, max_record_bytes=1 << 20)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a state reached on another task after a store round trip."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state owned by code under test
            await asyncio.sleep(0.005)


@dataclass
class Node:
    """One node of a cluster as far as durability goes: its session, WAL writer and worker."""

    db: Dynamo
    session: Session
    proxy: S3FaultProxy
    store: S3ObjectStore
    wal: WalWriter
    worker: LocalPartitionWorker

    def stall_puts(self) -> None:
        self.proxy.released.clear()
        self.proxy.stall = lambda line: line.startswith("PUT")

    def fail_puts(self) -> None:
        self.proxy.fail_match = lambda line: line.startswith("PUT")
        self.proxy.fail_next = [(503, "ServiceUnavailable")] * 10_000

    def store_back(self) -> None:
        self.proxy.fail_next = []
        self.proxy.release()

    async def wal_entries(self) -> list[WalEntry]:
        """Every entry of the session's WAL objects, in seq order."""
        found: list[WalEntry] = []
        for obj in await list_session(self.store, self.session.node_id, self.session.session_id):
            found += decode_object(await self.store.get(obj.key)).entries
        return found

    async def values(self) -> list[str]:
        read = await self.worker.read(KEY, 0, max_records=1000, max_bytes=1 << 20)
        return [r.value.decode() for r in read.records]


def fence_check(db: Dynamo, session: Session) -> Callable[[], Awaitable[bool]]:
    """The check a WAL writer runs after each write: one consistent read of the node's
    row, alive and still this session."""

    async def still_alive() -> bool:
        row = await db.get("check fence", "leases", keys.node(session.node_id))
        return row is not None and row["session"] == session.session_id and row["state"] == ALIVE

    return still_alive


@pytest.fixture
async def db(dynamodb_endpoint: str) -> AsyncIterator[Dynamo]:
    async with fresh_dynamo(dynamodb_endpoint) as dynamo:
        yield dynamo


async def start_node(
    tmp_path: Path, s3_endpoint: str, db: Dynamo, max_backlog: int = 64 << 20
) -> Node:
    bucket = await create_bucket(s3_endpoint)
    proxy = await S3FaultProxy(s3_endpoint).start()
    store = await S3ObjectStore.open(
        bucket, "cluster", endpoint_url=proxy.url, timeout_s=10.0, max_attempts=1
    )
    session = await join(db, "node-a", "127.0.0.1:1", timing=TIMING, clock=time.monotonic)
    wal = WalWriter(
        store,
        node=session.node_id,
        session=session.session_id,
        check_fence=fence_check(db, session),
        flush_ms=10,
    )
    wal.start()
    worker = LocalPartitionWorker(
        tmp_path / "data",
        durability=wal,
        epochs=lambda key: EPOCH,
        max_durability_backlog_bytes=max_backlog,
    )
    await worker.open_partition(KEY, LogConfig())
    return Node(db, session, proxy, store, wal, worker)


@pytest.fixture
async def node(tmp_path: Path, s3_endpoint: str, db: Dynamo) -> AsyncIterator[Node]:
    started = await start_node(tmp_path, s3_endpoint, db)
    yield started
    await stop_node(started)


async def stop_node(node: Node) -> None:
    node.store_back()
    await node.worker.close()
    await node.store.close()
    await node.proxy.close()


def visible_end(node: Node) -> int:
    return node.worker.log(KEY).high_watermark


async def test_an_append_answers_once_its_wal_object_holds_its_stored_bytes(node: Node) -> None:
    first = batch("a", "b")
    assert WalEntry.of_append(KEY, EPOCH, first, 0).data is first  # offset 0: no copy
    await node.worker.append(KEY, first)

    node.stall_puts()
    appending = asyncio.create_task(node.worker.append(KEY, batch("c", "d", "e")))
    waiting = asyncio.create_task(node.worker.wait_for_data(KEY, 2, 30.0))
    await until(lambda: any(r.startswith("PUT") for r in node.proxy.requests[-1:]))
    await asyncio.sleep(0.05)
    # Fsync'd here, the WAL object still on its way: no answer, and no reader sees it.
    log = node.worker.log(KEY)
    assert log.fsynced_end == 5
    assert not appending.done() and not waiting.done()
    assert visible_end(node) == 2
    assert (await node.worker.stats(KEY)).end_offset == 2
    assert await node.values() == ["a", "b"]
    batches = await node.worker.read_batches(KEY, 2, max_bytes=1 << 20)
    assert (batches.data, batches.high_watermark) == (b"", 2)
    assert not await node.worker.wait_for_data(KEY, 2, 0.05)

    node.proxy.release()
    assert (await appending).base_offset == 2
    assert await waiting
    assert visible_end(node) == 5
    assert await node.values() == ["a", "b", "c", "d", "e"]
    # Each append is one entry, at its offsets, with exactly the bytes the log stored.
    entries = await node.wal_entries()
    assert [(e.partition, e.epoch, e.base_offset, e.next_offset) for e in entries] == [
        (KEY, EPOCH, 0, 2),
        (KEY, EPOCH, 2, 5),
    ]
    stored = await node.worker.read_batches(KEY, 0, max_bytes=1 << 20)
    assert b"".join(e.data for e in entries) == bytes(stored.data)


async def test_a_store_outage_fails_appends_and_the_visible_end_catches_up_after(
    node: Node,
) -> None:
    await node.worker.append(KEY, batch("a"))
    node.fail_puts()
    for values in (("b", "c"), ("d",)):
        with pytest.raises(WalUnavailableError) as failed:
            await node.worker.append(KEY, batch(*values))
        assert (failed.value.code, failed.value.status, failed.value.retriable) == (
            "wal_unavailable",
            503,
            True,
        )
    log = node.worker.log(KEY)
    assert (visible_end(node), log.fsynced_end) == (1, 4)
    assert await node.values() == ["a"]
    # A split cannot record an end that may still move.
    with pytest.raises(WalUnavailableError):
        await node.worker.freeze(KEY)

    node.store_back()
    await until(lambda: visible_end(node) == 4)
    assert await node.values() == ["a", "b", "c", "d"]
    entries = await node.wal_entries()
    assert [(e.base_offset, e.next_offset) for e in entries] == [(0, 1), (1, 3), (3, 4)]
    replay = PartitionReplay(node.store, node.session.node_id, node.session.session_id, KEY, 0)
    assert [e.next_offset async for e in replay] == [1, 3, 4]
    assert replay.outcome is not None and replay.outcome.stop is ReplayStop.END
    # Appends go on as before.
    assert (await node.worker.append(KEY, batch("e"))).base_offset == 4
    assert await node.worker.freeze(KEY) == 5
    await node.worker.thaw(KEY)


async def test_a_fenced_session_fails_appends_and_shows_nothing_more(
    node: Node, db: Dynamo
) -> None:
    await node.worker.append(KEY, batch("a"))
    assert await fence(db, node.session.node_id, node.session.session_id, 0)
    for values in (("b",), ("c",)):
        with pytest.raises(SessionFencedError) as failed:
            await node.worker.append(KEY, batch(*values))
        assert (failed.value.code, failed.value.retriable) == ("node_fenced", True)
    assert visible_end(node) == 1
    assert await node.values() == ["a"]
    assert not await node.worker.wait_for_data(KEY, 1, 0.1)
    assert node.wal.fenced


async def test_freeze_and_seal_answer_the_durable_end(node: Node) -> None:
    await node.worker.append(KEY, batch("a", "b"))
    node.stall_puts()
    appending = asyncio.create_task(node.worker.append(KEY, batch("c")))
    await until(lambda: node.worker.log(KEY).fsynced_end == 3)
    freezing = asyncio.create_task(node.worker.freeze(KEY))
    await asyncio.sleep(0.05)
    # The freeze waits for the append in flight to be durable, not just fsync'd.
    assert not freezing.done()
    node.proxy.release()
    await appending
    assert await freezing == 3
    assert await node.worker.seal(KEY) == 3
    with pytest.raises(PartitionSealedError):
        await node.worker.append(KEY, batch("d"))
    assert (await node.worker.stats(KEY)).end_offset == 3


async def test_a_producer_that_goes_away_leaves_no_gap(node: Node) -> None:
    node.stall_puts()
    gone = asyncio.create_task(node.worker.append(KEY, batch("a")))
    await until(lambda: node.worker.log(KEY).fsynced_end == 1)
    gone.cancel()
    node.proxy.release()
    # Its batch still reaches the WAL and becomes visible, so the next one has no gap.
    assert (await node.worker.append(KEY, batch("b"))).base_offset == 1
    assert visible_end(node) == 2
    entries = await node.wal_entries()
    assert [(e.base_offset, e.next_offset) for e in entries] == [(0, 1), (1, 2)]


async def test_a_large_backlog_refuses_appends_before_they_reach_the_log(
    tmp_path: Path, s3_endpoint: str, db: Dynamo
) -> None:
    node = await start_node(tmp_path, s3_endpoint, db, max_backlog=1)
    try:
        node.stall_puts()
        first = asyncio.create_task(node.worker.append(KEY, batch("a")))
        await until(lambda: node.wal.backlog_bytes > 1)
        with pytest.raises(StorageBackpressureError) as refused:
            await node.worker.append(KEY, batch("b"))
        assert (refused.value.code, refused.value.status, refused.value.retriable) == (
            "storage_backpressure",
            503,
            True,
        )
        assert node.worker.log(KEY).fsynced_end == 1  # refused before the log
        node.proxy.release()
        assert (await first).base_offset == 0
        assert (await node.worker.append(KEY, batch("b"))).base_offset == 1
        assert await node.values() == ["a", "b"]
    finally:
        await stop_node(node)


async def test_closing_the_worker_flushes_what_is_pending(node: Node) -> None:
    node.wal.flush_ms = 60_000  # only the close's own flush writes
    appending = asyncio.create_task(node.worker.append(KEY, batch("a")))
    await until(lambda: node.wal.backlog_bytes > 0)
    await node.worker.close()
    assert (await appending).base_offset == 0
    assert [e.base_offset for e in await node.wal_entries()] == [0]
    with pytest.raises(EventBusError):
        await node.worker.append(KEY, batch("b"))


async def test_local_durability_shows_an_append_at_its_fsync(tmp_path: Path) -> None:
    worker = LocalPartitionWorker(tmp_path / "data")
    await worker.open_partition(KEY, LogConfig())
    try:
        log = worker.log(KEY)
        assert not log.gated
        assert (await worker.append(KEY, batch("a", "b"))).base_offset == 0
        assert log.high_watermark == log.fsynced_end == 2
        assert await worker.wait_for_data(KEY, 1, 0.0)
        assert await worker.freeze(KEY) == 2
        assert await worker.seal(KEY) == 2
    finally:
        await worker.close()


class FailOneFsync(FileOps):
    """Fails the next fdatasync when told to, as a dying disk would."""

    def __init__(self) -> None:
        self.fail_next = False

    def fdatasync(self, fd: int) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError(errno.EIO, "EIO")
        super().fdatasync(fd)


async def test_a_gated_log_reopened_after_a_failed_fsync_shows_only_what_was_visible(
    tmp_path: Path,
) -> None:
    ops = FailOneFsync()
    log = await PartitionLog.open(tmp_path / "p", ops=ops, gated=True)
    try:
        await log.append(batch("a"))
        log.advance_visible_end(1)
        await log.append(batch("b"))  # fsync'd, not durable elsewhere yet
        ops.fail_next = True
        with pytest.raises(StorageIOError):
            await log.append(batch("c"))
        await until(lambda: log.fsynced_end == 2 and not log.draining)
        read = await log.read(0)
        assert ([r.value for r in read.records], read.high_watermark) == ([b"a"], 1)
        log.advance_visible_end(2)
        assert [r.value for r in (await log.read(0)).records] == [b"a", b"b"]
        assert (await log.append(batch("d"))).base_offset == 2
    finally:
        await log.close()
