"""Consumer groups over HTTP: membership, assignment, commits, lineage order, offset control."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.keys import BROKER
from gateway.wiring.state import CATALOG
from partitions import group_commits
from partitions.errors import PartitionUnavailableError
from partitions.log.values import ReadResult
from partitions.partition_key import PartitionKey
from tests.conftest import Api
from tests.servers import ServerProcess

G = "/v1/topics/t/groups/g"


async def _produce(api: Api, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    status, body = await api.call("POST", "/v1/topics/t/records", json={"records": records})
    assert status == 200, body
    return [(o["partition"], o["offset"]) for o in body["offsets"]]


async def _fetch(api: Api, **body: Any) -> dict[str, Any]:
    status, answer = await api.call("POST", G + "/fetch", json=body)
    assert status == 200, answer
    return answer


async def _three_active_partitions(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    assert (await api.call("POST", "/v1/topics/t/partitions/1/split"))[0] == 200
    # Active now: 2, 3, 4.


async def test_members_share_partitions_and_an_expired_members_work_moves(api: Api) -> None:
    await _three_active_partitions(api)
    first = await _fetch(api, auto_offset_reset="earliest", session_timeout_ms=1000)
    members = {"a": first["member_id"]}
    members["b"] = (await _fetch(api, session_timeout_ms=1000))["member_id"]
    members["c"] = (await _fetch(api, session_timeout_ms=1000))["member_id"]
    await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(300)])
    produced = {f"v{i}" for i in range(300)}
    delivered: Counter[str] = Counter()
    c_last_batch: set[str] = set()
    # Everyone fetches a few rounds; then c stops without committing its last batch.
    for _round in range(3):
        for name in ("a", "b", "c"):
            answer = await _fetch(api, member_id=members[name], max_records=20)
            values = [r["value"] for r in answer["records"]]
            delivered.update(values)
            if name == "c":
                c_last_batch = set(values)
    status, group = await api.call("GET", G)
    assignments = {m["member_id"]: m["assignment"] for m in group["members"]}
    assert sorted(p for a in assignments.values() for p in a) == [2, 3, 4]
    assert all(len(a) == 1 for a in assignments.values())  # spread evenly
    c_partitions = assignments[members["c"]]
    # c goes silent; a and b keep fetching until everything has been delivered.
    for _ in range(200):
        for name in ("a", "b"):
            answer = await _fetch(api, member_id=members[name], max_records=50, wait_ms=100)
            delivered.update(r["value"] for r in answer["records"])
        if produced <= set(delivered):
            break
    assert produced <= set(delivered), "records were lost"
    status, group = await api.call("GET", G)
    assert {m["member_id"] for m in group["members"]} == {members["a"], members["b"]}
    owners = {p["partition"]: p["member_id"] for p in group["partitions"]}
    assert all(owners[p] in (members["a"], members["b"]) for p in c_partitions)
    # Exactly what c fetched last and never committed came twice; nothing committed did.
    twice = {v for v, n in delivered.items() if n > 1}
    assert c_last_batch and twice == c_last_batch
    # c's session is over.
    status, body = await api.call("POST", G + "/fetch", json={"member_id": members["c"]})
    assert status == 409 and body["error"]["code"] == "unknown_member"


async def test_commits_are_fenced_by_what_the_member_owns_now(api: Api) -> None:
    await _three_active_partitions(api)
    await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(30)])
    a = await _fetch(api, auto_offset_reset="earliest", auto_commit=False)
    own = a["assignment"][0]
    offsets = [{"partition": own, "offset": 1}]
    body = {"member_id": a["member_id"], "generation": a["generation"], "offsets": offsets}
    status, answer = await api.call("POST", G + "/commit", json=body)
    assert status == 200 and {"partition": own, "offset": 1} in answer["committed"]
    b = await _fetch(api, auto_commit=False)  # a new member: a new generation
    assert b["generation"] > a["generation"]
    # a still owns its partitions (they move only at a's next fetch): a commit naming the
    # generation a last saw is accepted, and so is one naming none.
    older = {**body, "offsets": [{"partition": own, "offset": 5}]}
    status, answer = await api.call("POST", G + "/commit", json=older)
    assert status == 200 and {"partition": own, "offset": 5} in answer["committed"]
    unnamed = {"member_id": a["member_id"], "offsets": [{"partition": own, "offset": 6}]}
    assert (await api.call("POST", G + "/commit", json=unnamed))[0] == 200
    a = await _fetch(api, member_id=a["member_id"], auto_commit=False)
    not_mine = next(p for p in (2, 3, 4) if p not in a["assignment"])
    wrong = {
        "member_id": a["member_id"],
        "generation": a["generation"],
        "offsets": [{"partition": own, "offset": 7}, {"partition": not_mine, "offset": 1}],
    }
    status, answer = await api.call("POST", G + "/commit", json=wrong)
    assert status == 409 and answer["error"]["code"] == "partition_not_assigned"
    details = answer["error"]["details"]
    assert details["partitions"] == [not_mine]
    assert details["assignment"] == a["assignment"]
    assert details["generation"] >= a["generation"]
    status, group = await api.call("GET", G)
    committed = {p["partition"]: p["committed"] for p in group["partitions"]}
    assert committed[own] == 6  # the refused commit changed nothing, its own partition neither
    for bad in (
        {},
        {"member_id": "x"},
        {"member_id": "x", "generation": "1", "offsets": [{"partition": 2, "offset": 1}]},
        {"member_id": "x", "generation": 1, "offsets": [{}]},
    ):
        status, answer = await api.call("POST", G + "/commit", json=bad)
        assert status == 400, answer


async def test_a_member_keeps_committing_what_it_owns_across_rebalances(api: Api) -> None:
    """Two members join a two-partition group one after the other, each fetch moving the
    generation on; a commit of what a member owns now is accepted whatever generation it
    last saw (Kafka's cooperative rule), even after the other member's fetch moved it on."""
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200  # 1 and 2
    await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(40)])
    a = await _fetch(api, auto_offset_reset="earliest", auto_commit=False)
    b = await _fetch(api, auto_commit=False)
    a = await _fetch(api, member_id=a["member_id"], auto_commit=False)  # gives one up
    assert len(a["assignment"]) == 1
    b = await _fetch(api, member_id=b["member_id"], auto_commit=False)  # takes it
    assert b["generation"] > a["generation"]
    assert sorted(a["assignment"] + b["assignment"]) == [1, 2]
    (mine,) = a["assignment"]
    seen = [r["offset"] for r in a["records"] if r["partition"] == mine]
    commit = {
        "member_id": a["member_id"],
        "generation": a["generation"],
        "offsets": [{"partition": mine, "offset": max(seen, default=-1) + 1}],
    }
    status, answer = await api.call("POST", G + "/commit", json=commit)
    assert status == 200, answer


async def test_an_expired_members_commit_of_a_partition_now_elsewhere_is_refused(
    api: Api,
) -> None:
    """A zombie: a member whose session ran out, its partition now another member's. Its
    commit answers 409 with an empty assignment, and the new owner's progress stands."""
    await api.call("PUT", "/v1/topics/t")
    await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(10)])
    zombie = await _fetch(
        api, auto_offset_reset="earliest", auto_commit=False, session_timeout_ms=1000
    )
    assert zombie["assignment"] == [0]
    await asyncio.sleep(1.5)  # its session runs out
    heir = await _fetch(api, auto_commit=False)
    assert heir["assignment"] == [0]
    taken = {"member_id": heir["member_id"], "offsets": [{"partition": 0, "offset": 10}]}
    assert (await api.call("POST", G + "/commit", json=taken))[0] == 200
    late = {
        "member_id": zombie["member_id"],
        "generation": zombie["generation"],
        "offsets": [{"partition": 0, "offset": 3}],
    }
    status, answer = await api.call("POST", G + "/commit", json=late)
    assert status == 409 and answer["error"]["code"] == "unknown_member"
    assert answer["error"]["details"]["assignment"] == []
    assert answer["error"]["details"]["generation"] >= heir["generation"]
    status, group = await api.call("GET", G)
    assert group["partitions"][0]["committed"] == 10


