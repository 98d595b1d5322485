"""The write-ahead log in object storage: its object format, the writer's acknowledgements,
the replay a taker runs, and deletion below the uploaded ends.

The store is moto's S3 over HTTP; time is a timer the test fires; the fence check is a
coroutine the test controls, as the lease module's will be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions.batch import NewRecord, encode_batch, with_base_offset
from partitions.durability import Durability, LocalDurability, WalEntry
from partitions.errors import PartitionClosedError, SessionFencedError, WalUnavailableError
from partitions.partition_key import PartitionKey
from tests.s3 import S3FaultProxy, create_bucket
from tiered_storage.objects import ObjectStoreUnavailableError, PutResult
from tiered_storage.s3_store import S3ObjectStore
from tiered_storage.wal import WalWriter, _Object
from tiered_storage.wal_format import (
    TRAILER,
    WalCorruptError,
    decode_object,
    encode_object,
    parse_footer,
    parse_trailer,
    parse_wal_key,
    wal_key,
)
from tiered_storage.wal_reader import (
    PartitionReplay,
    ReplayStop,
    delete_uploaded,
    list_session,
)

NODE = "node-a"
SESSION = "s1"
P0 = PartitionKey("acme", "inc-1", 0)
P1 = PartitionKey("acme", "inc-1", 1)
P2 = PartitionKey("beta", "inc-9", 7)


def stored_batch(base_offset: int, count: int) -> bytes:
    """A batch of ``count`` records as the log stores it: its base offset assigned."""
    records = [NewRecord(value=f"v{base_offset + i}".encode()) for i in range(count)]
    batch = encode_batch(records, now_ms=1_700_000_000_000, max_record_bytes=1 << 20)
    return with_base_offset(batch, base_offset)


def entry(partition: PartitionKey, base: int, count: int = 1, epoch: int = 1) -> WalEntry:
    return WalEntry(partition, epoch, base, stored_batch(base, count))


# --- the format ---------------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
entries_strategy = st.lists(
    st.builds(
        lambda tenant, inc, pid, epoch, base, sizes: WalEntry(
            PartitionKey(tenant, inc, pid),
            epoch,
            base,
            b"".join(stored_batch(base + sum(sizes[:i]), n) for i, n in enumerate(sizes)),
        ),
        names,
        names,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**62),
        st.lists(st.integers(1, 5), min_size=1, max_size=3),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    node=names,
    session=names,
    seq=st.integers(0, 2**64 - 1),
    entries=entries_strategy,
)
def test_an_object_round_trips(node: str, session: str, seq: int, entries: list[WalEntry]) -> None:
    data = encode_object(node, session, seq, entries)
    decoded = decode_object(data)
    assert (decoded.node, decoded.session, decoded.seq) == (node, session, seq)
    assert list(decoded.entries) == entries
    # The footer alone, as a reader with ranged gets sees it, lists the same entries.
    trailer = parse_trailer(data[-TRAILER.size :], len(data))
    footer_bytes = data[trailer.footer_position : trailer.footer_position + trailer.footer_length]
    footer = parse_footer(footer_bytes, trailer)
    assert [(i.partition, i.epoch, i.base_offset, i.next_offset) for i in footer.entries] == [
        (e.partition, e.epoch, e.base_offset, e.next_offset) for e in entries
    ]
    assert wal_key(node, session, seq).endswith(f"/{seq:020d}")
    assert parse_wal_key(wal_key(node, session, seq)) == (node, session, seq)


def test_a_flipped_bit_anywhere_in_an_object_is_detected() -> None:
    data = encode_object(NODE, SESSION, 3, [entry(P0, 10, 2), entry(P2, 0, 3, epoch=4)])
    assert decode_object(data).seq == 3
    for pos in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[pos] ^= bit
            with pytest.raises(WalCorruptError):
                decode_object(bytes(damaged))
    for cut in (1, TRAILER.size, len(data) // 2):
        with pytest.raises(WalCorruptError):
            decode_object(data[:-cut])


def test_entries_an_object_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match="starts at offset"):
        encode_object(NODE, SESSION, 1, [WalEntry(P0, 1, 5, stored_batch(4, 1))])
    with pytest.raises(ValueError, match="inside a batch"):
        encode_object(NODE, SESSION, 1, [WalEntry(P0, 1, 4, stored_batch(4, 1)[:-1])])
    with pytest.raises(ValueError, match="node id"):
        encode_object("a/b", SESSION, 1, [])


async def test_local_durability_waits_for_nothing() -> None:
    local: Durability = LocalDurability()
    await local.make_durable(entry(P0, 0))
    await local.close()


# --- helpers for the writer -----------------------------------------------------------------


class ManualTimer:
    """The writer's sleep: it waits until the test fires it."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        await future

    @property
    def armed(self) -> bool:
        return any(not f.done() for f in self.waiting)

    def fire(self) -> None:
        for future in self.waiting:
            if not future.done():
                future.set_result(None)
        self.waiting.clear()


