"""Splitting and merging partitions by hand over HTTP: lineage, routing, per-key order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.service import key_hash
from gateway.http.keys import BROKER
from tests.conftest import Api, start_api, stop_api

MID = 1 << 63


async def _read_partition(api: Api, topic: str, partition: int) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    offset = 0
    while True:
        status, body = await api.call(
            "GET",
            f"/v1/topics/{topic}/partitions/{partition}/records",
            params={"offset": str(offset), "max_records": "10000"},
        )
        assert status == 200, body
        records += body["records"]
        if body["next_offset"] >= body["high_watermark"]:
            return {**body, "records": records}
        offset = body["next_offset"]


async def _partitions(api: Api, topic: str) -> dict[int, dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/topics/{topic}")
    assert status == 200, body
    return {p["id"]: p for p in body["partitions"]}


async def _records_in_lineage_order(api: Api, topic: str) -> list[dict[str, Any]]:
    """Every record, parents before children (ids rise along lineage)."""
    out = []
    for pid in sorted(await _partitions(api, topic)):
        out += (await _read_partition(api, topic, pid))["records"]
    return out


async def test_split_seals_the_parent_and_routes_keys_to_the_children(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    first = [{"key": f"k{i}", "value": f"before-{i}"} for i in range(20)]
    await api.call("POST", "/v1/topics/t/records", json={"records": first})
    status, change = await api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200, change
    (parent,) = change["sealed"]
    left, right = change["created"]
    assert parent["state"] == "sealed" and parent["end_offset"] == 20
    assert parent["children"] == [1, 2]
    assert left["hash_range"] == {"start": "0", "end": str(MID)}
    assert right["hash_range"] == {"start": str(MID), "end": str(2**64)}
    assert left["parents"] == right["parents"] == [0]

    after = [{"key": f"k{i}", "value": f"after-{i}"} for i in range(20)]
    status, body = await api.call("POST", "/v1/topics/t/records", json={"records": after})
    assert status == 200
    for record, placed in zip(after, body["offsets"], strict=True):
        expected = 1 if key_hash(record["key"].encode()) < MID else 2
        assert placed["partition"] == expected

    parent_read = await _read_partition(api, "t", 0)
    assert parent_read["sealed"] is True and parent_read["children"] == [1, 2]
    assert [r["value"] for r in parent_read["records"]] == [f"before-{i}" for i in range(20)]
    # A read at the sealed end answers at once, even with a long wait.
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "20", "wait_ms": "30000"}
    )
    assert status == 200 and body["records"] == [] and body["sealed"] is True
    status, body = await api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 409 and body["error"]["code"] == "partition_not_active"


async def test_split_at_a_point_and_merge_back(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    status, change = await api.call(
        "POST", "/v1/topics/t/partitions/0/split", json={"at": str(1000)}
    )
    assert status == 200
    assert change["created"][0]["hash_range"] == {"start": "0", "end": "1000"}
    status, change = await api.call("POST", "/v1/topics/t/merge", json={"partitions": [2, 1]})
    assert status == 200, change
    assert [p["id"] for p in change["sealed"]] == [1, 2]
    (child,) = change["created"]
    assert child["id"] == 3 and child["parents"] == [1, 2]
    assert child["hash_range"] == {"start": "0", "end": str(2**64)}
    partitions = await _partitions(api, "t")
    assert [p["state"] for _, p in sorted(partitions.items())] == [
        "sealed",
        "sealed",
        "sealed",
        "active",
    ]


async def test_refusals_change_nothing(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/partitions/0/split", json={"at": str(MID)})
    await api.call("POST", "/v1/topics/t/partitions/2/split", json={"at": str(MID + MID // 2)})
    before = await _partitions(api, "t")
    cases = [
        ("POST", "/v1/topics/t/partitions/1/split", {"at": "0"}, 409, "invalid_split_point"),
        ("POST", "/v1/topics/t/partitions/1/split", {"at": str(MID)}, 409, "invalid_split_point"),
        ("POST", "/v1/topics/t/partitions/1/split", {"at": "middle"}, 400, "invalid_parameter"),
        ("POST", "/v1/topics/t/partitions/0/split", None, 409, "partition_not_active"),
        ("POST", "/v1/topics/t/partitions/9/split", None, 404, "partition_not_found"),
        ("POST", "/v1/topics/t/merge", {"partitions": [1, 4]}, 409, "partitions_not_adjacent"),
        ("POST", "/v1/topics/t/merge", {"partitions": [1, 1]}, 400, "invalid_merge"),
        ("POST", "/v1/topics/t/merge", {"partitions": [1, 3, 4]}, 400, "invalid_merge"),
        ("POST", "/v1/topics/t/merge", {"partitions": [0, 1]}, 409, "partition_not_active"),
        ("POST", "/v1/topics/t/merge", {"partitions": "1,3"}, 400, "invalid_merge"),
        ("POST", "/v1/topics/nope/merge", {"partitions": [1, 3]}, 404, "topic_not_found"),
    ]
    for method, path, body, status, code in cases:
        got_status, got = await api.call(method, path, json=body)
        assert (got_status, got["error"]["code"]) == (status, code), (path, body, got)
    assert await _partitions(api, "t") == before


async def test_per_key_order_holds_while_producers_run_through_splits_and_merges(
    api: Api,
) -> None:
    await api.call("PUT", "/v1/topics/t")
    acked: dict[tuple[int, int], str] = {}
    stop = asyncio.Event()

    async def producer(n: int) -> None:
        seq = 0
        while not stop.is_set():
            records = [
                {"key": f"key-{(n * 7 + i) % 13}", "value": f"{n}:{seq + i}"} for i in range(5)
            ]
            status, body = await api.call("POST", "/v1/topics/t/records", json={"records": records})
            assert status == 200, body
            for record, placed in zip(records, body["offsets"], strict=True):
                acked[(placed["partition"], placed["offset"])] = record["value"]
            seq += 5

    producers = [asyncio.ensure_future(producer(n)) for n in range(6)]
    await asyncio.sleep(0.05)
    # Split partition 0, split one child, merge the two halves that are adjacent.
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    await asyncio.sleep(0.05)
    assert (await api.call("POST", "/v1/topics/t/partitions/2/split"))[0] == 200
    await asyncio.sleep(0.05)
    status, body = await api.call("POST", "/v1/topics/t/merge", json={"partitions": [1, 3]})
    assert status == 200, body
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*producers)

    stored: dict[tuple[int, int], str] = {}
    for pid in await _partitions(api, "t"):
        for record in (await _read_partition(api, "t", pid))["records"]:
            stored[(pid, record["offset"])] = record["value"]
    assert stored == acked, "every acknowledged record, at its place, and nothing else"
    # Per key and producer, sequence numbers rise along lineage order.
    last: dict[tuple[str, str], int] = {}
    for record in await _records_in_lineage_order(api, "t"):
        producer_id, seq = record["value"].split(":")
        slot = (record["key"], producer_id)
        assert int(seq) > last.get(slot, -1), (slot, seq, last.get(slot))
        last[slot] = int(seq)


async def test_lineage_survives_a_restart(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data")
    try:
        await api.call("PUT", "/v1/topics/t")
        await api.call(
            "POST", "/v1/topics/t/records", json={"records": [{"key": "a", "value": "1"}]}
        )
        await api.call("POST", "/v1/topics/t/partitions/0/split")
    finally:
        await stop_api(api)
    api = await start_api(tmp_path / "data")
    try:
        partitions = await _partitions(api, "t")
        assert [partitions[i]["state"] for i in (0, 1, 2)] == ["sealed", "active", "active"]
        status, body = await api.call(
            "POST", "/v1/topics/t/records", json={"records": [{"key": "a", "value": "2"}]}
        )
        assert status == 200 and body["offsets"][0]["partition"] in (1, 2)
    finally:
        await stop_api(api)


@pytest.mark.single_process("checks the log's own sealed flag inside the server process")
async def test_a_split_cut_short_after_the_catalog_is_finished_at_start(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data")
    try:
        await api.call("PUT", "/v1/topics/t")
        await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "x"}] * 3})
        # The catalog change happened; the crash came before the parent's log was sealed.
        catalog = api.server.app[BROKER].catalog
        await catalog.split_partition("default", "t", 0, at=MID, end_offset=3)
    finally:
        await stop_api(api)
    api = await start_api(tmp_path / "data")
    try:
        broker = api.server.app[BROKER]
        view = await broker.view("default", "t")
        assert (await broker.worker.stats(view.key(0))).sealed  # the start sealed the log
        parent = await _read_partition(api, "t", 0)
        assert parent["sealed"] is True and len(parent["records"]) == 3
        status, body = await api.call(
            "POST", "/v1/topics/t/records", json={"records": [{"value": "y"}]}
        )
        assert status == 200 and body["offsets"][0]["partition"] in (1, 2)
    finally:
        await stop_api(api)
