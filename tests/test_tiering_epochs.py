"""Segment objects keyed by the uploader's lease epoch: uploads under an epoch, the keys
they make (epoch 0 exactly as before epochs), reads through the catalog row's keys, two
owners' copies of one segment side by side, and cleanup of orphans in both key forms.

Real parts in one process: a SQLite catalog, the local partition worker, a file object
store and the uploader, cleaner and cold reader of tiered storage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from partitions.batch import NewRecord, encode_batch
from partitions.catalog import LeaseFence, RemoteSegmentRecord, RemoteSegmentState
from partitions.catalog_sqlite import SqliteCatalog
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker
from tests.tiering_tools import wait_for
from tiered_storage.cleanup import OrphanCleaner
from tiered_storage.file_store import FileObjectStore
from tiered_storage.layout import SUFFIXES, SegmentObject, parse_segment_key, segment_key
from tiered_storage.ownership import ONE_OWNER, PartitionLeases
from tiered_storage.reader import RemoteSegmentReader
from tiered_storage.state import RemoteIndex, TieringCounters, TieringSettings
from tiered_storage.uploader import SegmentUploader, pending_segments

RECORDS = 40
SETTINGS = TieringSettings(upload_retry_ms=(10, 100), upload_scan_ms=50, orphan_grace_ms=0)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HeldLease:
    """The lease a node holds on every partition, as its lease keeper would answer."""

    def __init__(self, fence: LeaseFence) -> None:
        self.held = fence

    def fence(self, key: PartitionKey) -> LeaseFence | None:
        return self.held


@dataclass
class Owner:
    """One owner's tiered storage over the shared catalog, worker and store."""

    uploader: SegmentUploader
    index: RemoteIndex
    counters: TieringCounters


@dataclass
class Bench:
    catalog: SqliteCatalog
    worker: LocalPartitionWorker
    store: FileObjectStore
    key: PartitionKey

    def owner(self, leases: PartitionLeases = ONE_OWNER) -> Owner:
        index, counters = RemoteIndex(self.catalog), TieringCounters()
        uploader = SegmentUploader(
            self.catalog,
            self.worker,
            self.store,
            index,
            SETTINGS,
            counters,
            wall_ms,
            leases=leases,
        )
        return Owner(uploader, index, counters)

    async def upload_all(self, owner: Owner) -> None:
        async def done() -> bool:
            await owner.uploader.scan()
            stats = await self.worker.stats(self.key)
            await owner.index.reload(self.key)
            rows = await owner.index.rows(self.key)
            return not pending_segments(self.worker.segments(self.key), rows, stats.start_offset)

        try:
            await wait_for(done, what="uploads")
        finally:
            await owner.uploader.close()

    async def rows(self) -> list[RemoteSegmentRecord]:
        k = self.key
        return await self.catalog.list_remote_segments(k.tenant, k.incarnation, k.partition_id)

    async def keys(self) -> list[str]:
        return sorted(o.key for o in await self.store.list(""))

    async def read_back(self) -> list[str]:
        """Every uploaded record's value, through the cold reader and the catalog's rows."""
        index = RemoteIndex(self.catalog)
        reader = RemoteSegmentReader(self.store, index.finished, index.reload)
        try:
            end = (await self.rows())[-1].last_offset + 1
            got = await reader.read(
                self.key, 0, max_records=RECORDS, max_bytes=1 << 20, end_offset=end
            )
            return [bytes(r.value or b"").decode() for r in got.records]
        finally:
            await reader.close()


def _parsed(key: str) -> SegmentObject:
    parsed = parse_segment_key(key)
    assert parsed is not None, key
    return parsed


def _value(i: int) -> str:
    return f"{i:04d}-" + "v" * 200


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    catalog = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    store = await FileObjectStore.open(tmp_path / "objects")
    worker = LocalPartitionWorker(tmp_path / "data")
    try:
        await catalog.create_tenant("acme")
        topic, _ = await catalog.create_topic("acme", "orders", {})
        key = PartitionKey("acme", topic.incarnation, 0)
        await worker.open_partition(key, LogConfig(segment_bytes=1024))
        for i in range(RECORDS):
            batch = encode_batch(
                [NewRecord(_value(i).encode(), value_is_text=True)],
                now_ms=wall_ms(),
                max_record_bytes=1 << 20,
            )
            await worker.append(key, batch)
        yield Bench(catalog, worker, store, key)
    finally:
        await worker.close()
        await store.close()
        await catalog.close()


def _uploaded(values: list[str]) -> None:
    """The values read back are the first records produced, in order, several segments'."""
    assert len(values) > 8
    assert values == [_value(i) for i in range(len(values))]


async def test_an_upload_under_epoch_3_keys_its_objects_and_row_by_it(bench: Bench) -> None:
    await bench.upload_all(bench.owner(HeldLease(LeaseFence("session-3", 3))))
    rows = await bench.rows()
    assert len(rows) > 2
    assert all(r.state is RemoteSegmentState.COPY_FINISHED and r.epoch == 3 for r in rows)
    expected = sorted(
        segment_key(bench.key, r.base_offset, suffix, 3) for r in rows for suffix in SUFFIXES
    )
    assert await bench.keys() == expected
    assert all(
        k.endswith(("-0000000003.log", "-0000000003.index", "-0000000003.timeindex"))
        for k in expected
    )
    assert [r.object_key for r in rows] == [
        segment_key(bench.key, r.base_offset, epoch=3) for r in rows
    ]
    _uploaded(await bench.read_back())


