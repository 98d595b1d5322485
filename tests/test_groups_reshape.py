"""Consumer groups while partitions split and merge: children spread over members, fetches
that began before a split, leaving with auto_commit, and describe racing a first join."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Api

G = "/v1/topics/t/groups/g"


async def _fetch(api: Api, group: str = G, **body: Any) -> dict[str, Any]:
    status, answer = await api.call("POST", group + "/fetch", json=body)
    assert status == 200, answer
    return answer


async def _split(api: Api, partition: int) -> None:
    status, body = await api.call("POST", f"/v1/topics/t/partitions/{partition}/split")
    assert status == 200, body


async def _owners(api: Api) -> dict[int, str | None]:
    status, body = await api.call("GET", G)
    assert status == 200, body
    return {p["partition"]: p["member_id"] for p in body["partitions"]}


async def test_the_children_of_a_split_go_to_different_members(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await _split(api, 0)  # 1, 2
    await _split(api, 1)  # 3, 4 (children of 1)
    await _split(api, 2)  # 5, 6 (children of 2)
    a = await _fetch(api)  # alone: takes all four
    assert a["assignment"] == [3, 4, 5, 6]
    b = await _fetch(api)
    a = await _fetch(api, member_id=a["member_id"])  # gives half back
    b = await _fetch(api, member_id=b["member_id"])
    for member in (a, b):
        assert len(member["assignment"]) == 2
        # One child of 1 and one child of 2 each: both splits spread over both members.
        low, high = sorted(member["assignment"])
        assert low in (3, 4) and high in (5, 6), member["assignment"]


async def test_a_fetch_that_began_before_a_split_leaves_the_children_with_their_owner(
    api: Api,
) -> None:
    await api.call("PUT", "/v1/topics/t")
    first = await _fetch(api, auto_offset_reset="earliest")
    second = await _fetch(api)
    first = await _fetch(api, member_id=first["member_id"])
    second = await _fetch(api, member_id=second["member_id"])
    # One of them owns partition 0 (which one depends on the ids), the other nothing.
    owner, waiter = (first, second) if first["assignment"] == [0] else (second, first)
    assert owner["assignment"] == [0] and waiter["assignment"] == []
    # The waiter waits in a long fetch with the topic as it was: partition 0 only.
    waiting = asyncio.ensure_future(
        api.call("POST", G + "/fetch", json={"member_id": waiter["member_id"], "wait_ms": 30000})
    )
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"key": "k", "value": "0"}]})
    await _split(api, 0)
    owner = await _fetch(api, member_id=owner["member_id"])  # reads 0 to its end
    assert [r["value"] for r in owner["records"]] == ["0"]
    owner = await _fetch(api, member_id=owner["member_id"])  # commits it: children are free
    children = owner["assignment"]
    assert len(children) == 1 and set(children) <= {1, 2}
    # The waiter wakes on that change, still with the old shape; the child stays with its
    # owner, and the waiter answers at once rather than wait out its 30 s.
    status, answer = await asyncio.wait_for(waiting, 10)
    assert status == 200 and answer["records"] == []
    owners = await _owners(api)
    assert owners[children[0]] == owner["member_id"]
    # Records of the children are delivered once, to whoever owns them now.
    await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"key": "k", "value": "1"}] * 3}
    )
    seen = []
    for _ in range(3):
        for member in (owner, waiter):
            answer = await _fetch(api, member_id=member["member_id"], max_records=10)
            seen += [r["value"] for r in answer["records"]]
    assert seen == ["1"] * 3


async def test_leaving_with_auto_commit_commits_what_was_delivered(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"value": str(n)} for n in range(5)]}
    )
    a = await _fetch(api, auto_offset_reset="earliest", max_records=3)
    assert [r["value"] for r in a["records"]] == ["0", "1", "2"]
    status, _ = await api.call("POST", G + "/leave", json={"member_id": a["member_id"]})
    assert status == 204
    b = await _fetch(api, max_records=10)
    assert [r["value"] for r in b["records"]] == ["3", "4"]  # nothing delivered twice
    # Without auto_commit, leaving commits nothing: the next member reads it again.
    c = await _fetch(api, "/v1/topics/t/groups/h", auto_offset_reset="earliest", auto_commit=False)
    assert len(c["records"]) == 5
    await api.call("POST", "/v1/topics/t/groups/h/leave", json={"member_id": c["member_id"]})
    d = await _fetch(api, "/v1/topics/t/groups/h")
    assert len(d["records"]) == 5


async def test_leaving_with_commit_false_keeps_only_the_commits_made_by_hand(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"value": str(n)} for n in range(5)]}
    )
    a = await _fetch(api, auto_offset_reset="earliest")
    assert len(a["records"]) == 5  # delivered; the consumer handled only the first two
    body = {"member_id": a["member_id"], "commit": "no"}
    status, answer = await api.call("POST", G + "/leave", json=body)
    assert status == 400 and answer["error"]["code"] == "invalid_parameter"
    offsets = [{"partition": 0, "offset": 2}]
    status, _ = await api.call(
        "POST",
        G + "/commit",
        json={"member_id": a["member_id"], "generation": a["generation"], "offsets": offsets},
    )
    assert status == 200
    body = {"member_id": a["member_id"], "commit": False}
    assert (await api.call("POST", G + "/leave", json=body))[0] == 204
    b = await _fetch(api, max_records=10)
    assert [r["value"] for r in b["records"]] == ["2", "3", "4"]  # not skipped by the leave


async def test_describing_a_group_while_its_first_member_joins(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    for n in range(20):
        group = f"/v1/topics/t/groups/race-{n}"
        (status, joined), *described = await asyncio.gather(
            api.call("POST", group + "/fetch", json={}),
            *(api.call("GET", group) for _ in range(3)),
        )
        assert status == 200, joined
        assert all(s in (200, 404) for s, _ in described)
        # The member that joined is in the group, whatever describe saw meanwhile.
        status, again = await api.call(
            "POST", group + "/fetch", json={"member_id": joined["member_id"]}
        )
        assert status == 200, again


async def test_a_waiting_fetch_answers_when_its_partition_is_split(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    a = await _fetch(api, auto_offset_reset="earliest")
    assert a["assignment"] == [0]
    # a waits for data in 0 as long as a fetch may; 0 is split under it.
    waiting = asyncio.ensure_future(
        api.call("POST", G + "/fetch", json={"member_id": a["member_id"], "wait_ms": 30000})
    )
    await asyncio.sleep(0.1)
    await _split(api, 0)
    # Read to its end and committed (it was empty): the children must not wait 30 s for a.
    status, answer = await asyncio.wait_for(waiting, 10)
    assert status == 200 and answer["records"] == []
    a = await _fetch(api, member_id=a["member_id"])
    assert a["assignment"] == [1, 2]
