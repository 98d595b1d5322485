"""The coordinator's takeover loop against moto's DynamoDB (one request at a time): real
node sessions, real leases, and monotonic clocks the tests move by hand (H, L and M as in
tests/test_leases.py). Nothing here waits for real time to pass."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aioboto3
import pytest

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_dynamodb.coordinator import (
    LOAD_BYTES,
    LOAD_PARTITIONS,
    Coordinator,
    StepResult,
    place,
)
from partitions.catalog_dynamodb.leases import (
    Lease,
    LeaseState,
    PartitionRef,
    Source,
    grant,
    leases_of,
    list_leases,
)
from partitions.catalog_dynamodb.nodes import (
    ALIVE,
    FENCED,
    NodeView,
    Session,
    fence,
    heartbeat,
    join,
    leave,
)
from partitions.catalog_dynamodb.tables import DEFINITIONS, TableNames, create_tables
from tests.dynamodb import DynamoDbFaultProxy, fresh_dynamo, new_table_names
from tests.test_leases import TIMING, FakeClock

TENANT, INC = "acme", "inc1"


@pytest.fixture
async def db(dynamodb_endpoint: str) -> AsyncIterator[Dynamo]:
    async with fresh_dynamo(dynamodb_endpoint) as dynamo:
        yield dynamo


async def _join(db: Dynamo, node_id: str, **load: int) -> Session:
    clock = FakeClock()
    return await join(
        db,
        node_id,
        f"{node_id}.local:9000",
        timing=TIMING,
        clock=clock,
        sleep=clock.sleep,
        load=load,
    )


async def _own(db: Dynamo, session: Session, pids: range) -> list[PartitionRef]:
    """First grants of ``pids`` to ``session``."""
    refs = [PartitionRef(TENANT, INC, pid) for pid in pids]
    for ref in refs:
        await grant(db, ref, node_id=session.node_id, session_id=session.session_id, expect=None)
    return refs


async def _beat(db: Dynamo, *sessions: Session) -> None:
    for session in sessions:
        await heartbeat(db, session, timing=TIMING, clock=FakeClock())


async def _step_until(
    coordinator: Coordinator,
    clock: FakeClock,
    db: Dynamo,
    beating: tuple[Session, ...],
    *,
    rounds: int,
) -> list[StepResult]:
    """Step ``rounds`` times, H apart on ``clock``, the ``beating`` sessions heartbeating
    before each step."""
    results = []
    for _ in range(rounds):
        await _beat(db, *beating)
        results.append(await coordinator.step())
        clock.advance(TIMING.heartbeat_s)
    return results


def _rounds_to_l() -> int:
    """Rounds H apart from a coordinator's first until L has passed on its clock: in the
    last, what went silent at the first is judged dead."""
    return int(TIMING.lease_s / TIMING.heartbeat_s) + 1


def _rounds_past_l() -> int:
    return _rounds_to_l() + 1


async def _leases(db: Dynamo) -> dict[int, Lease]:
    return {lease.partition.partition: lease for lease in await list_leases(db, TENANT, INC)}


# --- the index -------------------------------------------------------------------------------


async def test_a_node_s_leases_are_listed_by_node_and_by_session(db: Dynamo) -> None:
    n1, n2 = await _join(db, "n1"), await _join(db, "n2")
    await _own(db, n1, range(3))
    await _own(db, n2, range(3, 5))
    assert [lease.partition.partition for lease in await leases_of(db, "n1")] == [0, 1, 2]
    assert [x.partition.partition for x in await leases_of(db, "n1", n1.session_id)] == [0, 1, 2]
    assert await leases_of(db, "n1", "another session") == []
    assert await leases_of(db, "NODES") == []  # node rows are not in the index
    # Moved on: listed under its new owner only, as it is now.
    assert await leave(db, n1)
    lease = (await leases_of(db, "n1"))[0]
    moved = await grant(db, lease.partition, node_id="n2", session_id=n2.session_id, expect=lease)
    assert [x.partition.partition for x in await leases_of(db, "n1")] == [1, 2]
    assert moved in await leases_of(db, "n2", n2.session_id)


async def test_create_tables_adds_the_index_to_a_leases_table_made_before_it(
    dynamodb_endpoint: str,
) -> None:
    names: TableNames = new_table_names()
    old = {k: v for k, v in DEFINITIONS["leases"].items() if k != "GlobalSecondaryIndexes"}
    old["AttributeDefinitions"] = [
        a for a in old["AttributeDefinitions"] if a["AttributeName"] in ("pk", "sk")
    ]
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await client.create_table(TableName=names.leases, **old)
        created = await create_tables(client, names)
        assert names.leases not in created and names.catalog in created
        table = (await client.describe_table(TableName=names.leases))["Table"]
        assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by_owner"]
        assert await create_tables(client, names) == []  # nothing more to do


# --- placement -------------------------------------------------------------------------------


def _view(node_id: str, **load: int) -> NodeView:
    return NodeView(node_id, f"s-{node_id}", "", ALIVE, 0, load, 0.0, dead=False)


def _orphans(owner: str, count: int) -> list[Lease]:
    return [
        Lease(PartitionRef(TENANT, INC, pid), owner, f"s-{owner}", 1, LeaseState.ACTIVE)
        for pid in range(count)
    ]


def test_placement_spreads_a_dead_node_s_partitions_by_partition_count() -> None:
    live = [_view("a", partitions=4), _view("b"), _view("c", partitions=1)]
    nodes = {v.node_id: v for v in [*live, _view("dead", partitions=6)]}
    chosen = place(_orphans("dead", 6), live, nodes)
    assert Counter(chosen.values()) == {"b": 4, "c": 2}  # everyone ends at 4 or 3
    assert place(_orphans("dead", 2), [], nodes) == {}


def test_placement_weighs_bytes_per_second_in_partitions_of_the_mean_rate() -> None:
    # 8 partitions, 8000 B/s: a partition is 1000 B/s on average. a costs 2, b 2 + 4;
    # the dead node's partitions weigh 1 + 1000/1000 each.
    quiet = _view("a", **{LOAD_PARTITIONS: 2, LOAD_BYTES: 0})
    busy = _view("b", **{LOAD_PARTITIONS: 2, LOAD_BYTES: 4000})
    dead = _view("dead", **{LOAD_PARTITIONS: 4, LOAD_BYTES: 4000})
    nodes = {v.node_id: v for v in (quiet, busy, dead)}
    chosen = place(_orphans("dead", 4), [quiet, busy], nodes)
    assert Counter(chosen.values()) == {"a": 3, "b": 1}


# --- takeovers -------------------------------------------------------------------------------


async def test_a_dead_node_s_partitions_all_go_to_live_nodes_spread_by_load(db: Dynamo) -> None:
    n1 = await _join(db, "n1", partitions=6)
    n2 = await _join(db, "n2", partitions=4)
    n3, n4 = await _join(db, "n3"), await _join(db, "n4", partitions=1)
    await _own(db, n1, range(6))
    clock = FakeClock()
    coordinator = Coordinator(db, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    results = await _step_until(coordinator, clock, db, (n2, n3, n4), rounds=_rounds_past_l())
    assert all(r.coordinating for r in results)
    fenced_at = [i for i, r in enumerate(results) if r.fenced]
    assert len(fenced_at) == 1  # once, and not before L on the coordinator's clock
    assert fenced_at[0] * TIMING.heartbeat_s >= TIMING.lease_s
    [when] = fenced_at
    assert [v.node_id for v in results[when].fenced] == ["n1"]
    assert len(results[when].granted) == 6 and results[when].waiting == 0
    assert not any(r.granted for i, r in enumerate(results) if i != when)
    sessions = {s.node_id: s.session_id for s in (n2, n3, n4)}
    leases = await _leases(db)
    for lease in leases.values():
        assert (lease.epoch, lease.state) == (2, LeaseState.RECOVERING)
        assert lease.sources == (Source("n1", n1.session_id),)
        assert lease.session_id == sessions[lease.owner]
    assert Counter(lease.owner for lease in leases.values()) == {"n3": 4, "n4": 2}
    assert (await db.get("t", "leases", keys.node("n1")) or {})["state"] == FENCED


async def test_a_node_that_heartbeats_in_time_is_never_fenced(db: Dynamo) -> None:
    n1, n2 = await _join(db, "n1"), await _join(db, "n2")
    await _own(db, n1, range(3))
    clock = FakeClock()
    coordinator = Coordinator(db, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    results = await _step_until(coordinator, clock, db, (n1, n2), rounds=3 * _rounds_past_l())
    assert all(r.coordinating and not r.fenced and not r.granted for r in results)
    assert (await db.get("t", "leases", keys.node("n1")) or {})["state"] == ALIVE
    assert {(x.owner, x.epoch) for x in (await _leases(db)).values()} == {("n1", 1)}


async def test_a_left_session_s_leases_are_granted_without_waiting(db: Dynamo) -> None:
    n1, n2 = await _join(db, "n1"), await _join(db, "n2")
    await _own(db, n1, range(3))
    assert await leave(db, n1)
    clock = FakeClock()
    coordinator = Coordinator(db, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    result = await coordinator.step()  # a new watch, its clock never moved
    assert result.coordinating and not result.fenced and len(result.granted) == 3
    for lease in (await _leases(db)).values():
        assert (lease.owner, lease.epoch, lease.sources) == (
            "n2",
            2,
            (Source("n1", n1.session_id),),
        )


async def test_a_restarted_node_s_old_session_s_leases_are_granted(db: Dynamo) -> None:
    old = await _join(db, "n1")
    await _own(db, old, range(2))
    assert await leave(db, old)
    new = await _join(db, "n1")  # the same node id, a new session: alive again
    n2 = await _join(db, "n2", partitions=5)
    clock = FakeClock()
    coordinator = Coordinator(db, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    result = await coordinator.step()
    assert len(result.granted) == 2
    for lease in (await _leases(db)).values():
        # The least loaded live node is n1 itself, as its new session.
        assert (lease.owner, lease.session_id, lease.epoch) == ("n1", new.session_id, 2)
        assert lease.sources == (Source("n1", old.session_id),)
    assert not (await coordinator.step()).granted  # the new session's leases stay


async def test_two_coordinators_at_once_grant_each_partition_once(db: Dynamo) -> None:
    # The coordinator lease lets one session hold it: two loops of that session both act,
    # each with its own view and clock, as an old and a new coordinator do for a moment.
    n1, n2, n3 = await _join(db, "n1"), await _join(db, "n2"), await _join(db, "n3")
    await _own(db, n1, range(8))
    clocks = FakeClock(), FakeClock(5000.0)
    pair = [Coordinator(db, n2, timing=TIMING, clock=c, sleep=c.sleep) for c in clocks]
    assert await pair[0].lease.tick()  # from now on both hold it (the same session's row)
    rounds: list[tuple[StepResult, ...]] = []
    for _ in range(_rounds_past_l()):
        await _beat(db, n2, n3)
        both = tuple(await asyncio.gather(*(c.step() for c in pair)))
        assert all(r.coordinating for r in both)
        rounds.append(both)
        for clock in clocks:
            clock.advance(TIMING.heartbeat_s)
    results = [r for both in rounds for r in both]
    assert sum(len(r.fenced) for r in results) == 1  # one fenced, the other saw it fenced
    # In that round both set out to grant what they read still held (the later reader
    # finds fewer): whatever one granted first, the other was refused, and left it for a
    # later step, which found nothing left.
    [race] = [both for both in rounds if any(r.fenced for r in both)]
    tried = [len(r.granted) + r.waiting for r in race]
    assert min(tried) > 0 and sum(tried) > 8
    assert sum(len(r.granted) for r in race) == 8
    granted = [g.lease.partition.partition for r in results for g in r.granted]
    assert sorted(granted) == list(range(8))  # each once, by one or the other
    for lease in (await _leases(db)).values():
        assert lease.epoch == 2 and lease.sources == (Source("n1", n1.session_id),)
        assert lease.owner in ("n2", "n3")


async def test_the_next_coordinator_finishes_a_takeover(db: Dynamo) -> None:
    n1, n2, n3 = await _join(db, "n1"), await _join(db, "n2"), await _join(db, "n3")
    await _own(db, n1, range(6))
    first_clock = FakeClock()
    first = Coordinator(
        db, n2, timing=TIMING, clock=first_clock, sleep=first_clock.sleep, max_grants=3
    )
    results = await _step_until(first, first_clock, db, (n2, n3), rounds=_rounds_to_l())
    assert sum(len(r.granted) for r in results) == 3
    assert [r.waiting for r in results if r.fenced] == [3]
    # The first coordinator stops here, without releasing its lease (its node lives on).
    clock = FakeClock(9000.0)
    second = Coordinator(db, n3, timing=TIMING, clock=clock, sleep=clock.sleep)
    results = await _step_until(second, clock, db, (n2, n3), rounds=_rounds_past_l())
    held = [i for i, r in enumerate(results) if r.coordinating]
    assert held and held[0] * TIMING.heartbeat_s >= TIMING.lease_s  # took it after L
    assert len(results[held[0]].granted) == 3 and not results[held[0]].fenced
    leases = await _leases(db)
    assert {(x.epoch, x.sources) for x in leases.values()} == {(2, (Source("n1", n1.session_id),))}
    assert sum(len(r.granted) for r in results) == 3


async def test_nothing_is_granted_to_a_node_that_is_dead(
    db: Dynamo, monkeypatch: pytest.MonkeyPatch
) -> None:
    n1 = await _join(db, "n1")
    n2 = await _join(db, "n2", partitions=50)
    n3 = await _join(db, "n3")  # the least loaded, but it dies
    await _own(db, n1, range(4))
    clock = FakeClock()
    coordinator = Coordinator(db, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    results = await _step_until(coordinator, clock, db, (n2, n3), rounds=_rounds_to_l() - 1)
    assert not any(r.fenced for r in results)
    # As n1's L runs out, n3 is fenced by another observer just after this coordinator
    # read the rows: it still believes n3 live, chooses it, and is refused.
    poll = coordinator.watch.poll

    async def poll_then_n3_fenced() -> dict[str, NodeView]:
        views = await poll()
        assert await fence(db, "n3", n3.session_id, views["n3"].counter)
        monkeypatch.setattr(coordinator.watch, "poll", poll)
        return views

    monkeypatch.setattr(coordinator.watch, "poll", poll_then_n3_fenced)
    await _beat(db, n2)
    refused = await coordinator.step()
    assert [v.node_id for v in refused.fenced] == ["n1"]
    assert not refused.granted and refused.waiting == 4
    assert {(x.owner, x.epoch) for x in (await _leases(db)).values()} == {("n1", 1)}
    # The next step reads n3's row fenced: everything goes to n2, the one live node.
    result = await coordinator.step()
    assert len(result.granted) == 4
    assert {(x.owner, x.epoch) for x in (await _leases(db)).values()} == {("n2", 2)}


async def test_a_coordinator_that_loses_its_lease_stops_granting(db: Dynamo) -> None:
    n1, n2, n3 = await _join(db, "n1"), await _join(db, "n2"), await _join(db, "n3")
    await _own(db, n1, range(3))
    a_clock, b_clock = FakeClock(), FakeClock()
    a = Coordinator(db, n2, timing=TIMING, clock=a_clock, sleep=a_clock.sleep)
    b = Coordinator(db, n3, timing=TIMING, clock=b_clock, sleep=b_clock.sleep)
    assert (await a.step()).coordinating
    assert not (await b.step()).coordinating
    b_clock.advance(TIMING.lease_s)  # a does not renew meanwhile
    assert (await b.step()).coordinating
    assert await leave(db, n1)
    lost = await a.step()  # its clock says it still holds, the renewal says not
    assert not lost.coordinating and not lost.granted and not a.lease.held
    assert {(x.owner, x.epoch) for x in (await _leases(db)).values()} == {("n1", 1)}
    assert len((await b.step()).granted) == 3


async def test_run_steps_every_h_and_skips_rounds_the_catalog_is_unreachable(
    dynamodb_endpoint: str, db: Dynamo
) -> None:
    n1, n2 = await _join(db, "n1"), await _join(db, "n2")
    await _own(db, n1, range(2))
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    far = await Dynamo.open(db.names, endpoint_url=proxy.url, timeout_s=0.3)
    clock = FakeClock()
    coordinator = Coordinator(far, n2, timing=TIMING, clock=clock, sleep=clock.sleep)
    rounds: list[float] = []
    done = asyncio.Event()

    async def each_round() -> None:
        rounds.append(clock.now)
        await _beat(db, n2)
        if len(rounds) == 2:
            await proxy.down()
            await leave(db, n1)
        if len(rounds) == 4:
            await proxy.up()
        if {x.owner for x in (await _leases(db)).values()} == {"n2"}:
            done.set()

    clock.on_sleep = each_round
    task = asyncio.create_task(coordinator.run())
    try:
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await far.close()
        await proxy.close()
    assert len(rounds) >= 5  # the unreachable rounds did not end the loop
    assert rounds[1] - rounds[0] == TIMING.heartbeat_s
