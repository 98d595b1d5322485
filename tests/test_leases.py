"""Node sessions, detection, fencing, the coordinator lease and partition leases, against
moto's DynamoDB (one request at a time) with clocks the tests move by hand: nothing here
waits for real time to pass, except where said."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aioboto3
import pytest

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog_dynamodb.client import Dynamo, TransactionRefused, item
from partitions.catalog_dynamodb.leases import (
    CoordinatorLease,
    LeaseState,
    PartitionRef,
    Source,
    epoch_check,
    grant,
    hand_over,
    list_leases,
    mark_active,
    mark_moving,
    read_lease,
)
from partitions.catalog_dynamodb.nodes import (
    ALIVE,
    FENCED,
    LEFT,
    Ended,
    Liveness,
    NodeWatch,
    Session,
    Timing,
    heartbeat,
    join,
    leave,
)
from partitions.catalog_dynamodb.tables import TableNames, create_tables
from partitions.errors import (
    LeaseConflictError,
    NodeIdInUseError,
    NodeNotAliveError,
    OwnerStillAliveError,
    SessionFencedError,
)
from tests.dynamodb import DynamoDbFaultProxy, Fault, new_table_names

# H, L, M: small, and only ever compared on the fake clocks below.
TIMING = Timing(heartbeat_s=0.5, lease_s=3.0, margin_s=1.0)
PART = PartitionRef("acme", "inc1", 0)


class FakeClock:
    """A monotonic clock that moves only when told; ``sleep`` moves it (and runs
    ``on_sleep`` first, to let something happen meanwhile)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.on_sleep: Callable[[], Awaitable[None]] | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            await self.on_sleep()
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def names(dynamodb_endpoint: str) -> TableNames:
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await create_tables(client, names)
    return names


@pytest.fixture
async def db(dynamodb_endpoint: str, names: TableNames) -> AsyncIterator[Dynamo]:
    dynamo = await Dynamo.open(names, endpoint_url=dynamodb_endpoint, timeout_s=5.0)
    yield dynamo
    await dynamo.close()


@pytest.fixture
async def proxied(dynamodb_endpoint: str, names: TableNames) -> AsyncIterator[Any]:
    """A Dynamo reaching moto through the fault proxy, with a short deadline."""
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    dynamo = await Dynamo.open(names, endpoint_url=proxy.url, timeout_s=0.4)
    yield dynamo, proxy
    await dynamo.close()
    await proxy.close()


async def _row(db: Dynamo, node_id: str) -> dict[str, Any]:
    found = await db.get("test", "leases", keys.node(node_id))
    assert found is not None
    return found


async def _join(db: Dynamo, node_id: str, clock: FakeClock | None = None) -> Session:
    clock = clock or FakeClock()
    return await join(
        db, node_id, f"{node_id}.local:9000", timing=TIMING, clock=clock, sleep=clock.sleep
    )


# --- sessions --------------------------------------------------------------------------------


async def test_join_puts_an_alive_row_and_heartbeats_count_up(db: Dynamo) -> None:
    clock = FakeClock(50.0)
    session = await join(
        db, "n1", "10.0.0.1:9000", timing=TIMING, clock=clock, sleep=clock.sleep, load={"p": 0}
    )
    assert session.valid_until == 50.0 + 3.0 - 1.0
    row = await _row(db, "n1")
    assert row["session"] == session.session_id and row["state"] == ALIVE
    assert (row["counter"], row["address"], row["load"]) == (0, "10.0.0.1:9000", {"p": 0})
    clock.advance(0.5)
    until = await heartbeat(db, session, timing=TIMING, clock=clock, load={"p": 3})
    assert until == 50.5 + 2.0
    await heartbeat(db, session, timing=TIMING, clock=clock)
    row = await _row(db, "n1")
    assert (row["counter"], row["load"]) == (2, {"p": 3})
    # Every start is a new session.
    assert await leave(db, session)
    again = await _join(db, "n1")
    assert again.session_id != session.session_id


async def test_a_second_session_of_a_heartbeating_node_id_is_refused(db: Dynamo) -> None:
    first = await _join(db, "n1")
    clock = FakeClock()

    async def first_beats() -> None:
        await heartbeat(db, first, timing=TIMING, clock=clock)

    clock.on_sleep = first_beats
    with pytest.raises(NodeIdInUseError):
        await join(db, "n1", "elsewhere:1", timing=TIMING, clock=clock, sleep=clock.sleep)
    assert (await _row(db, "n1"))["session"] == first.session_id
    await heartbeat(db, first, timing=TIMING, clock=clock)  # still alive