async def test_commits_across_rebalances_lose_nothing_and_repeat_only_what_moved(
    api: Api,
) -> None:
    """Members fetch, handle and commit by hand while others join and leave: every record
    is delivered; one is delivered twice only if its partition moved to another member
    between its fetch and its commit (the commit of it was refused), never otherwise."""
    await _three_active_partitions(api)
    values = [f"v{i}" for i in range(600)]
    await _produce(api, [{"key": f"k{i}", "value": v} for i, v in enumerate(values)])
    delivered: Counter[str] = Counter()
    moved_away: set[str] = set()  # records whose commit was refused: their partition moved
    members: dict[str, dict[str, Any]] = {}
    owners: dict[int, set[str]] = {}

    async def round_of(name: str) -> None:
        member = members.get(name)
        body: dict[str, Any] = {"max_records": 25, "auto_commit": False}
        if member is None:
            body["auto_offset_reset"] = "earliest"
        else:
            body["member_id"] = member["member_id"]
        answer = await _fetch(api, **body)
        members[name] = answer
        for pid in answer["assignment"]:
            owners.setdefault(pid, set()).add(name)
        handled = [(r["partition"], r["offset"], r["value"]) for r in answer["records"]]
        delivered.update(v for _, _, v in handled)
        ends: dict[int, int] = {}
        for pid, offset, _ in handled:
            ends[pid] = max(ends.get(pid, 0), offset + 1)
        if not ends:
            return
        commit = {
            "member_id": answer["member_id"],
            "generation": answer["generation"],
            "offsets": [{"partition": p, "offset": o} for p, o in ends.items()],
        }
        status, reply = await api.call("POST", G + "/commit", json=commit)
        if status == 409:
            lost = set(reply["error"]["details"]["partitions"])
            moved_away.update(v for pid, _, v in handled if pid in lost)
            kept = [o for o in commit["offsets"] if o["partition"] not in lost]
            if kept:
                status, reply = await api.call(
                    "POST", G + "/commit", json={**commit, "offsets": kept}
                )
        assert status in (200, 409), reply

    for step in range(60):
        await round_of("a")
        if step >= 5:
            await round_of("b")  # b joins, and rebalances with a as both fetch
        if 15 <= step < 30:
            await round_of("c")
        if step == 30 and "c" in members:  # c leaves; its partitions go back
            leave = {"member_id": members.pop("c")["member_id"], "commit": False}
            assert (await api.call("POST", G + "/leave", json=leave))[0] == 204
        if set(values) <= set(delivered):
            break
    assert set(values) <= set(delivered), "records were lost"
    assert any(len(names) > 1 for names in owners.values()), "no partition changed hands"
    twice = {v for v, n in delivered.items() if n > 1}
    assert twice <= moved_away, twice - moved_away


