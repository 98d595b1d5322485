"""A takeover's recovery step: a partition's local log rebuilt on a new node from the remote
segments and its dead owners' write-ahead logs.

Real components throughout: the SQLite catalog, a file object store, gated partition
workers whose appends are acknowledged through a real WAL writer, tiered storage's own
uploader for the segments uploaded first, and the new owner reading through a worker with
the cold read path, as a node would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from partitions.batch import NewRecord, encode_batch, with_base_offset
from partitions.catalog_dynamodb.leases import Source
from partitions.catalog_sqlite import SqliteCatalog
from partitions.durability import WalEntry
from partitions.errors import OffsetOutOfRangeError
from partitions.log.layout import LOG_SUFFIX, list_segment_bases, segment_name
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker
from tiered_storage.file_store import FileObjectStore
from tiered_storage.objects import ObjectStore
from tiered_storage.remote_segments import uploaded_end
from tiered_storage.service import ColdPath, TieredStorage
from tiered_storage.state import RemoteIndex
from tiered_storage.takeover import Recovery, recover_partition
from tiered_storage.wal import WalWriter
from tiered_storage.wal_format import encode_object, wal_key
from tiered_storage.wal_reader import ReplayStop, list_session, read_footer

# Small segments, so that a few dozen records make several, some uploaded and some not.
CONFIG = LogConfig(segment_bytes=1024, index_interval_bytes=256)
A = Source("node-a", "session-a1")
B = Source("node-b", "session-b1")
C = Source("node-c", "session-c1")


def batch(value: str) -> bytes:
    return encode_batch(
        [NewRecord(value=value.encode())], now_ms=1_700_000_000_000, max_record_bytes=1 << 20
    )


@dataclass
class Cluster:
    """What every node shares: the catalog and the object store."""

    catalog: SqliteCatalog
    store: ObjectStore
    key: PartitionKey
    root: Path

    async def uploaded_end(self) -> int:
        return uploaded_end(self.key, await RemoteIndex(self.catalog).finished(self.key), 0)


@dataclass
class Owner:
    """One session of a node owning the partition: a gated worker acknowledging through
    its WAL, and tiered storage uploading its rolled segments."""

    cluster: Cluster
    source: Source
    worker: LocalPartitionWorker
    tiering: TieredStorage
    #: What each acknowledged append answered: offset -> value.
    acknowledged: dict[int, str]

    async def append(self, *values: str) -> None:
        for value in values:
            result = await self.worker.append(self.cluster.key, batch(value))
            self.acknowledged[result.base_offset] = value

    async def stop(self) -> None:
        """The session ends: what it acknowledged is in its WAL; nothing more is written."""
        await self.tiering.close()
        await self.worker.close()

    def log_bytes_from(self, offset: int) -> bytes:
        """The bytes of this node's local segments from the one at ``offset`` on."""
        directory = self.worker.directory(self.cluster.key)
        return b"".join(
            (directory / (segment_name(base) + LOG_SUFFIX)).read_bytes()
            for base in list_segment_bases(directory)
            if base >= offset
        )


async def start_owner(
    cluster: Cluster, source: Source, data_dir: Path, *, uploads: bool = False
) -> Owner:
    async def alive() -> bool:
        return True

    wal = WalWriter(
        cluster.store,
        node=source.node_id,
        session=source.session_id,
        check_fence=alive,
        flush_ms=2,
    )
    wal.start()
    cold = ColdPath(cluster.catalog, cluster.store)
    worker = LocalPartitionWorker(
        data_dir,
        on_roll=cold.notify_roll,
        remote=cold.reader,
        durability=wal,
        epochs=lambda _key: 1,
    )
    await worker.open_partition(cluster.key, CONFIG)
    tiering = TieredStorage(cluster.catalog, worker, cluster.store, cold=cold)
    if uploads:
        tiering.start(cleanup=False)
    return Owner(cluster, source, worker, tiering, {})


async def take_over(
    cluster: Cluster, source: Source, data_dir: Path, sources: list[Source]
) -> tuple[Recovery, Owner]:
    """Recover the partition on a node, then serve it there as a new session would."""
    directory = data_dir / "topics" / cluster.key.tenant / cluster.key.incarnation
    directory = directory / str(cluster.key.partition_id)
    recovery = await recover_partition(
        cluster.catalog,
        cluster.store,
        directory,
        cluster.key,
        CONFIG,
        sources,
        log_start=0,
    )
    owner = await start_owner(cluster, source, data_dir)
    assert owner.worker.directory(cluster.key) == directory
    return recovery, owner


