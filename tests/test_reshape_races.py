"""Splits and merges racing everything else: nothing acknowledged past a parent's end, and
no request fails because the topic changed shape under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.service import Broker
from partitions.batch import NewRecord
from partitions.catalog_sqlite import SqliteCatalog
from partitions.incoming import RecordList
from partitions.worker import LocalPartitionWorker
from tests.brokers import local_broker
from tests.conftest import Api
from tests.logtools import HeldSyncOps


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[Broker, HeldSyncOps]]:
    catalog = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    await catalog.create_tenant("acme")
    ops = HeldSyncOps()
    # The local worker, with its logs writing through ops.
    worker = LocalPartitionWorker(tmp_path, ops=ops)
    try:
        async with local_broker(catalog, worker, tmp_path) as broker:
            yield broker, ops
            ops.release.set()
    finally:
        await catalog.close()


async def test_a_split_waits_for_an_append_running_on_an_older_view(
    held: tuple[Broker, HeldSyncOps],
) -> None:
    broker, ops = held
    await broker.put_topic("acme", "t", {})
    ops.hold = True
    producing = asyncio.ensure_future(
        broker.produce("acme", "t", RecordList([NewRecord(value=b"v", key=b"k")]))
    )
    await asyncio.to_thread(ops.entered.wait, 10)  # the append is in flight
    # The view is reloaded from the catalog (as a produce that met a partition sealed by
    # another process does) while that append still runs on the old one.
    await broker.views.load("acme", "t")
    splitting = asyncio.ensure_future(broker.split("acme", "t", 0, None))
    await asyncio.sleep(0.1)
    assert not splitting.done(), "the split must wait for the append in flight"
    ops.release.set()
    assert await producing == [(0, 0)]
    change = await splitting
    # The acknowledged record lies below the end the catalog sealed the parent at.
    assert change.sealed[0].end_offset == 1


async def test_requests_racing_many_splits_and_merges_never_fail(api: Api) -> None:
    """Producers, describes, reads and group fetches while the topic is split and merged
    back to back, as the autoscaler does: every request answers 200, keys keep order."""
    await api.call("PUT", "/v1/topics/t")
    failures: list[tuple[str, int, Any]] = []
    acked: dict[str, list[int]] = {}
    running = True

    async def producer(n: int) -> None:
        seq = 0
        keys = [f"k{n}-{i}" for i in range(6)]
        while running:
            records = [{"key": k, "value": str(seq + j)} for j in range(2) for k in keys]
            status, body = await api.call("POST", "/v1/topics/t/records", json={"records": records})
            if status != 200:
                failures.append(("produce", status, body))
                continue
            for record, placed in zip(records, body["offsets"], strict=True):
                acked.setdefault(record["key"], []).append(placed["partition"])
            seq += 2

    async def reader() -> None:
        while running:
            status, body = await api.call("GET", "/v1/topics/t")
            if status != 200:
                failures.append(("describe", status, body))
                continue
            for partition in body["partitions"]:
                status, read = await api.call(
                    "GET", f"/v1/topics/t/partitions/{partition['id']}/records"
                )
                if status != 200:
                    failures.append(("read", status, read))

    async def member() -> None:
        member_id = None
        while running:
            status, body = await api.call(
                "POST", "/v1/topics/t/groups/g/fetch", json={"member_id": member_id, "wait_ms": 50}
            )
            if status != 200:
                failures.append(("fetch", status, body))
                return
            member_id = body["member_id"]

    async def active() -> list[int]:
        status, body = await api.call("GET", "/v1/topics/t")
        assert status == 200, body
        by_range = sorted(
            (p for p in body["partitions"] if p["state"] == "active"),
            key=lambda p: int(p["hash_range"]["start"]),
        )
        return [p["id"] for p in by_range]

    tasks = [asyncio.ensure_future(producer(n)) for n in range(4)]
    tasks += [asyncio.ensure_future(reader()), asyncio.ensure_future(member())]
    for _ in range(6):
        # Split every active partition, then merge the pairs back, with no pause between
        # (with worker processes, the changes and the requests go to any of them).
        for pid in await active():
            status, body = await api.call("POST", f"/v1/topics/t/partitions/{pid}/split")
            assert status == 200, body
        ids = await active()
        for low, high in zip(ids[::2], ids[1::2], strict=True):
            status, body = await api.call(
                "POST", "/v1/topics/t/merge", json={"partitions": [low, high]}
            )
            assert status == 200, body
    running = False
    await asyncio.gather(*tasks)
    assert failures == []
    # A key's partitions rise along lineage (children have larger ids than parents).
    for key, partitions in acked.items():
        assert partitions == sorted(partitions), key