class Fence:
    """The lease module's check, as a test holds it: ``alive`` is the answer; while
    ``gate`` is clear, a check waits."""

    def __init__(self) -> None:
        self.alive = True
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def check(self) -> bool:
        self.calls += 1
        await self.gate.wait()
        return self.alive


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a state the writer reaches on its own task after a store round trip."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state owned by code under test
            await asyncio.sleep(0.005)


async def open_store(endpoint: str, bucket: str, **settings: Any) -> S3ObjectStore:
    return await S3ObjectStore.open(
        bucket, "cluster", endpoint_url=endpoint, timeout_s=10.0, **settings
    )


@pytest.fixture
async def bucket(s3_endpoint: str) -> str:
    return await create_bucket(s3_endpoint)


@pytest.fixture
async def store(s3_endpoint: str, bucket: str) -> AsyncIterator[S3ObjectStore]:
    s3 = await open_store(s3_endpoint, bucket)
    yield s3
    await s3.close()


async def objects(store: S3ObjectStore, session: str = SESSION) -> dict[int, bytes]:
    return {o.seq: await store.get(o.key) for o in await list_session(store, NODE, session)}


def spawn(writer: WalWriter, *entries: WalEntry) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(writer.make_durable(e)) for e in entries]


async def settle() -> None:
    """Let every ready task run (the writer's tasks are then waiting on the timer, the
    store or the fence)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- the writer ---------------------------------------------------------------------------------


async def test_one_object_per_interval_for_every_partition_acknowledged_after_the_check(
    store: S3ObjectStore,
) -> None:
    timer, fence = ManualTimer(), Fence()
    writer = WalWriter(
        store, node=NODE, session=SESSION, check_fence=fence.check, sleep=timer.sleep
    )
    writer.start()
    first = spawn(writer, entry(P0, 0, 2), entry(P1, 0), entry(P2, 5, 3), entry(P0, 2))
    await until(lambda: timer.armed)
    await settle()
    assert await objects(store) == {}
    assert not any(t.done() for t in first)

    fence.gate.clear()
    timer.fire()
    await until(lambda: fence.calls == 1)
    # The object is written and the check is under way: nothing is acknowledged yet.
    written = await objects(store)
    assert list(written) == [1]
    assert [(e.partition, e.base_offset) for e in decode_object(written[1]).entries] == [
        (P0, 0),
        (P1, 0),
        (P2, 5),
        (P0, 2),
    ]
    await settle()
    assert not any(t.done() for t in first)
    # Entries that come in meanwhile go in the next object.
    second = spawn(writer, entry(P1, 1), entry(P2, 8))
    fence.gate.set()
    await asyncio.gather(*first)
    assert writer.committed_seq == 1
    assert not any(t.done() for t in second)

    await until(lambda: timer.armed)
    timer.fire()
    await asyncio.gather(*second)
    written = await objects(store)
    assert list(written) == [1, 2]
    assert [(e.partition, e.base_offset) for e in decode_object(written[2]).entries] == [
        (P1, 1),
        (P2, 8),
    ]
    await writer.close()
    with pytest.raises(PartitionClosedError):
        await writer.make_durable(entry(P0, 3))


async def test_a_full_buffer_flushes_before_the_interval(store: S3ObjectStore) -> None:
    timer, fence = ManualTimer(), Fence()
    batch_size = len(stored_batch(0, 1))
    writer = WalWriter(
        store,
        node=NODE,
        session=SESSION,
        check_fence=fence.check,
        sleep=timer.sleep,
        flush_bytes=3 * batch_size,
    )
    writer.start()
    small = spawn(writer, entry(P0, 0), entry(P0, 1))
    await until(lambda: timer.armed)
    await settle()
    assert not any(t.done() for t in small)
    # The third batch reaches flush_bytes: the timer is never fired.
    small += spawn(writer, entry(P1, 0))
    await asyncio.gather(*small)
    assert list(await objects(store)) == [1]
    await writer.close()


async def test_a_fenced_check_fails_the_waiters_and_nothing_after_is_acknowledged(
    store: S3ObjectStore,
) -> None:
    timer, fence = ManualTimer(), Fence()
    writer = WalWriter(
        store, node=NODE, session=SESSION, check_fence=fence.check, sleep=timer.sleep
    )
    writer.start()
    first = spawn(writer, entry(P0, 0))
    await until(lambda: timer.armed)
    timer.fire()
    await asyncio.gather(*first)
    fence.alive = False
    fence.gate.clear()
    doomed = spawn(writer, entry(P0, 1), entry(P1, 0))
    await until(lambda: timer.armed)
    timer.fire()
    await until(lambda: fence.calls == 2)
    later = spawn(writer, entry(P0, 2))  # pending while the check runs
    fence.gate.set()
    for task in [*doomed, *later]:
        with pytest.raises(SessionFencedError) as failed:
            await task
        assert (failed.value.code, failed.value.status, failed.value.retriable) == (
            "node_fenced",
            503,
            True,
        )
    assert writer.fenced
    with pytest.raises(SessionFencedError):
        await writer.make_durable(entry(P0, 3))
    await writer.flush()
    await writer.close()
    # Object 2 was written (the check came after); nothing past it ever is.
    assert list(await objects(store)) == [1, 2]
    assert writer.committed_seq == 1


async def test_a_store_outage_fails_the_waiters_retriably_and_the_next_flush_works(
    s3_endpoint: str, bucket: str
) -> None:
    proxy = await S3FaultProxy(s3_endpoint).start()
    store = await open_store(proxy.url, bucket, max_attempts=1)
    fence = Fence()
    try:
        writer = WalWriter(store, node=NODE, session=SESSION, check_fence=fence.check)
        proxy.fail_match = lambda line: line.startswith("PUT")
        proxy.fail_next = [(503, "ServiceUnavailable")]
        lost = spawn(writer, entry(P0, 0, 2))
        await settle()
        await writer.flush()
        with pytest.raises(WalUnavailableError) as failed:
            await lost[0]
        assert (failed.value.status, failed.value.retriable) == (503, True)
        assert await objects(store) == {}
        assert fence.calls == 0  # nothing written, so nothing to check
        assert writer.backlog_bytes > 0

        kept = spawn(writer, entry(P0, 2), entry(P1, 0))
        await settle()
        await writer.flush()
        await asyncio.gather(*kept)
        # The failed object went first, same seq and bytes, then the new one.
        assert list(await objects(store)) == [1, 2]
        assert writer.backlog_bytes == 0
        replay = PartitionReplay(store, NODE, SESSION, P0, 0)
        assert [e.base_offset async for e in replay] == [0, 2]
        assert replay.outcome is not None and replay.outcome.stop is ReplayStop.END
        await writer.close()
    finally:
        await store.close()
        await proxy.close()


class LostAnswerStore:
    """Puts the object, then answers as if the store had not: a timeout after sending."""

    def __init__(self, inner: S3ObjectStore) -> None:
        self.inner = inner
        self.lose_next = 1
        self.results: list[PutResult] = []

    async def put(self, key: str, source: bytes | Path) -> PutResult:
        result = await self.inner.put(key, source)
        self.results.append(result)
        if self.lose_next:
            self.lose_next -= 1
            raise ObjectStoreUnavailableError("the answer was lost")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_retried_put_of_the_same_seq_counts_as_written(store: S3ObjectStore) -> None:
    lossy = LostAnswerStore(store)
    writer = WalWriter(lossy, node=NODE, session=SESSION, check_fence=Fence().check)
    first = spawn(writer, entry(P0, 0))
    await settle()
    await writer.flush()
    with pytest.raises(WalUnavailableError):
        await first[0]
    landed = await objects(store)
    assert list(landed) == [1]

    second = spawn(writer, entry(P0, 1))
    await settle()
    await writer.flush()
    await second[0]
    assert lossy.results == [PutResult.CREATED, PutResult.ALREADY_EXISTS, PutResult.CREATED]
    after = await objects(store)
    assert list(after) == [1, 2]
    assert after[1] == landed[1]
    assert writer.committed_seq == 2
    await writer.close()


async def test_other_bytes_under_the_sessions_key_fence_the_writer(store: S3ObjectStore) -> None:
    other = encode_object(NODE, SESSION, 1, [entry(P1, 0)])
    assert await store.put(wal_key(NODE, SESSION, 1), other) is PutResult.CREATED
    writer = WalWriter(store, node=NODE, session=SESSION, check_fence=Fence().check)
    task = spawn(writer, entry(P0, 0))
    await settle()
    await writer.flush()
    with pytest.raises(SessionFencedError, match="other bytes"):
        await task[0]
    assert (await objects(store))[1] == other
    await writer.close()


# --- replay and deletion --------------------------------------------------------------------


async def write_rounds(store: S3ObjectStore, rounds: list[list[WalEntry]]) -> None:
    writer = WalWriter(store, node=NODE, session=SESSION, check_fence=Fence().check)
    for batch in rounds:
        tasks = spawn(writer, *batch)
        await settle()
        await writer.flush()
        await asyncio.gather(*tasks)
    await writer.close()


ROUNDS = [
    [entry(P0, 0, 3), entry(P1, 0)],
    [entry(P1, 1, 2), entry(P0, 3), entry(P0, 4, 2)],
    [entry(P2, 40)],
    [entry(P0, 6, 4), entry(P2, 41)],
]


@pytest.mark.parametrize(
    ("from_offset", "expected"),
    [(0, [0, 3, 4, 6]), (3, [3, 4, 6]), (4, [4, 6]), (5, [4, 6]), (9, [6]), (10, [])],
)
async def test_replay_yields_a_partitions_entries_from_an_offset_in_order(
    store: S3ObjectStore, from_offset: int, expected: list[int]
) -> None:
    await write_rounds(store, ROUNDS)
    replay = PartitionReplay(store, NODE, SESSION, P0, from_offset)
    got = [e async for e in replay]
    assert [e.base_offset for e in got] == expected
    wanted = [e for r in ROUNDS for e in r if e.partition == P0 and e.base_offset in expected]
    assert got == wanted
    assert replay.outcome is not None
    assert (replay.outcome.stop, replay.outcome.next_offset) == (
        ReplayStop.END,
        max(10, from_offset),
    )


async def test_replay_stops_at_the_first_gap(store: S3ObjectStore) -> None:
    await write_rounds(store, ROUNDS)
    await store.client.delete_object(
        Bucket=store.bucket, Key=f"cluster/{wal_key(NODE, SESSION, 2)}"
    )
    replay = PartitionReplay(store, NODE, SESSION, P0, 0)
    assert [e.base_offset async for e in replay] == [0]
    assert replay.outcome is not None
    assert replay.outcome.stop is ReplayStop.GAP
    assert replay.outcome.next_offset == 3
    assert replay.outcome.key == wal_key(NODE, SESSION, 4)
    # P2 had nothing in object 2: its replay is whole.
    whole = PartitionReplay(store, NODE, SESSION, P2, 40)
    assert [e.base_offset async for e in whole] == [40, 41]
    assert whole.outcome is not None and whole.outcome.stop is ReplayStop.END


def _flip_at(data: bytes, where: str) -> bytes:
    trailer = parse_trailer(data[-TRAILER.size :], len(data))
    footer = parse_footer(
        data[trailer.footer_position : trailer.footer_position + trailer.footer_length], trailer
    )
    p0 = next(i for i in footer.entries if i.partition == P0)
    pos = {
        "trailer": len(data) - TRAILER.size + 2,
        "footer": trailer.footer_position + 3,
        "entry header": p0.position + 9,
        "entry batch": p0.position + p0.length - 1,
    }[where]
    damaged = bytearray(data)
    damaged[pos] ^= 0x10
    return bytes(damaged)


@pytest.mark.parametrize("where", ["trailer", "footer", "entry header", "entry batch"])
async def test_replay_stops_at_a_corrupt_object(store: S3ObjectStore, where: str) -> None:
    await write_rounds(store, ROUNDS)
    key = wal_key(NODE, SESSION, 2)
    damaged = _flip_at(await store.get(key), where)
    # Bypass the create-only rule: rot in the bucket.
    await store.client.put_object(Bucket=store.bucket, Key=f"cluster/{key}", Body=damaged)
    replay = PartitionReplay(store, NODE, SESSION, P0, 0)
    assert [e.base_offset async for e in replay] == [0]
    assert replay.outcome is not None
    assert (replay.outcome.stop, replay.outcome.key, replay.outcome.next_offset) == (
        ReplayStop.CORRUPT,
        key,
        3,
    )


async def test_deletion_removes_only_objects_wholly_below_the_uploaded_ends(
    store: S3ObjectStore,
) -> None:
    await write_rounds(store, ROUNDS)
    # P0 uploaded to 6, P1 to 3, P2 not at all: objects 1 and 2 go; 3 and 4 hold P2.
    done = await delete_uploaded(store, NODE, SESSION, {P0: 6, P1: 3, P2: 40})
    assert done.deleted == [wal_key(NODE, SESSION, 1), wal_key(NODE, SESSION, 2)]
    assert done.low_water_seq == 3
    assert list(await objects(store)) == [3, 4]
    # A partition the caller did not name keeps its objects.
    kept = await delete_uploaded(store, NODE, SESSION, {P0: 100})
    assert kept.deleted == [] and kept.low_water_seq == 3
    # Once P2 is uploaded past 41, the rest goes; replay past the uploaded ends finds nothing.
    gone = await delete_uploaded(store, NODE, SESSION, {P0: 10, P2: 42})
    assert gone.deleted == [wal_key(NODE, SESSION, 3), wal_key(NODE, SESSION, 4)]
    assert gone.low_water_seq is None
    replay = PartitionReplay(store, NODE, SESSION, P0, 10)
    assert [e async for e in replay] == []
    assert replay.outcome is not None and replay.outcome.stop is ReplayStop.END


# --- a zombie writer and a taker ---------------------------------------------------------------


class CheckThenWriteWriter(WalWriter):
    """The wrong order, for the test that shows why it is wrong."""

    async def _write_then_check(self, obj: _Object) -> bool:
        alive = await self._still_owner()
        await self._put(obj)
        return alive


class SteppedStore:
    """A store whose puts are steps of the schedule."""

    def __init__(self, inner: S3ObjectStore, step: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.step = step

    async def put(self, key: str, source: bytes | Path) -> PutResult:
        await self.step()
        return await self.inner.put(key, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


ROUNDS_OF_ZOMBIE = 3


async def play_takeover(
    endpoint: str, writer_class: type[WalWriter], intervene_at: int
) -> tuple[set[int], set[int]]:
    """A zombie node keeps writing partition P0 while a taker fences its session and replays
    its WAL. The zombie's puts and fence checks are the schedule's steps; the taker acts
    just before step ``intervene_at`` (after all of them when past the last). Answers the
    offsets the zombie acknowledged and those the taker's replay found."""
    bucket = await create_bucket(endpoint)
    lease = {"state": "alive"}
    steps = 0
    replayed: set[int] = set()
    taken = False
    taker_store = await open_store(endpoint, bucket)
    zombie_store = await open_store(endpoint, bucket)

    async def taker() -> None:
        nonlocal taken
        taken = True
        lease["state"] = "fenced"  # the conditional write on the zombie's node row
        replay = PartitionReplay(taker_store, NODE, SESSION, P0, 0)
        async for found in replay:
            replayed.update(range(found.base_offset, found.next_offset))
        assert replay.outcome is not None and replay.outcome.stop is ReplayStop.END

    async def step() -> None:
        nonlocal steps
        if steps == intervene_at and not taken:
            await taker()
        steps += 1

    async def check_fence() -> bool:
        await step()
        return lease["state"] == "alive"

    writer = writer_class(
        SteppedStore(zombie_store, step),
        node=NODE,
        session=SESSION,
        check_fence=check_fence,
    )
    acknowledged: set[int] = set()
    try:
        for n in range(ROUNDS_OF_ZOMBIE):
            appended = entry(P0, 2 * n, 2)
            tasks = spawn(writer, appended, entry(P1, n))
            await settle()
            await writer.flush()
            answers = await asyncio.gather(*tasks, return_exceptions=True)
            if answers[0] is None:
                acknowledged.update(range(appended.base_offset, appended.next_offset))
            else:
                assert isinstance(answers[0], SessionFencedError)
        if not taken:
            await taker()
        await writer.close()
    finally:
        await zombie_store.close()
        await taker_store.close()
    return acknowledged, replayed


# Two steps per round (a put and a check), and the taker may also come after all of them.
SCHEDULES = range(2 * ROUNDS_OF_ZOMBIE + 1)


async def test_write_then_check_never_acknowledges_what_a_taker_misses(s3_endpoint: str) -> None:
    acknowledged_somewhere = 0
    for intervene_at in SCHEDULES:
        acknowledged, replayed = await play_takeover(s3_endpoint, WalWriter, intervene_at)
        assert acknowledged <= replayed, f"taker before step {intervene_at}"
        acknowledged_somewhere += len(acknowledged)
    assert acknowledged_somewhere > 0  # the zombie did get acknowledgements in


async def test_check_then_write_acknowledges_what_a_taker_misses(s3_endpoint: str) -> None:
    missed = {}
    for intervene_at in SCHEDULES:
        acknowledged, replayed = await play_takeover(
            s3_endpoint, CheckThenWriteWriter, intervene_at
        )
        if acknowledged - replayed:
            missed[intervene_at] = sorted(acknowledged - replayed)
    # The taker came between a passing check and its put: that put's entry, acknowledged,
    # is not in the replay. With the check first, the steps are check 0, put 1, check 2...
    assert missed == {1: [0, 1], 3: [2, 3], 5: [4, 5]}