async def read_all(owner: Owner) -> dict[int, str]:
    """Every record the owner serves, from offset 0 to its high watermark."""
    key = owner.cluster.key
    found: dict[int, str] = {}
    offset = 0
    while True:
        read = await owner.worker.read(key, offset, max_records=1000, max_bytes=1 << 20)
        found.update({r.offset: r.value.decode() for r in read.records})
        if read.next_offset >= read.high_watermark:
            return found
        offset = read.next_offset


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    catalog = await SqliteCatalog.open(tmp_path / "catalog.db")
    await catalog.create_tenant("acme")
    topic, partition = await catalog.create_topic("acme", "orders", {})
    store = await FileObjectStore.open(tmp_path / "objects")
    yield Cluster(catalog, store, PartitionKey("acme", topic.incarnation, 0), tmp_path)
    await store.close()
    await catalog.close()


def values(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:03d}-" + "x" * 80 for i in range(count)]


async def test_the_new_owner_serves_every_acknowledged_record_from_tiered_data_and_the_tail(
    cluster: Cluster,
) -> None:
    old = await start_owner(cluster, A, cluster.root / "node-a", uploads=True)
    await old.append(*values("first", 40))
    await until_uploaded(cluster, 20)
    await old.tiering.close()  # what comes next is only in the WAL (and on the dead disk)
    await old.append(*values("second", 25))
    await old.stop()
    uploaded = await cluster.uploaded_end()
    assert 20 <= uploaded < 65

    recovery, new = await take_over(cluster, B, cluster.root / "node-b", [A])
    try:
        assert (recovery.uploaded_end, recovery.recovered_end) == (uploaded, 65)
        assert recovery.stop is ReplayStop.END and not recovery.replaced_local
        assert recovery.entries == 65 - uploaded
        assert recovery.bytes == len(old.log_bytes_from(uploaded)) > 0
        stats = new.worker.log(cluster.key).stats()
        assert (stats.start_offset, stats.local_start_offset) == (0, uploaded)
        assert stats.end_offset == 65
        # Every acknowledged record at the offset its append answered, in one run of reads
        # crossing from object storage into the local tail.
        assert await read_all(new) == old.acknowledged
        # The local tail holds the dead owner's stored batches byte for byte.
        assert new.log_bytes_from(uploaded) == old.log_bytes_from(uploaded)
        await new.append("after")
        assert new.acknowledged == {65: "after"}
    finally:
        await new.stop()


async def until_uploaded(cluster: Cluster, offset: int) -> None:
    async with asyncio.timeout(20):
        while await cluster.uploaded_end() < offset:  # noqa: ASYNC110 - the uploader's catalog rows
            await asyncio.sleep(0.02)


async def objects_holding(cluster: Cluster, source: Source) -> list[tuple[str, int, int]]:
    """(key, first offset, next offset) of the partition's entries in each of the
    source's WAL objects, in seq order."""
    found = []
    for obj in await list_session(cluster.store, source.node_id, source.session_id):
        footer = await read_footer(cluster.store, source.node_id, source.session_id, obj)
        mine = [i for i in footer.entries if i.partition == cluster.key]
        if mine:
            found.append((obj.key, mine[0].base_offset, mine[-1].next_offset))
    return found