async def test_a_second_session_takes_over_a_silent_node_id_after_l(db: Dynamo) -> None:
    first = await _join(db, "n1")
    clock = FakeClock(0.0)
    second = await join(db, "n1", "new:1", timing=TIMING, clock=clock, sleep=clock.sleep)
    assert clock.now >= TIMING.lease_s  # it watched the old counter for L on its own clock
    assert clock.now < TIMING.lease_s + TIMING.heartbeat_s + 1e-9
    row = await _row(db, "n1")
    assert (row["session"], row["state"], row["address"]) == (second.session_id, ALIVE, "new:1")
    with pytest.raises(SessionFencedError) as raised:
        await heartbeat(db, first, timing=TIMING, clock=clock)
    assert (raised.value.code, raised.value.status, raised.value.retriable) == (
        "node_fenced",
        503,
        True,
    )


@pytest.mark.parametrize("how", ["left", "fenced"])
async def test_a_node_id_whose_session_is_over_is_joined_at_once(db: Dynamo, how: str) -> None:
    first = await _join(db, "n1")
    if how == "left":
        assert await leave(db, first)
    else:
        watch = NodeWatch(db, timing=TIMING, clock=FakeClock())
        view = (await watch.poll())["n1"]
        assert await watch.fence(view)
    clock = FakeClock(0.0)
    second = await join(db, "n1", "new:1", timing=TIMING, clock=clock, sleep=clock.sleep)
    assert clock.now == 0.0  # no waiting
    assert (await _row(db, "n1"))["session"] == second.session_id


async def test_leave_marks_the_row_left_and_only_once(db: Dynamo) -> None:
    session = await _join(db, "n1")
    assert await leave(db, session)
    assert (await _row(db, "n1"))["state"] == LEFT
    assert not await leave(db, session)
    with pytest.raises(SessionFencedError):
        await heartbeat(db, session, timing=TIMING, clock=FakeClock())


# --- detection and fencing -------------------------------------------------------------------


async def test_a_node_is_dead_after_l_of_an_unchanged_counter_and_not_before(db: Dynamo) -> None:
    await _join(db, "n1")
    observer = FakeClock(7.0)
    watch = NodeWatch(db, timing=TIMING, clock=observer)
    assert not (await watch.poll())["n1"].dead
    observer.advance(TIMING.lease_s - 0.001)
    view = (await watch.poll())["n1"]
    assert not view.dead and [v.node_id for v in watch.live()] == ["n1"]
    observer.advance(0.001)
    view = (await watch.poll())["n1"]
    assert view.dead and view.since == 7.0 and watch.live() == []
    assert [v.node_id for v in watch.dead()] == ["n1"]


