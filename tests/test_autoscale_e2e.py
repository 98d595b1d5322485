"""End to end: per-key order while the autoscaler splits and merges on its own.

Producers send a sequence number per key without pause while the real autoscaler loop
(small thresholds and windows) splits the topic up to its limit; then the load stops and the
topic merges back to one partition. A consumer group of three members, one of which leaves
and is replaced half-way, reads everything with commits. Each phase ends on a condition
(with a generous deadline), so what is asserted does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import Api, start_api, stop_api

G = "/v1/topics/t/groups/readers"
SCALING = {
    "split_records_per_s": 150,
    "split_bytes_per_s": 10**9,
    "window_s": 1,
    "merge_window_s": 2,
    "cooldown_s": 1,
    "max_partitions": 4,
}
KEYS = [f"key-{n}" for n in range(48)]
PRODUCERS = 4
PHASE_DEADLINE_S = 40


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + PHASE_DEADLINE_S
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def test_per_key_order_holds_through_automatic_splits_and_merges(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data", autoscale_interval_ms=100)
    try:
        await _scenario(api)
    finally:
        await stop_api(api)


async def _scenario(api: Api) -> None:
    status, _ = await api.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    assert status == 201
    produced: dict[str, int] = defaultdict(int)  # key -> next sequence number
    produce_errors: list[Any] = []
    delivered: list[tuple[str, int, int, int]] = []  # (key, seq, partition, offset)
    producing = asyncio.Event()
    producing.set()
    consuming = asyncio.Event()
    consuming.set()

    async def producer(n: int) -> None:
        mine = KEYS[n::PRODUCERS]
        while producing.is_set():
            # Two records of every key in one request, the second after the others: order
            # must hold within a request as well as across requests.
            records = [
                {"key": k, "value": f"{k}:{produced[k] + i}"} for i in range(2) for k in mine
            ]
            status, body = await api.call("POST", "/v1/topics/t/records", json={"records": records})
            if status != 200:
                produce_errors.append(body)
                continue
            for k in mine:
                produced[k] += 2
            await asyncio.sleep(0.1)

    async def member(running: asyncio.Event, first: bool = False) -> None:
        body: dict[str, Any] = {"wait_ms": 200, "max_records": 300}
        if first:
            body["auto_offset_reset"] = "earliest"
        member_id = None
        while running.is_set():
            status, answer = await api.call(
                "POST", G + "/fetch", json={**body, "member_id": member_id}
            )
            assert status == 200, answer
            member_id = answer["member_id"]
            for record in answer["records"]:
                key, seq = record["value"].split(":")
                delivered.append((key, int(seq), record["partition"], record["offset"]))
        # Leaving commits what the last fetch delivered (auto_commit).
        status, _ = await api.call("POST", G + "/leave", json={"member_id": member_id})
        assert status == 204

    counts: list[int] = []

    async def active() -> int:
        status, body = await api.call("GET", "/v1/topics/t")
        assert status == 200
        count = sum(1 for p in body["partitions"] if p["state"] == "active")
        counts.append(count)
        return count

    leaver = asyncio.Event()
    leaver.set()
    members = [asyncio.ensure_future(member(consuming, first=True))]
    await until(lambda: _has_member(api), "the first member joined")
    members.append(asyncio.ensure_future(member(leaver)))
    members.append(asyncio.ensure_future(member(consuming)))
    producers = [asyncio.ensure_future(producer(n)) for n in range(PRODUCERS)]

    async def split_once() -> bool:
        return await active() >= 2

    await until(split_once, "the first automatic split")
    # One member leaves after the topic changed shape; another takes its place.
    leaver.clear()
    await members[1]
    members[1] = asyncio.ensure_future(member(consuming))

    async def at_limit() -> bool:
        return await active() == SCALING["max_partitions"]

    await until(at_limit, "the topic reached max_partitions under load")
    producing.clear()
    await asyncio.gather(*producers)

    async def merged_back() -> bool:
        return await active() == 1

    await until(merged_back, "the topic merged back to one partition")
    total = sum(produced.values())

    async def all_read() -> bool:
        return len(delivered) >= total

    await until(all_read, "the group read every record")
    consuming.clear()
    await asyncio.gather(*members)

    assert produce_errors == []
    assert max(counts) == 4 and counts[-1] == 1
    # Nothing delivered twice (every member committed before it left), nothing missing,
    # and every key's sequence strictly increasing in the order the group delivered it.
    places = [(p, o) for _k, _s, p, o in delivered]
    assert len(places) == len(set(places)) == total
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, seq, _p, _o in delivered:
        by_key[key].append(seq)
    assert set(by_key) == set(KEYS)
    for key, seqs in by_key.items():
        assert seqs == list(range(produced[key])), key
    # By hand, lineage can be followed: sealed partitions say so and name their children.
    status, body = await api.call("GET", "/v1/topics/t")
    sealed = [p for p in body["partitions"] if p["state"] == "sealed"]
    assert len(sealed) >= 6  # three splits to reach four, three merges back to one
    for partition in sealed:
        status, read = await api.call(
            "GET", f"/v1/topics/t/partitions/{partition['id']}/records", params={"offset": "0"}
        )
        assert status == 200 and read["sealed"] is True
        assert read["children"] == partition["children"] and read["children"]
    changes = body["autoscale"]["recent_changes"]
    assert {c["action"] for c in changes} == {"split", "merge"}
    assert all(c["error"] is None for c in changes)


async def _has_member(api: Api) -> bool:
    status, body = await api.call("GET", G)
    return status == 200 and len(body["members"]) == 1