async def test_leave_hands_partitions_over_at_once(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/partitions/0/split")  # 1 and 2
    a = await _fetch(api, auto_offset_reset="latest")
    b = await _fetch(api)
    a = await _fetch(api, member_id=a["member_id"])  # gives one partition up to b
    b = await _fetch(api, member_id=b["member_id"])
    assert sorted(a["assignment"] + b["assignment"]) == [1, 2]
    # Records land only in a's partition; b waits on its own, empty one.
    keys = [f"k{i}" for i in range(200)]
    placed = await _produce(api, [{"key": k, "value": k} for k in keys])
    a_values = [k for k, (p, _o) in zip(keys, placed, strict=True) if p in a["assignment"]]
    b_values = [k for k, (p, _o) in zip(keys, placed, strict=True) if p in b["assignment"]]
    b = await _fetch(api, member_id=b["member_id"], max_records=1000)
    assert sorted(r["value"] for r in b["records"]) == sorted(b_values)
    waiting = asyncio.ensure_future(
        api.call("POST", G + "/fetch", json={"member_id": b["member_id"], "wait_ms": 30000})
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    status, _ = await api.call("POST", G + "/leave", json={"member_id": a["member_id"]})
    assert status == 204
    status, answer = await asyncio.wait_for(waiting, 10)  # woken by the leave, not the wait
    assert status == 200 and sorted(answer["assignment"]) == [1, 2]
    # a fetched nothing, so it committed nothing: b gets all of a's records.
    assert sorted(r["value"] for r in answer["records"]) == sorted(a_values)


async def test_seek_describe_and_delete(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    early = [{"value": f"old{i}", "timestamp_ms": 1000 + i} for i in range(10)]
    late = [{"value": f"new{i}", "timestamp_ms": 5000 + i} for i in range(10)]
    await _produce(api, early + late)
    m = await _fetch(api)  # a new group starts at the latest end by default
    assert m["records"] == []
    status, body = await api.call("POST", G + "/seek", json={"to": "earliest"})
    assert status == 409 and body["error"]["code"] == "group_has_members"
    status, body = await api.call("DELETE", G)
    assert status == 409 and body["error"]["code"] == "group_has_members"
    await api.call("POST", G + "/leave", json={"member_id": m["member_id"]})

    async def first_value() -> str:
        member = await _fetch(api, max_records=1)
        await api.call("POST", G + "/leave", json={"member_id": member["member_id"]})
        return str(member["records"][0]["value"]) if member["records"] else ""

    assert (await api.call("POST", G + "/seek", json={"to": "earliest"}))[0] == 200
    assert await first_value() == "old0"
    assert (await api.call("POST", G + "/seek", json={"to": {"timestamp_ms": 5003}}))[0] == 200
    assert await first_value() == "new3"
    status, body = await api.call(
        "POST", G + "/seek", json={"to": {"offsets": [{"partition": 0, "offset": 7}]}}
    )
    assert status == 200 and body["committed"] == [{"partition": 0, "offset": 7}]
    assert await first_value() == "old7"
    assert (await api.call("POST", G + "/seek", json={"to": "latest"}))[0] == 200
    assert await first_value() == ""
    for bad in ({"to": "middle"}, {"to": {"offsets": [{"partition": 0, "offset": -1}]}}, {}):
        status, body = await api.call("POST", G + "/seek", json=bad)
        assert status == 400 and body["error"]["code"] == "invalid_seek", body
    # Well formed, but past the partition's end, or a partition the topic does not have:
    # the topic's state decides, so not a 400.
    status, body = await api.call(
        "POST", G + "/seek", json={"to": {"offsets": [{"partition": 0, "offset": 99}]}}
    )
    assert (status, body["error"]["code"]) == (416, "offset_out_of_range"), body
    assert body["error"]["details"]["high_watermark"] == 20
    status, body = await api.call(
        "POST", G + "/seek", json={"to": {"offsets": [{"partition": 9, "offset": 0}]}}
    )
    assert (status, body["error"]["code"]) == (404, "partition_not_found"), body
    await api.call("POST", G + "/seek", json={"to": {"offsets": [{"partition": 0, "offset": 5}]}})
    status, group = await api.call("GET", G)
    assert group["members"] == [] and group["lag"] == 15
    assert group["partitions"][0]["committed"] == 5 and group["partitions"][0]["lag"] == 15
    assert (await api.call("DELETE", G))[0] == 204
    assert (await api.call("GET", G))[0] == 404
    assert (await api.call("DELETE", G))[0] == 404
    # A seek positions a group whether or not it exists, as Kafka's offset reset does (a
    # group can be placed before its consumers start): after the deletion it makes the
    # group again, with no members, at the generation of one change.
    status, body = await api.call(
        "POST", G + "/seek", json={"to": {"offsets": [{"partition": 0, "offset": 0}]}}
    )
    assert status == 200 and body["committed"] == [{"partition": 0, "offset": 0}]
    status, group = await api.call("GET", G)
    assert status == 200 and group["members"] == [] and group["generation"] == 1, group
    assert group["partitions"][0]["committed"] == 0


async def test_children_wait_until_every_parent_is_drained(api: Api) -> None:
    """A split and then a merge whose parents drain at different times."""
    await api.call("PUT", "/v1/topics/t")
    keys = [f"key-{i}" for i in range(8)]
    seq = 0

    async def produce_round() -> None:
        nonlocal seq
        await _produce(api, [{"key": k, "value": f"{k}:{seq + n}"} for n, k in enumerate(keys)])
        seq += len(keys)

    for _ in range(5):
        await produce_round()
    await api.call("POST", "/v1/topics/t/partitions/0/split")  # 0 -> 1, 2
    for _ in range(5):
        await produce_round()
    await api.call("POST", "/v1/topics/t/merge", json={"partitions": [1, 2]})  # 1, 2 -> 3
    for _ in range(5):
        await produce_round()

    fast = await _fetch(api, auto_offset_reset="earliest", max_records=100)
    assert fast["assignment"] == [0]  # children wait for 0
    seen = list(fast["records"])
    slow = await _fetch(api, max_records=1)
    assert slow["assignment"] == []  # nothing else is eligible yet
    fast = await _fetch(api, member_id=fast["member_id"], max_records=100)  # commits 0's end
    seen += fast["records"]
    slow = await _fetch(api, member_id=slow["member_id"], max_records=1)
    assert sorted(fast["assignment"] + slow["assignment"]) == [1, 2]
    seen += slow["records"]
    # fast drains its parent; slow takes one record at a time from the other one.
    while True:
        fast = await _fetch(api, member_id=fast["member_id"], max_records=100)
        seen += fast["records"]
        slow = await _fetch(api, member_id=slow["member_id"], max_records=1)
        seen += slow["records"]
        if 3 in fast["assignment"] + slow["assignment"]:
            break
        status, group = await api.call("GET", G)
        states = {p["partition"]: p for p in group["partitions"]}
        # The merged child is handed out only once both parents are drained.
        assert not (states[1]["drained"] and states[2]["drained"])
    status, group = await api.call("GET", G)
    states = {p["partition"]: p for p in group["partitions"]}
    assert states[1]["drained"] and states[2]["drained"]
    for _ in range(20):
        for member in (fast, slow):
            answer = await _fetch(api, member_id=member["member_id"], max_records=100)
            seen += answer["records"]
    values = [r["value"] for r in seen]
    assert sorted(set(values), key=lambda v: int(v.split(":")[1])) == [
        f"{keys[n % 8]}:{n}" for n in range(seq)
    ]
    # Per key, in order across 0 -> {1, 2} -> 3.
    by_key: dict[str, list[int]] = {}
    for value in values:
        key, n = value.split(":")
        by_key.setdefault(key, []).append(int(n))
    for key, numbers in by_key.items():
        assert numbers == sorted(numbers), key


async def test_group_parameters_are_checked(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    for body in (
        {"max_records": 0},
        {"wait_ms": -1},
        {"auto_commit": "yes"},
        {"auto_offset_reset": "middle"},
        {"session_timeout_ms": 10},
        {"member_id": 7},
    ):
        status, answer = await api.call("POST", G + "/fetch", json=body)
        assert status == 400 and answer["error"]["code"] == "invalid_parameter", body
    assert (await api.call("POST", "/v1/topics/t/groups/bad%20name/fetch", json={}))[0] == 400
    assert (await api.call("POST", "/v1/topics/nope/groups/g/fetch", json={}))[0] == 404
    status, answer = await api.call("POST", G + "/leave", json={"member_id": "ghost"})
    assert status == 409 and answer["error"]["code"] == "unknown_member"


async def test_a_restart_ends_sessions_and_the_group_resumes_from_its_commits(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        auth = {"Authorization": f"Bearer {server.keys['EVENTBUS_API_KEY']}"}
        async with aiohttp.ClientSession(headers=auth) as session:

            async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
                async with session.post(server.url + path, json=body) as response:
                    assert response.status in (200, 204), await response.text()
                    return await response.json() if response.status == 200 else {}

            await session.put(server.url + "/v1/topics/t")
            await call("/v1/topics/t/records", {"records": [{"value": str(i)} for i in range(50)]})
            member = await call(G + "/fetch", {"auto_offset_reset": "earliest", "max_records": 20})
            got = [r["value"] for r in member["records"]]
            member = await call(G + "/fetch", {"member_id": member["member_id"], "max_records": 10})
            got += [r["value"] for r in member["records"]]  # the first 20 are now committed
        assert server.stop() == 0
        server = ServerProcess(tmp_path / "data").start()
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.post(
                server.url + G + "/fetch", json={"member_id": member["member_id"]}
            ) as response:
                assert response.status == 409  # the session ended with the restart
            async with session.post(
                server.url + G + "/fetch", json={"max_records": 100}
            ) as response:
                after = await response.json()
        # Resumes at the commit (20): records 20..29 again (fetched, never committed), no
        # committed record twice, and auto_offset_reset does not apply to an existing group.
        assert [r["value"] for r in after["records"]] == [str(i) for i in range(20, 50)]
        assert got == [str(i) for i in range(30)]
        assert server.stop() == 0
    finally:
        server.kill()


def test_the_documented_python_consumer_reads_and_commits(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.servers import ROOT

    server = ServerProcess(tmp_path / "data").start()
    try:
        key = server.keys["EVENTBUS_API_KEY"]

        async def setup() -> None:
            auth = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(headers=auth) as session:
                await session.put(server.url + "/v1/topics/orders")
                records = [{"key": f"k{i}", "value": f"order {i}"} for i in range(30)]
                async with session.post(
                    server.url + "/v1/topics/orders/records", json={"records": records}
                ) as response:
                    assert response.status == 200

        asyncio.run(setup())
        env = {"EVENTBUS_URL": server.url, "EVENTBUS_API_KEY": key, "MAX_FETCHES": "1"}
        done = subprocess.run(
            [sys.executable, str(ROOT / "docs/examples/consumer.py"), "orders", "billing"],
            env={**env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        printed = [line.split(" ", 3)[3] for line in done.stdout.splitlines()]
        assert printed == [f"order {i}" for i in range(30)]

        async def committed() -> dict[str, Any]:
            auth = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(headers=auth) as session:
                async with session.get(server.url + "/v1/topics/orders/groups/billing") as r:
                    return dict(await r.json())

        group = asyncio.run(committed())
        assert group["members"] == [] and group["lag"] == 0  # it left, everything committed
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.mark.single_process("makes a partition fail by patching the server process")
async def test_a_fetch_that_fails_part_way_moves_the_member_nowhere(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch answered with an error delivered nothing: the member's next fetch must not
    commit (auto_commit) or skip what the failed one read before its error."""
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    member = await _fetch(api, auto_offset_reset="earliest")
    assert member["assignment"] == [1, 2]
    records = [{"key": f"k{i}", "value": f"v{i}"} for i in range(20)]
    assert {p for p, _ in await _produce(api, records)} == {1, 2}
    # Partition 1 is read first; reading partition 2 then fails, as a disk or an object
    # store that does not answer would (503, retriable).
    worker = api.server.app[BROKER].worker
    real_read = worker.read

    async def read_failing_on_2(key: PartitionKey, offset: int, **bounds: Any) -> ReadResult:
        if key.partition_id == 2:
            raise PartitionUnavailableError("injected: partition 2 cannot be read")
        return await real_read(key, offset, **bounds)

    monkeypatch.setattr(worker, "read", read_failing_on_2)
    status, body = await api.call("POST", G + "/fetch", json={"member_id": member["member_id"]})
    assert status == 503, body
    monkeypatch.undo()
    # The consumer retries the retriable error as the same member.
    got: list[str] = []
    for _ in range(3):
        answer = await _fetch(api, member_id=member["member_id"])
        got += [r["value"] for r in answer["records"]]
    assert sorted(got) == sorted(r["value"] for r in records)


@pytest.mark.single_process("holds the catalog's writes by patching the server process")
async def test_automatic_commits_are_written_behind_fetches_and_before_a_leave(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auto_commit a fetch does not wait for the catalog: while its writes are held,
    fetches are answered and the group shows each commit at once; the commits made
    meanwhile go into one write; a leave waits until they are written, then writes its own."""
    await api.call("PUT", "/v1/topics/t")
    await _produce(api, [{"value": f"v{i}"} for i in range(40)])
    member = await _fetch(api, auto_offset_reset="earliest", max_records=10)
    catalog = api.server.app[CATALOG]
    real_commit = catalog.commit_offsets
    release = asyncio.Event()
    writes: list[dict[int, int]] = []

    async def held_commit(tenant: str, topic: str, group: str, offsets: dict[int, int]) -> Any:
        writes.append(dict(offsets))
        await release.wait()
        return await real_commit(tenant, topic, group, offsets)

    monkeypatch.setattr(catalog, "commit_offsets", held_commit)
    got: list[str] = []
    for _ in range(3):  # each commits what the one before delivered: 10, then 15, then 20
        answer = await asyncio.wait_for(
            _fetch(api, member_id=member["member_id"], max_records=5), 10
        )
        got += [r["value"] for r in answer["records"]]
    assert got == [f"v{i}" for i in range(10, 25)]
    status, group = await api.call("GET", G)
    assert status == 200 and group["partitions"][0]["committed"] == 20
    assert writes == [{0: 10}]  # held; 15 and 20 wait, as one write
    stored = await catalog.get_group("default", "t", "g")
    assert stored.offsets.get(0, 0) == 0
    leaving = asyncio.ensure_future(
        api.call("POST", G + "/leave", json={"member_id": member["member_id"]})
    )
    await asyncio.sleep(0.2)
    assert not leaving.done()  # waits for the held write
    release.set()
    status, _ = await asyncio.wait_for(leaving, 10)
    assert status == 204
    assert writes == [{0: 10}, {0: 20}, {0: 25}]
    assert (await catalog.get_group("default", "t", "g")).offsets[0] == 25


@pytest.mark.single_process("fails the catalog's writes by patching the server process")
async def test_automatic_commits_given_up_are_not_written_over_a_later_seek(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that gives up drops what it could not write, including commits made while
    its last try was failing: written later, they would overwrite a seek made meanwhile."""
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    placed = await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(40)])
    assert {p for p, _o in placed} == {1, 2}
    member = await _fetch(api, auto_offset_reset="earliest", max_records=4)
    catalog = api.server.app[CATALOG]
    real_commit = catalog.commit_offsets
    release = asyncio.Event()

    async def failing(tenant: str, topic: str, group: str, offsets: dict[int, int]) -> Any:
        await release.wait()
        raise RuntimeError("injected: the catalog cannot write")

    monkeypatch.setattr(catalog, "commit_offsets", failing)
    monkeypatch.setattr(group_commits, "COMMIT_WRITE_ATTEMPTS", 0)
    # The first commit (4 of partition 1) is held, then fails; the next fetch commits both
    # partitions to their ends while it is held.
    for _ in range(2):
        member = await _fetch(api, member_id=member["member_id"], max_records=1000)
    broker = api.server.app[BROKER]
    shape = await broker.shape("default", "t")
    group = broker.groups.group(shape.tenant, shape.incarnation, "g")
    assert group is not None
    assert set(group.unwritten) == {1, 2}
    release.set()
    assert group.writer is not None
    await asyncio.wait_for(group.writer, 10)
    assert group.unwritten == {}
    monkeypatch.setattr(catalog, "commit_offsets", real_commit)
    leave = {"member_id": member["member_id"], "commit": False}
    assert (await api.call("POST", G + "/leave", json=leave))[0] == 204
    assert (await api.call("POST", G + "/seek", json={"to": "earliest"}))[0] == 200
    # A new member takes one record of partition 1 and commits it: partition 2 must stay
    # where the seek put it.
    member = await _fetch(api, max_records=1)
    await _fetch(api, member_id=member["member_id"], max_records=1)
    await api.server.app[BROKER].groups.write_all()
    assert (await catalog.get_group("default", "t", "g")).offsets == {0: 0, 1: 1, 2: 0}


async def test_a_refused_fetch_does_not_create_the_group(api: Api) -> None:
    """A 4xx changes nothing: a group starts where its first joining fetch says."""
    await api.call("PUT", "/v1/topics/t")
    await _produce(api, [{"value": "before"}])
    # A consumer whose session ended (a restart, say) fetches with its old member id ...
    status, body = await api.call("POST", G + "/fetch", json={"member_id": "stale"})
    assert status == 409 and body["error"]["code"] == "unknown_member"
    assert (await api.call("GET", G))[0] == 404
    # ... and joins again, from the beginning, as the documented consumer loop does.
    joined = await _fetch(api, auto_offset_reset="earliest")
    assert [r["value"] for r in joined["records"]] == ["before"]


@pytest.mark.single_process("counts the group coordinator's state inside the server process")
async def test_commits_and_leaves_naming_unknown_groups_keep_no_state(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    coordinator = api.server.app[BROKER].groups
    before = coordinator.groups_in_memory
    for n in range(100):
        offsets = [{"partition": 0, "offset": 0}]
        body = {"member_id": "x", "generation": 0, "offsets": offsets}
        status, answer = await api.call("POST", f"/v1/topics/t/groups/c{n}/commit", json=body)
        assert status == 409 and answer["error"]["code"] == "unknown_member"
        status, answer = await api.call(
            "POST", f"/v1/topics/t/groups/l{n}/leave", json={"member_id": "x"}
        )
        assert status == 409 and answer["error"]["code"] == "unknown_member"
        status, answer = await api.call(
            "POST", f"/v1/topics/t/groups/s{n}/seek", json={"to": "sideways"}
        )
        assert status == 400 and answer["error"]["code"] == "invalid_seek"
    # Each would otherwise keep a group (a lock and an event) that the session sweeper
    # walks four times a second, for as long as the topic lives.
    assert coordinator.groups_in_memory - before < 10, coordinator.groups_in_memory - before


async def test_booleans_are_not_partitions_or_offsets(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200  # 1 and 2
    await _produce(api, [{"key": f"k{i}", "value": "x"} for i in range(10)])
    member = await _fetch(api, auto_offset_reset="earliest", auto_commit=False)
    assert member["assignment"] == [1, 2]
    for bad in ({"partition": True, "offset": 1}, {"partition": 1, "offset": True}):
        body = {"member_id": member["member_id"], "generation": member["generation"]}
        status, answer = await api.call("POST", G + "/commit", json={**body, "offsets": [bad]})
        assert status == 400 and answer["error"]["code"] == "invalid_parameter", answer
    await api.call("POST", G + "/leave", json={"member_id": member["member_id"]})
    for bad in ({"partition": True, "offset": 0}, {"partition": 1, "offset": False}):
        status, answer = await api.call("POST", G + "/seek", json={"to": {"offsets": [bad]}})
        assert status == 400 and answer["error"]["code"] == "invalid_seek", answer
    status, group = await api.call("GET", G)
    assert [p["committed"] for p in group["partitions"]] == [None] * 3  # nothing changed


async def test_a_topics_groups_are_listed_with_their_commits_and_lag(api: Api) -> None:
    await _three_active_partitions(api)
    assert await api.call("GET", "/v1/topics/t/groups") == (
        200,
        {"groups": [], "next_after": None},
    )
    await _produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(30)])
    # "g" reads 10 and commits them as its member leaves; "a" is placed at the ends by a
    # seek, "c" at the starts.
    member = (await _fetch(api, auto_offset_reset="earliest", max_records=10))["member_id"]
    status, _ = await api.call("POST", G + "/leave", json={"member_id": member})
    assert status == 204
    for name, to in (("a", "latest"), ("c", "earliest")):
        status, _ = await api.call("POST", f"/v1/topics/t/groups/{name}/seek", json={"to": to})
        assert status == 200
    status, listed = await api.call("GET", "/v1/topics/t/groups")
    assert status == 200, listed
    lags = {g["group"]: g["lag"] for g in listed["groups"]}
    assert lags == {"a": 0, "c": 30, "g": 20}
    assert [g["group"] for g in listed["groups"]] == ["a", "c", "g"]
    by_name = {g["group"]: g for g in listed["groups"]}
    assert {c["partition"] for c in by_name["a"]["committed"]} == {0, 1, 2, 3, 4}
    assert sum(c["offset"] for c in by_name["a"]["committed"]) == 30
    # The same lag as each group's describe.
    for name in ("a", "c", "g"):
        status, described = await api.call("GET", f"/v1/topics/t/groups/{name}")
        assert status == 200 and described["lag"] == lags[name]
    # A page at a time, by name.
    status, page = await api.call("GET", "/v1/topics/t/groups?limit=2")
    assert [g["group"] for g in page["groups"]] == ["a", "c"] and page["next_after"] == "c"
    status, page = await api.call("GET", "/v1/topics/t/groups?limit=2&after=c")
    assert [g["group"] for g in page["groups"]] == ["g"] and page["next_after"] is None
    # A deleted group is gone from the list; an unknown topic is a 404.
    assert (await api.call("DELETE", "/v1/topics/t/groups/c"))[0] == 204
    status, listed = await api.call("GET", "/v1/topics/t/groups")
    assert [g["group"] for g in listed["groups"]] == ["a", "g"]
    status, body = await api.call("GET", "/v1/topics/nope/groups")
    assert status == 404 and body["error"]["code"] == "topic_not_found"
    status, body = await api.call("GET", "/v1/topics/t/groups?limit=0")
    assert status == 400 and body["error"]["code"] == "invalid_parameter"