async def test_a_heartbeat_landing_during_a_slow_read_counts_from_the_answer(
    db: Dynamo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One clock for node and observer, to compare the two: the observer's read takes 3 s,
    # and the node's heartbeat lands in the middle of it.
    clock = FakeClock(0.0)
    session = await _join(db, "n1", clock)
    liveness = Liveness(db, session, timing=TIMING, clock=clock)
    watch = NodeWatch(db, timing=TIMING, clock=clock)
    real_query = db.query

    async def slow_query(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        clock.advance(1.5)
        assert await liveness.beat()
        found = await real_query(*args, **kwargs)
        clock.advance(1.5)
        return found

    monkeypatch.setattr(db, "query", slow_query)
    await watch.poll()
    monkeypatch.setattr(db, "query", real_query)
    # The node is still valid just before its valid-until: the observer must not call it
    # dead (which it would, had it counted from when it sent the read).
    clock.now = liveness.valid_until - 0.001
    assert liveness.alive
    assert not (await watch.poll())["n1"].dead
    clock.now = liveness.valid_until
    assert not liveness.check()
    clock.now = 3.0 + TIMING.lease_s - 0.001  # L after the answer came
    assert not (await watch.poll())["n1"].dead
    clock.now = 3.0 + TIMING.lease_s
    assert (await watch.poll())["n1"].dead


async def test_a_new_observer_watches_l_itself_before_judging(db: Dynamo) -> None:
    await _join(db, "n1")
    first = FakeClock()
    old_watch = NodeWatch(db, timing=TIMING, clock=first)
    await old_watch.poll()
    first.advance(100.0)
    assert (await old_watch.poll())["n1"].dead
    # Another coordinator, starting now: what the first saw is not its to know.
    second = FakeClock(5.0)
    new_watch = NodeWatch(db, timing=TIMING, clock=second)
    assert not (await new_watch.poll())["n1"].dead
    second.advance(TIMING.lease_s)
    assert (await new_watch.poll())["n1"].dead


async def test_a_node_whose_counter_moves_is_never_dead(db: Dynamo) -> None:
    session = await _join(db, "n1")
    observer = FakeClock()
    watch = NodeWatch(db, timing=TIMING, clock=observer)
    node_clock = FakeClock(-1e6)  # unrelated to the observer's
    for _ in range(5):
        await heartbeat(db, session, timing=TIMING, clock=node_clock)
        observer.advance(1000.0)  # however long the observer was away
        view = (await watch.poll())["n1"]
        assert not view.dead and view.live
    assert await watch.step() == []
    assert (await _row(db, "n1"))["state"] == ALIVE


async def test_a_heartbeat_between_the_read_and_the_fence_makes_the_fence_fail(
    db: Dynamo,
) -> None:
    session = await _join(db, "n1")
    observer = FakeClock()
    watch = NodeWatch(db, timing=TIMING, clock=observer)
    await watch.poll()
    observer.advance(TIMING.lease_s)
    stale = (await watch.poll())["n1"]
    assert stale.dead
    await heartbeat(db, session, timing=TIMING, clock=FakeClock())  # lands after the read
    assert not await watch.fence(stale)
    row = await _row(db, "n1")
    assert (row["state"], row["counter"]) == (ALIVE, 1)
    await heartbeat(db, session, timing=TIMING, clock=FakeClock())  # not fenced
    # Silent for L from the new counter: now the fence lands, and the node hears it.
    await watch.poll()
    observer.advance(TIMING.lease_s)
    fenced = await watch.step()
    assert [(v.node_id, v.counter) for v in fenced] == [("n1", 2)]
    assert (await _row(db, "n1"))["state"] == FENCED
    with pytest.raises(SessionFencedError):
        await heartbeat(db, session, timing=TIMING, clock=FakeClock())


async def test_a_fenced_session_s_liveness_ends_at_its_next_heartbeat(db: Dynamo) -> None:
    clock = FakeClock()
    session = await _join(db, "n1", clock)
    liveness = Liveness(db, session, timing=TIMING, clock=clock)
    assert await liveness.beat() and liveness.alive
    watch = NodeWatch(db, timing=TIMING, clock=FakeClock())
    assert await watch.fence((await watch.poll())["n1"])
    assert liveness.alive  # it does not know yet
    assert not await liveness.beat()
    assert (liveness.alive, liveness.reason, liveness.ended.is_set()) == (
        False,
        Ended.FENCED,
        True,
    )


# --- self-fencing ----------------------------------------------------------------------------


async def test_an_unreachable_catalog_self_fences_at_valid_until_and_not_before(
    proxied: tuple[Dynamo, DynamoDbFaultProxy],
) -> None:
    db, proxy = proxied
    clock = FakeClock(0.0)
    session = await _join(db, "n1", clock)
    liveness = Liveness(db, session, timing=TIMING, clock=clock)
    clock.advance(1.0)
    assert await liveness.beat()
    assert liveness.valid_until == 1.0 + TIMING.lease_s - TIMING.margin_s
    await proxy.down()
    for _ in range(3):
        clock.advance(0.5)
        assert not await liveness.beat()  # no answer: validity stays where it was
        assert liveness.check()
    clock.now = liveness.valid_until - 0.001
    assert liveness.check() and liveness.alive and not liveness.ended.is_set()
    clock.now = liveness.valid_until
    assert not liveness.check()
    assert (liveness.alive, liveness.reason) == (False, Ended.LAPSED)
    # For good: DynamoDB back, the session does not heartbeat again.
    await proxy.up()
    counter = (await _row(db, "n1"))["counter"]
    assert not await liveness.beat()
    assert not liveness.alive
    assert (await _row(db, "n1"))["counter"] == counter == 1


async def test_a_stalled_catalog_self_fences_the_running_liveness_on_time(
    proxied: tuple[Dynamo, DynamoDbFaultProxy],
) -> None:
    db, proxy = proxied
    clock = FakeClock(0.0)
    session = await _join(db, "n1", clock)
    ended_at: list[float] = []
    liveness = Liveness(db, session, timing=TIMING, clock=clock, sleep=clock.sleep)
    liveness.ended.clear()
    proxy.inject(Fault.STALL, "UpdateItem", times=None)

    async def note_end() -> None:
        await liveness.ended.wait()
        ended_at.append(clock.now)

    watcher = asyncio.create_task(note_end())
    await asyncio.wait_for(liveness.run(), timeout=10.0)
    await watcher
    assert liveness.reason is Ended.LAPSED
    assert proxy.given[("UpdateItem", Fault.STALL)] >= 1  # it did try
    # Ended at the first tick at or past valid-until, not a tick earlier.
    assert session.valid_until <= ended_at[0] < session.valid_until + TIMING.heartbeat_s
    proxy.clear()


async def test_a_running_liveness_keeps_a_healthy_session_alive(db: Dynamo) -> None:
    # Real time here: H = 0.1 s, L = 1 s, M = 0.3 s, for about 1.5 s.
    timing = Timing(heartbeat_s=0.1, lease_s=1.0, margin_s=0.3)
    session = await join(db, "n1", "a:1", timing=timing, clock=time.monotonic)
    liveness = Liveness(db, session, timing=timing, clock=time.monotonic, load=lambda: {"p": 7})
    runner = asyncio.create_task(liveness.run())
    await asyncio.sleep(1.5)
    assert liveness.alive and not runner.done()
    assert liveness.valid_until > session.valid_until + 0.5
    row = await _row(db, "n1")
    assert row["counter"] >= 5 and row["load"] == {"p": 7}
    await liveness.leave()
    await asyncio.wait_for(runner, timeout=2.0)
    assert liveness.reason is Ended.LEFT and (await _row(db, "n1"))["state"] == LEFT


# --- the coordinator lease -------------------------------------------------------------------


async def test_of_two_contenders_exactly_one_coordinates(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    a_clock, b_clock = FakeClock(), FakeClock()
    ca = CoordinatorLease(db, a, timing=TIMING, clock=a_clock)
    cb = CoordinatorLease(db, b, timing=TIMING, clock=b_clock)
    won = await asyncio.gather(ca.tick(), cb.tick())
    assert sorted(won) == [False, True]
    holder, other, other_clock = (ca, cb, b_clock) if won[0] else (cb, ca, a_clock)
    for _ in range(10):  # the holder renews: the other never gets it, however long it waits
        assert await holder.tick()
        other_clock.advance(1.0)
        assert not await other.tick()
    found = await db.get("test", "leases", keys.coordinator())
    assert found is not None and found["session"] == holder.session.session_id


async def test_a_silent_coordinator_is_taken_over_after_l_and_not_before(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    a_clock, b_clock = FakeClock(), FakeClock(-50.0)
    ca = CoordinatorLease(db, a, timing=TIMING, clock=a_clock)
    cb = CoordinatorLease(db, b, timing=TIMING, clock=b_clock)
    assert await ca.tick()
    assert not await cb.tick()  # first sight of a's counter
    b_clock.advance(TIMING.lease_s - 0.001)
    assert not await cb.tick()
    b_clock.advance(0.001)
    assert await cb.tick() and cb.held
    # a, back, finds it lost at its next renewal.
    assert not await ca.tick() and not ca.held
    assert await cb.tick()


async def test_a_coordinator_past_its_valid_until_does_not_hold(db: Dynamo) -> None:
    a = await _join(db, "a")
    clock = FakeClock()
    ca = CoordinatorLease(db, a, timing=TIMING, clock=clock)
    assert await ca.tick()
    clock.advance(TIMING.lease_s - TIMING.margin_s)
    assert not ca.held  # not renewed in time: it stops acting


async def test_a_released_coordinator_lease_is_taken_at_once(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    ca = CoordinatorLease(db, a, timing=TIMING, clock=FakeClock())
    cb = CoordinatorLease(db, b, timing=TIMING, clock=FakeClock())
    assert await ca.tick()
    await ca.release()
    assert not ca.held
    assert await cb.tick()


async def test_a_fenced_node_cannot_become_coordinator(db: Dynamo) -> None:
    a = await _join(db, "a")
    watch = NodeWatch(db, timing=TIMING, clock=FakeClock())
    assert await watch.fence((await watch.poll())["a"])
    ca = CoordinatorLease(db, a, timing=TIMING, clock=FakeClock())
    assert not await ca.tick()
    assert await db.get("test", "leases", keys.coordinator()) is None


# --- partition leases ------------------------------------------------------------------------


async def _fence(db: Dynamo, node_id: str) -> None:
    watch = NodeWatch(db, timing=TIMING, clock=FakeClock())
    assert await watch.fence((await watch.poll())[node_id])


async def test_a_first_grant_is_active_at_epoch_one_and_only_once(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    lease = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    assert (lease.owner, lease.session_id, lease.epoch, lease.state, lease.sources) == (
        "a",
        a.session_id,
        1,
        LeaseState.ACTIVE,
        (),
    )
    with pytest.raises(LeaseConflictError):
        await grant(db, PART, node_id="b", session_id=b.session_id, expect=None)
    assert await list_leases(db, "acme", "inc1") == [lease]


async def test_of_two_racing_grants_exactly_one_wins(db: Dynamo) -> None:
    a, b, c = await _join(db, "a"), await _join(db, "b"), await _join(db, "c")
    first = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    answers = await asyncio.gather(
        grant(db, PART, node_id="b", session_id=b.session_id, expect=first),
        grant(db, PART, node_id="c", session_id=c.session_id, expect=first),
        return_exceptions=True,
    )
    won = [x for x in answers if not isinstance(x, BaseException)]
    lost = [x for x in answers if isinstance(x, BaseException)]
    assert len(won) == 1 and len(lost) == 1
    assert isinstance(lost[0], LeaseConflictError)
    assert lost[0].details["current"]["epoch"] == 2
    stored = await read_lease(db, PART)
    assert stored == won[0]
    assert stored.epoch == 2 and stored.state is LeaseState.RECOVERING
    assert stored.sources == (Source("a", a.session_id),)


async def test_a_grant_to_a_grantee_not_alive_is_refused(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    with pytest.raises(NodeNotAliveError):
        await grant(db, PART, node_id="zz", session_id="never-joined", expect=None)
    await _fence(db, "b")
    with pytest.raises(NodeNotAliveError):
        await grant(db, PART, node_id="b", session_id=b.session_id, expect=None)
    first = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    with pytest.raises(NodeNotAliveError):
        await grant(db, PART, node_id="b", session_id=b.session_id, expect=first)
    assert await read_lease(db, PART) == first  # nothing changed


async def test_a_grant_away_from_a_live_owner_is_refused(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    first = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    with pytest.raises(OwnerStillAliveError):
        await grant(db, PART, node_id="b", session_id=b.session_id, expect=first)
    assert await read_lease(db, PART) == first
    # Once it left, the same grant goes through.
    assert await leave(db, a)
    moved = await grant(db, PART, node_id="b", session_id=b.session_id, expect=first)
    assert (moved.owner, moved.epoch) == ("b", 2)


async def test_epochs_increase_and_sources_accumulate(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    first = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    lease = await grant(db, PART, node_id="b", session_id=b.session_id, expect=first)
    lease = await mark_active(db, lease)
    assert lease.state is LeaseState.ACTIVE and lease.epoch == 2
    await _fence(db, "b")
    a2 = await _join(db, "a")  # a restarted: a new session of the same node id
    lease = await grant(db, PART, node_id="a", session_id=a2.session_id, expect=lease)
    assert (lease.owner, lease.session_id, lease.epoch) == ("a", a2.session_id, 3)
    assert lease.sources == (Source("a", a.session_id), Source("b", b.session_id))
    assert lease.state is LeaseState.RECOVERING
    # A grant from a stale read changes nothing.
    c = await _join(db, "c")
    with pytest.raises(LeaseConflictError):
        await grant(db, PART, node_id="c", session_id=c.session_id, expect=first)
    assert await read_lease(db, PART) == lease


async def test_a_grant_from_a_replaced_session_of_the_same_node(db: Dynamo) -> None:
    a = await _join(db, "a")
    lease = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    a2 = await _join(db, "a")
    lease = await grant(db, PART, node_id="a", session_id=a2.session_id, expect=lease)
    assert (lease.session_id, lease.epoch, lease.sources) == (
        a2.session_id,
        2,
        (Source("a", a.session_id),),
    )


async def test_only_the_recovering_owner_marks_the_lease_active(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    first = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    with pytest.raises(LeaseConflictError):
        await mark_active(db, first)  # active already, and a's epoch is about to go
    second = await grant(db, PART, node_id="b", session_id=b.session_id, expect=first)
    with pytest.raises(LeaseConflictError):
        await mark_moving(db, first)  # the old owner, at its old epoch
    assert (await mark_active(db, second)).state is LeaseState.ACTIVE


async def test_a_hand_over_moves_at_once_and_fences_the_old_epoch(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    lease = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    frozen = await mark_moving(db, lease)
    assert frozen.state is LeaseState.MOVING and frozen.epoch == 1
    moved = await hand_over(db, frozen, node_id="b", session_id=b.session_id)
    assert (moved.owner, moved.epoch, moved.state, moved.sources) == (
        "b",
        2,
        LeaseState.RECOVERING,
        (Source("a", a.session_id),),
    )
    assert (await _row(db, "a"))["state"] == ALIVE  # nobody was fenced
    # An owner-side catalog write from the old epoch is refused; from the new one, made.
    for session, epoch, refused in ((a, 1, True), (b, 2, False)):
        key = keys.segment("acme", "inc1", 0, epoch)
        actions = [
            epoch_check(db, PART, session.session_id, epoch),
            {"Put": {"TableName": db.table("catalog"), "Item": {**key, **item(x=1)}}},
        ]
        if refused:
            with pytest.raises(TransactionRefused) as raised:
                await db.transact("test", actions, landed=None)
            assert raised.value.failed(0)
        else:
            await db.transact("test", actions, landed=None)
        assert (await db.get("test", "catalog", key) is None) == refused
    # The old owner cannot hand it over again.
    with pytest.raises(LeaseConflictError):
        await hand_over(db, frozen, node_id="b", session_id=b.session_id)


async def test_a_fenced_owner_cannot_hand_over(db: Dynamo) -> None:
    a, b = await _join(db, "a"), await _join(db, "b")
    lease = await grant(db, PART, node_id="a", session_id=a.session_id, expect=None)
    await _fence(db, "a")
    with pytest.raises(SessionFencedError):
        await hand_over(db, lease, node_id="b", session_id=b.session_id)
    await _fence(db, "b")
    c = await _join(db, "c")
    with pytest.raises(NodeNotAliveError):
        await hand_over(db, lease, node_id="b", session_id=b.session_id)
    assert await read_lease(db, PART) == lease
    assert (await grant(db, PART, node_id="c", session_id=c.session_id, expect=lease)).epoch == 2


def test_timing_keeps_heartbeats_inside_the_lease() -> None:
    with pytest.raises(ValueError):
        Timing(heartbeat_s=2.0, lease_s=3.0, margin_s=1.0)
    with pytest.raises(ValueError):
        Timing(heartbeat_s=0.5, lease_s=3.0, margin_s=3.0)
    assert Timing().valid_until(5.0) == 13.0


@pytest.mark.parametrize("fault", [Fault.DROP_ANSWER, Fault.APPLIED_SERVER_ERROR])
async def test_writes_whose_answer_is_lost_are_found_to_have_happened(
    dynamodb_endpoint: str, names: TableNames, db: Dynamo, fault: Fault
) -> None:
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    faulty = await Dynamo.open(names, endpoint_url=proxy.url, timeout_s=5.0)
    try:
        proxy.inject(fault, "PutItem")
        a = await _join(faulty, "a")  # applied, answer lost: read back, not joined twice
        assert (await _row(db, "a"))["session"] == a.session_id
        b = await _join(db, "b")
        proxy.inject(fault, "TransactWriteItems")
        first = await grant(faulty, PART, node_id="a", session_id=a.session_id, expect=None)
        assert first.epoch == 1 and await read_lease(db, PART) == first
        watch = NodeWatch(faulty, timing=TIMING, clock=FakeClock())
        view = (await watch.poll())["a"]
        proxy.inject(fault, "UpdateItem")
        assert await watch.fence(view)  # not taken for a heartbeat that came between
        proxy.inject(fault, "TransactWriteItems")
        moved = await grant(faulty, PART, node_id="b", session_id=b.session_id, expect=first)
        assert (moved.epoch, moved.sources) == (2, (Source("a", a.session_id),))
        assert proxy.given[("PutItem", fault)] == 1
        assert proxy.given[("UpdateItem", fault)] == 1
        assert proxy.given[("TransactWriteItems", fault)] == 2
    finally:
        await faulty.close()
        await proxy.close()