async def test_epoch_0_keys_are_exactly_the_keys_before_epochs(bench: Bench) -> None:
    await bench.upload_all(bench.owner())  # one machine: no lease
    rows = await bench.rows()
    assert all(r.epoch == 0 for r in rows)
    prefix = f"acme/{bench.key.incarnation}/0/"
    assert await bench.keys() == sorted(
        f"{prefix}{r.base_offset:020d}{suffix}" for r in rows for suffix in SUFFIXES
    )
    _uploaded(await bench.read_back())


def test_keys_of_both_forms_parse_and_list_in_offset_order() -> None:
    key = PartitionKey("acme", "inc", 7)
    plain, tagged = segment_key(key, 4711), segment_key(key, 4711, ".index", 3)
    assert plain == "acme/inc/7/00000000000000004711.log"
    assert tagged == "acme/inc/7/00000000000000004711-0000000003.index"
    parsed_plain, parsed_tagged = parse_segment_key(plain), parse_segment_key(tagged)
    assert parsed_plain is not None and parsed_tagged is not None
    assert (parsed_plain.base_offset, parsed_plain.suffix, parsed_plain.epoch) == (4711, ".log", 0)
    assert (parsed_tagged.base_offset, parsed_tagged.suffix, parsed_tagged.epoch) == (
        4711,
        ".index",
        3,
    )
    for foreign in (
        "acme/inc/7/00000000000000004711-3.log",  # an epoch not zero-padded
        "acme/inc/7/00000000000000004711-0000000000.log",  # epoch 0 never has a tag
        "acme/inc/7/00000000000000004711-00000000x3.log",
        "acme/inc/7/4711-0000000003.log",
    ):
        assert parse_segment_key(foreign) is None, foreign
    mixed = [segment_key(key, base, ".log", epoch) for base in (12, 3, 100) for epoch in (0, 9, 2)]
    assert [_parsed(k).base_offset for k in sorted(mixed)] == [3] * 3 + [12] * 3 + [100] * 3


async def _forget_rows(bench: Bench) -> None:
    """Drop the catalog's rows, not their objects: as when an owner's copy is not the one
    the catalog names (a zombie's upload after its successor's rows)."""
    k = bench.key
    for row in await bench.rows():
        await bench.catalog.set_remote_segment_state(
            k.tenant,
            k.incarnation,
            k.partition_id,
            row.base_offset,
            from_state=row.state,
            to_state=RemoteSegmentState.DELETE_STARTED,
        )
        await bench.catalog.remove_remote_segment(
            k.tenant, k.incarnation, k.partition_id, row.base_offset
        )


async def test_two_epochs_copies_of_one_segment_never_collide_and_cleanup_keeps_the_named(
    bench: Bench,
) -> None:
    old = bench.owner(HeldLease(LeaseFence("zombie", 2)))
    await bench.upload_all(old)
    zombie_keys = await bench.keys()
    await _forget_rows(bench)
    new = bench.owner(HeldLease(LeaseFence("successor", 3)))
    await bench.upload_all(new)
    # Every put of the second owner created its object: none met the first one's.
    assert new.counters.uploaded_bytes == old.counters.uploaded_bytes > 0
    successor_keys = sorted(set(await bench.keys()) - set(zombie_keys))
    assert len(successor_keys) == len(zombie_keys)
    assert {_parsed(k).epoch for k in zombie_keys} == {2}
    assert {_parsed(k).epoch for k in successor_keys} == {3}
    # An epoch-0 copy nobody names, and an object of another layout, beside them.
    first = (await bench.rows())[0].base_offset
    await bench.store.put(segment_key(bench.key, first), b"an unnamed epoch-0 copy")
    await bench.store.put("notes/readme.txt", b"not ours")
    cleaner = OrphanCleaner(
        bench.catalog,
        bench.store,
        new.index,
        new.uploader,
        SETTINGS,
        TieringCounters(),
        lambda: wall_ms() + 60_000,  # every object is past the grace period
    )
    removed = await cleaner.run_once()
    assert removed == len(zombie_keys) + 1
    assert await bench.keys() == sorted([*successor_keys, "notes/readme.txt"])
    _uploaded(await bench.read_back())


async def test_a_copy_an_earlier_owner_started_is_made_again_under_the_new_epoch(
    bench: Bench,
) -> None:
    segment = next(s for s in bench.worker.segments(bench.key) if not s.active)
    k = bench.key
    # The earlier owner's row, and a part of its upload (the rest may still be on the way).
    await bench.catalog.add_remote_segment(
        RemoteSegmentRecord(
            k.tenant,
            k.incarnation,
            k.partition_id,
            segment.base_offset,
            segment.next_offset - 1,
            segment.size_bytes,
            0,
            0,
            segment_key(k, segment.base_offset, epoch=2),
            RemoteSegmentState.COPY_STARTED,
            epoch=2,
        )
    )
    stale = segment_key(k, segment.base_offset, ".index", 2)
    await bench.store.put(stale, b"half of an index")
    await bench.upload_all(bench.owner(HeldLease(LeaseFence("successor", 3))))
    rows = await bench.rows()
    assert {(r.epoch, r.state) for r in rows} == {(3, RemoteSegmentState.COPY_FINISHED)}
    assert stale not in await bench.keys()
    assert {_parsed(o).epoch for o in await bench.keys()} == {3}
    _uploaded(await bench.read_back())