async def test_a_gap_in_the_wal_stops_the_replay_there_and_nothing_past_it_is_served(
    cluster: Cluster,
) -> None:
    old = await start_owner(cluster, A, cluster.root / "node-a")
    await old.append(*values("v", 30))
    await old.stop()
    held = await objects_holding(cluster, A)
    assert len(held) >= 3
    missing_key, gap, _ = held[len(held) // 2]
    await cluster.store.delete(missing_key)

    recovery, new = await take_over(cluster, B, cluster.root / "node-b", [A])
    try:
        assert recovery.stop is ReplayStop.GAP and recovery.stop_key is not None
        assert (recovery.uploaded_end, recovery.recovered_end) == (0, gap)
        assert await read_all(new) == {o: v for o, v in old.acknowledged.items() if o < gap}
        with pytest.raises(OffsetOutOfRangeError):
            await new.worker.read(cluster.key, gap + 1, max_records=10, max_bytes=1 << 20)
        await new.append("next")
        assert new.acknowledged == {gap: "next"}
    finally:
        await new.stop()


async def test_a_corrupt_object_stops_the_replay_before_it(cluster: Cluster) -> None:
    old = await start_owner(cluster, A, cluster.root / "node-a")
    await old.append(*values("v", 30))
    await old.stop()
    held = await objects_holding(cluster, A)
    damaged_key, stop_at, _ = held[len(held) // 2]
    data = bytearray(await cluster.store.get(damaged_key))
    data[len(data) // 2] ^= 0x40
    await cluster.store.delete(damaged_key)
    await cluster.store.put(damaged_key, bytes(data))

    recovery, new = await take_over(cluster, B, cluster.root / "node-b", [A])
    try:
        assert recovery.stop is ReplayStop.CORRUPT and recovery.stop_key == damaged_key
        assert recovery.recovered_end == stop_at
        assert await read_all(new) == {o: v for o, v in old.acknowledged.items() if o < stop_at}
    finally:
        await new.stop()


async def test_a_partition_that_passed_through_two_dead_sessions_replays_both_in_order(
    cluster: Cluster,
) -> None:
    first = await start_owner(cluster, A, cluster.root / "node-a")
    await first.append(*values("a", 12))
    await first.stop()
    recovery, second = await take_over(cluster, B, cluster.root / "node-b", [A])
    assert recovery.recovered_end == 12
    await second.append(*values("b", 15))
    await second.stop()
    # A fenced zombie of the first session wrote one more object after its taker had
    # listed the WAL: its entry (never acknowledged) takes an offset the second gave away.
    seq = max(o.seq for o in await list_session(cluster.store, A.node_id, A.session_id)) + 1
    zombie = WalEntry(cluster.key, 1, 12, with_base_offset(batch("zombie"), 12))
    await cluster.store.put(
        wal_key(A.node_id, A.session_id, seq),
        encode_object(A.node_id, A.session_id, seq, [zombie]),
    )

    recovery, third = await take_over(cluster, C, cluster.root / "node-c", [A, B])
    try:
        assert recovery.stop is ReplayStop.END and recovery.recovered_end == 27
        assert [(r.source, r.entries) for r in recovery.sources] == [(A, 12), (B, 15)]
        assert await read_all(third) == first.acknowledged | second.acknowledged
    finally:
        await third.stop()


async def test_two_sources_that_do_not_meet_stop_at_the_gap_between_them(
    cluster: Cluster,
) -> None:
    first = await start_owner(cluster, A, cluster.root / "node-a")
    await first.append(*values("a", 10))
    await first.stop()
    # The second session's WAL starts past where the first one's ends.
    skipped = WalEntry(cluster.key, 2, 14, with_base_offset(batch("far"), 14))
    await cluster.store.put(
        wal_key(B.node_id, B.session_id, 1), encode_object(B.node_id, B.session_id, 1, [skipped])
    )
    recovery, new = await take_over(cluster, C, cluster.root / "node-c", [A, B])
    try:
        assert recovery.stop is ReplayStop.GAP and recovery.recovered_end == 10
        assert await read_all(new) == first.acknowledged
    finally:
        await new.stop()


async def test_nothing_to_replay_gives_an_empty_local_log_at_the_uploaded_end(
    cluster: Cluster,
) -> None:
    old = await start_owner(cluster, A, cluster.root / "node-a", uploads=True)
    await old.append(*values("v", 30))
    await old.worker.log(cluster.key).roll()
    await until_uploaded(cluster, 30)
    await old.stop()

    recovery, new = await take_over(cluster, B, cluster.root / "node-b", [A])
    try:
        assert (recovery.uploaded_end, recovery.recovered_end) == (30, 30)
        assert recovery.entries == recovery.bytes == 0 and recovery.stop is ReplayStop.END
        stats = new.worker.log(cluster.key).stats()
        assert (stats.start_offset, stats.local_start_offset, stats.end_offset) == (0, 30, 30)
        assert await read_all(new) == old.acknowledged
        await new.append("next")
        assert new.acknowledged == {30: "next"}
    finally:
        await new.stop()


async def test_a_local_directory_with_a_longer_unacknowledged_tail_is_replaced(
    cluster: Cluster,
) -> None:
    old = await start_owner(cluster, A, cluster.root / "node-a")
    await old.append(*values("acked", 10))
    directory = old.worker.directory(cluster.key)
    await old.stop()
    # Written and fsync'd on this disk, but never in the WAL: never acknowledged.
    log = await PartitionLog.open(directory, CONFIG)
    for value in values("unacked", 5):
        await log.append(batch(value))
    assert log.high_watermark == 15
    await log.close()

    # The same node owns the partition again, in a new session.
    recovery, again = await take_over(cluster, C, cluster.root / "node-a", [A])
    try:
        assert recovery.replaced_local and recovery.recovered_end == 10
        assert await read_all(again) == old.acknowledged
        assert again.worker.log(cluster.key).stats().end_offset == 10
        await again.append("next")
        assert again.acknowledged == {10: "next"}
        assert (await read_all(again))[10] == "next"
    finally:
        await again.stop()
    leftovers = sorted(p.name for p in directory.parent.iterdir())
    assert leftovers == [directory.name]
