"""Tiered storage through a real server and moto's S3 over HTTP: upload, local retention,
a stalled store and backpressure, remote retention's order, topic deletion, cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.keys import BROKER
from gateway.tenancy.quotas import Quotas
from gateway.wiring.state import CATALOG, LOCAL_WORKER, TIERING
from partitions.catalog import RemoteSegmentRecord, RemoteSegmentState
from partitions.log.values import SegmentInfo
from partitions.partition_key import PartitionKey
from tests.conftest import ADMIN_KEY, Api, start_api, stop_api
from tests.logtools import FullMetaOnce
from tests.s3 import bucket_objects, create_bucket
from tests.servers import ROOT, WORKERS, ServerProcess
from tests.tiering_tools import (
    TieredServer,
    local_records,
    produce,
    remote_records,
    start_tiered,
    wait_for,
)

SMALL = {"segment_bytes": 1024}
VALUE = "v" * 150  # about 225 bytes stored: four records to a 1 KiB segment


def value(i: int) -> str:
    return f"{i:05d}-{VALUE}"


@pytest.fixture
async def server(tmp_path: Path, s3_endpoint: str) -> AsyncIterator[TieredServer]:
    made = await start_tiered(tmp_path, s3_endpoint)
    yield made
    await made.close()


async def _all_uploaded(server: TieredServer, topic: str, pid: int = 0) -> bool:
    part = await server.partition(topic, pid)
    return part["segments_pending_upload"] == 0 and part["remote_bytes"] > 0


async def _uploaded_topic(api: Api, count: int) -> None:
    """Topic ``t`` (small segments) with ``count`` records, its rolled segments uploaded."""
    assert (await api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    for i in range(count):
        assert (await produce(api, "t", [value(i)]))[0] == 200

    async def uploaded() -> bool:
        _, body = await api.call("GET", "/v1/topics/t")
        return bool(body["partitions"][0]["segments_pending_upload"] == 0)

    await wait_for(uploaded, what="uploads")


async def _produce_range(server: TieredServer, topic: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        status, body = await produce(server.api, topic, [value(i)])
        assert status == 200, body
        assert body["offsets"][0]["offset"] == i


async def test_rolled_segments_are_uploaded_under_their_keys_byte_for_byte(
    server: TieredServer,
) -> None:
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    await _produce_range(server, "t", 0, 120)
    await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
    inc = await server.incarnation("t")
    directory = await server.partition_dir("t")
    rolled = sorted(p for p in directory.glob("*.log"))[:-1]  # all but the active segment
    assert len(rolled) >= 25
    objects = await server.objects()
    expected = {
        f"default/{inc}/0/{log_file.stem}{suffix}"
        for log_file in rolled
        for suffix in (".log", ".index", ".timeindex")
    }
    assert set(objects) == expected
    for key, data in objects.items():
        assert data == (directory / key.rsplit("/", 1)[1]).read_bytes(), key
    part = await server.partition("t")
    assert part["remote_start_offset"] == 0 and part["start_offset"] == 0
    assert part["remote_bytes"] == sum(p.stat().st_size for p in rolled)
    # The catalog rows say copy-finished, name the .log object and describe the segment.
    async with server.catalog() as catalog:
        rows = await catalog.list_remote_segments("default", inc, 0)
    assert [r.state for r in rows] == [RemoteSegmentState.COPY_FINISHED] * len(rolled)
    assert [r.object_key for r in rows] == [f"default/{inc}/0/{p.name}" for p in rolled]
    assert rows[1].base_offset == rows[0].last_offset + 1
    _, metrics = await server.api.call("GET", "/metrics", key=ADMIN_KEY)
    assert f"eventbus_tiering_uploaded_segments_total {float(len(rolled))}" in metrics
    assert "eventbus_tiering_upload_backlog_bytes 0.0" in metrics
    assert "eventbus_tiering_upload_lag_seconds" in metrics


async def test_local_retention_keeps_the_disk_bounded_and_the_data_in_the_bucket(
    server: TieredServer,
) -> None:
    bound = 4096
    config = {**SMALL, "local_retention_bytes": bound}
    assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
    directory = await server.partition_dir("t")
    total = 0
    for round_no in range(4):  # well past local retention: about 30 KiB in all
        await _produce_range(server, "t", total, 35)
        total += 35
        await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")

        async def trimmed() -> bool:
            return (await server.partition("t"))["local_bytes"] < bound + 1024

        await wait_for(trimmed, what=f"local retention, round {round_no}")
        on_disk = sum(p.stat().st_size for p in directory.iterdir())
        # The logs within the bound (plus at most one segment it may not cut into) and
        # their small indexes.
        assert on_disk < bound + 1024 + 1024, on_disk
    part = await server.partition("t")
    local_start = part["local_start_offset"]
    assert part["start_offset"] == part["remote_start_offset"] == 0
    assert local_start > 100 and part["end_offset"] == total
    # Nothing is lost: every record is on disk or in the bucket, exactly as produced, and
    # reads from the log start find all of it (tests/test_cold_reads.py has the details).
    local = await local_records(server.api, "t", local_start)
    remote = remote_records(await server.objects())
    assert {**remote, **local} == {i: value(i) for i in range(total)}
    assert set(remote) >= set(range(local_start))
    assert await local_records(server.api, "t", 0) == {i: value(i) for i in range(total)}


async def test_a_stalled_store_loses_nothing_and_backpressure_engages_and_clears(
    tmp_path: Path, s3_endpoint: str
) -> None:
    server = await start_tiered(tmp_path, s3_endpoint, max_upload_backlog_bytes=6 * 1024)
    try:
        config = {**SMALL, "local_retention_bytes": 2048}
        assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
        await _produce_range(server, "t", 0, 40)
        await wait_for(lambda: _all_uploaded(server, "t"), what="uploads before the stall")

        async def trimmed() -> bool:
            return (await server.partition("t"))["local_bytes"] < 2048 + 1024

        await wait_for(trimmed, what="local retention before the stall")
        server.proxy.freeze()  # every request to the store now hangs past its deadline
        before = await server.partition("t")
        acked: dict[int, str] = {}
        refused = None
        for i in range(40, 400):
            status, body = await produce(server.api, "t", [value(i)])
            if status == 503:
                refused = body
                break
            assert status == 200, body
            acked[body["offsets"][0]["offset"]] = value(i)
        assert refused is not None, "backpressure never engaged"
        assert refused["error"]["code"] == "storage_backpressure"
        status, headers, _ = await server.api.raw(
            "POST",
            "/v1/topics/t/records",
            data=b'{"records": [{"value": "x"}]}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 503 and headers["Retry-After"]
        during = await server.partition("t")
        # Nothing was uploaded while the store was down, and local retention deleted only
        # copies that were uploaded before: every offset below the local start is remote.
        assert during["remote_end_offset"] == before["remote_end_offset"]
        assert during["local_start_offset"] <= during["remote_end_offset"]
        assert during["segments_pending_upload"] > 0

        async def failures_counted() -> bool:
            _, metrics = await server.api.call("GET", "/metrics", key=ADMIN_KEY)
            line = next(
                line
                for line in metrics.splitlines()
                if line.startswith("eventbus_tiering_upload_fa")
            )
            return float(line.split()[-1]) > 0

        await wait_for(failures_counted, what="timed-out uploads to show in /metrics")
        server.proxy.thaw()
        await wait_for(lambda: _all_uploaded(server, "t"), what="uploads to catch up")
        # Backpressure clears by itself: at once in one process; with worker processes once
        # every worker's backlog report (sent every quarter second) shows the catch-up.
        next_value = value(1000)
        answers: list[tuple[int, Any]] = []

        async def accepted() -> bool:
            answers.append(await produce(server.api, "t", [next_value]))
            return answers[-1][0] == 200

        await wait_for(accepted, within=5.0, what="backpressure to clear")
        assert all(a[1]["error"]["code"] == "storage_backpressure" for a in answers[:-1])
        assert WORKERS or len(answers) == 1
        acked[answers[-1][1]["offsets"][0]["offset"]] = next_value
        await wait_for(
            lambda: _local_start_moved(server, before["local_start_offset"]),
            what="local retention after the store came back",
        )
        part = await server.partition("t")
        local = await local_records(server.api, "t", part["local_start_offset"])
        held = {**remote_records(await server.objects()), **local}
        for offset, expected in acked.items():
            assert held.get(offset) == expected, f"offset {offset} lost"
        assert sorted(held) == list(range(part["end_offset"]))
    finally:
        await server.close()


async def _local_start_moved(server: TieredServer, before: int) -> bool:
    return bool((await server.partition("t"))["local_start_offset"] > before)


async def test_remote_retention_advances_the_start_then_deletes_oldest_first(
    server: TieredServer,
) -> None:
    catalog = await server.open_catalog()
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    old = int(time.time() * 1000) - 2 * 3600 * 1000
    for i in range(24):
        status, body = await produce(server.api, "t", [value(i)], timestamp_ms=old)
        assert status == 200, body
    await _produce_range(server, "t", 24, 12)  # current timestamps
    await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
    inc = await server.incarnation("t")
    rows = await catalog.list_remote_segments("default", inc, 0)
    expired = [r for r in rows if r.last_offset < 24]
    assert len(expired) >= 5
    boundary = expired[-1].last_offset + 1
    # The store stalls, so the deletions it needs stop where the order can be seen.
    server.proxy.freeze()
    status, _ = await server.api.call("PATCH", "/v1/topics/t", json={"retention_ms": 3_600_000})
    assert status == 200

    async def start_moved() -> bool:
        return bool((await server.partition("t"))["start_offset"] == boundary)

    await wait_for(start_moved, what="the log start to advance")
    # 1. The log start moved first: the expired offsets are gone for readers ...
    status, body = await server.api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0"}
    )
    assert status == 416 and body["error"]["details"]["start_offset"] == boundary
    partition = await catalog.get_partition("default", "t", 0)
    assert partition.start_offset == boundary
    # 2. ... the oldest row went delete-started, the others wait their turn, and every
    # object is still there.
    await asyncio.sleep(1.5)
    states = {r.base_offset: r.state for r in await catalog.list_remote_segments("default", inc, 0)}
    assert states[expired[0].base_offset] is RemoteSegmentState.DELETE_STARTED
    assert all(states[r.base_offset] is RemoteSegmentState.COPY_FINISHED for r in rows[1:]), states
    assert len(await server.objects()) == 3 * len(rows)
    # 3. The store answers again: objects deleted, then rows removed, for every expired
    # segment and no other.
    server.proxy.thaw()

    async def expired_gone() -> bool:
        left = await catalog.list_remote_segments("default", inc, 0)
        return [r.base_offset for r in left] == [r.base_offset for r in rows[len(expired) :]]

    await wait_for(expired_gone, what="remote deletion")
    objects = await server.objects()
    assert {k.rsplit("/", 1)[1].split(".")[0] for k in objects} == {
        f"{r.base_offset:020d}" for r in rows[len(expired) :]
    }
    part = await server.partition("t")
    assert part["remote_start_offset"] == boundary == part["local_start_offset"]


async def test_total_retention_bytes_count_remote_and_local_across_partitions(
    server: TieredServer,
) -> None:
    config = {**SMALL, "retention_bytes": 8 * 1024, "local_retention_bytes": 2048}
    assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
    status, _ = await server.api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200
    for i in range(120):  # keyed to both children
        status, body = await server.api.call(
            "POST", "/v1/topics/t/records", json={"records": [{"key": f"k{i}", "value": VALUE}]}
        )
        assert status == 200, body

    async def settled() -> bool:
        body = await server.describe("t")
        parts = [p for p in body["partitions"] if p["state"] == "active"]
        total = sum(p["remote_bytes"] + p["local_bytes"] for p in parts)
        return all(p["segments_pending_upload"] == 0 for p in parts) and total < 14 * 1024

    await wait_for(settled, what="total retention")
    body = await server.describe("t")
    children = [p for p in body["partitions"] if p["state"] == "active"]
    assert all(p["start_offset"] > 0 for p in children), "each partition gave up its oldest"

    async def local_trimmed() -> bool:
        # Local retention trims what the last uploads made removable at its next pass.
        body = await server.describe("t")
        children = [p for p in body["partitions"] if p["state"] == "active"]
        return sum(p["local_bytes"] for p in children) < 2048 + 2 * 1024 + 2 * 1024

    await wait_for(local_trimmed, what="local retention")


async def test_idle_and_sealed_partitions_upload_their_last_segment(
    server: TieredServer,
) -> None:
    config = {"segment_ms": 1000}
    assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
    await _produce_range(server, "t", 0, 3)
    await wait_for(lambda: _all_uploaded(server, "t"), what="the segment timer's roll")
    assert (await server.partition("t"))["remote_bytes"] > 0
    await _produce_range(server, "t", 3, 2)
    status, _ = await server.api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200

    async def sealed_uploaded() -> bool:
        part = await server.partition("t")
        return bool(part["state"] == "sealed" and part["segments_pending_upload"] == 0)

    await wait_for(sealed_uploaded, what="the sealed partition's upload")
    held = remote_records(await server.objects(f"default/{await server.incarnation('t')}/0/"))
    assert held == {i: value(i) for i in range(5)}


async def test_a_deleted_and_recreated_topic_never_sees_the_old_objects(
    server: TieredServer,
) -> None:
    catalog = await server.open_catalog()
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    await _produce_range(server, "t", 0, 30)
    await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
    old = await server.incarnation("t")
    assert await server.objects(f"default/{old}/")
    assert (await server.api.call("DELETE", "/v1/topics/t"))[0] == 204
    assert await server.objects(f"default/{old}/") == {}  # deleting a topic deletes them
    assert await catalog.list_remote_segments("default", old, 0) == []
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    new = await server.incarnation("t")
    assert new != old
    part = await server.partition("t")
    assert (part["start_offset"], part["end_offset"], part["remote_bytes"]) == (0, 0, 0)
    status, body = await produce(server.api, "t", ["fresh"])
    assert status == 200 and body["offsets"][0]["offset"] == 0
    status, body = await server.api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0"}
    )
    assert [r["value"] for r in body["records"]] == ["fresh"]


async def test_a_topic_deleted_while_the_store_is_down_loses_its_objects_later(
    server: TieredServer,
) -> None:
    catalog = await server.open_catalog()
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    await _produce_range(server, "t", 0, 20)
    await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
    old = await server.incarnation("t")
    server.proxy.freeze()
    assert (await server.api.call("DELETE", "/v1/topics/t"))[0] == 204
    assert await server.objects(f"default/{old}/")  # still there: the store did not answer
    assert [t.incarnation for t in await catalog.list_deleted_topics()] == [old]
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201  # name free
    server.proxy.thaw()

    async def finished() -> bool:
        return not await server.objects(f"default/{old}/") and not (
            await catalog.list_deleted_topics()
        )

    await wait_for(finished, what="the deletion to finish")


@pytest.mark.single_process("makes the disk fail by patching the server process")
async def test_a_log_start_that_failed_to_persist_is_persisted_by_the_next_pass(
    tmp_path: Path,
) -> None:
    """Total retention moves the start, but the disk is full when the log writes it down:
    no remote copy below it goes until the log has it on disk, the next pass writes it, and
    the start never goes back down after a restart."""
    data = tmp_path / "data"
    api = await start_api(data, retention_check_ms=3_600_000, upload_retry_max_ms=300)
    try:
        broker = api.server.app[BROKER]
        await _uploaded_topic(api, 40)
        view = broker.views.get("default", "t")
        log = broker.worker.log(view.key(0))  # type: ignore[attr-defined]
        remote = data / "objects" / "default" / view.record.incarnation / "0"
        uploaded_logs = sorted(p.name for p in remote.glob("*.log"))
        meta_path = log.directory / "partition.json"
        full = FullMetaOnce()
        log.ops = full
        full.armed = True
        status, _ = await api.call("PATCH", "/v1/topics/t", json={"retention_bytes": 2048})
        assert status == 200
        await broker.apply_retention()  # fails for this topic: the disk is full
        start = (await api.server.app[CATALOG].get_partition("default", "t", 0)).start_offset
        assert start > 0
        assert json.loads(meta_path.read_bytes())["log_start_offset"] == 0
        assert sorted(p.name for p in remote.glob("*.log")) == uploaded_logs
        await broker.apply_retention()  # the disk has room again
        assert json.loads(meta_path.read_bytes())["log_start_offset"] == start
        assert f"{0:020d}.log" not in {p.name for p in remote.glob("*.log")}
    finally:
        await stop_api(api)
    api = await start_api(data, retention_check_ms=3_600_000)
    try:
        _, described = await api.call("GET", "/v1/topics/t")
        assert described["partitions"][0]["start_offset"] == start
        status, _ = await api.call("GET", "/v1/topics/t/partitions/0/records", params={"offset": 0})
        assert status == 416
        status, body = await api.call(
            "GET", "/v1/topics/t/partitions/0/records", params={"offset": start}
        )
        assert status == 200 and body["records"][0]["value"] == value(start)
    finally:
        await stop_api(api)


@pytest.mark.single_process("drives retention inside the server process")
async def test_a_remote_row_another_process_is_deleting_does_not_stop_the_pass(
    tmp_path: Path,
) -> None:
    """The oldest remote row expired by total retention was already moved to delete-started
    by someone else (a cleanup, another process) behind this process's back: the pass goes
    on to the other expired rows and to local retention, and the next pass takes that row."""
    data = tmp_path / "data"
    api = await start_api(data, retention_check_ms=3_600_000, upload_retry_max_ms=300)
    try:
        broker = api.server.app[BROKER]
        catalog = api.server.app[CATALOG]
        await _uploaded_topic(api, 40)
        inc = broker.views.get("default", "t").record.incarnation
        rows = await catalog.list_remote_segments("default", inc, 0)
        assert len(rows) >= 8
        await broker.apply_retention()  # the remote index now holds the rows
        taken = rows[0]
        await catalog.set_remote_segment_state(
            "default",
            inc,
            0,
            taken.base_offset,
            from_state=RemoteSegmentState.COPY_FINISHED,
            to_state=RemoteSegmentState.DELETE_STARTED,
        )
        config = {"retention_bytes": 4096, "local_retention_bytes": 2048}
        assert (await api.call("PATCH", "/v1/topics/t", json=config))[0] == 200
        await broker.apply_retention()
        part = (await api.call("GET", "/v1/topics/t"))[1]["partitions"][0]
        start = part["start_offset"]
        assert start > rows[2].base_offset
        assert part["local_start_offset"] > start  # local retention ran in the same pass
        left = {r.base_offset for r in await catalog.list_remote_segments("default", inc, 0)}
        assert {r.base_offset for r in rows if r.last_offset < start} & left == {taken.base_offset}
        await broker.apply_retention()
        left = {r.base_offset for r in await catalog.list_remote_segments("default", inc, 0)}
        assert taken.base_offset not in left
    finally:
        await stop_api(api)


class PausedDetails:
    """The server's own partition worker's ``segment_details``, except that its first call
    waits for ``go`` once it has its answer (a slow scan): retention's pass stops there."""

    def __init__(self, details: Callable[[PartitionKey], Awaitable[list[SegmentInfo]]]) -> None:
        self.details = details
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def segment_details(self, key: PartitionKey) -> list[SegmentInfo]:
        details = await self.details(key)
        if not self.paused.is_set():
            self.paused.set()
            await self.go.wait()
        return details


@pytest.mark.single_process("drives retention inside the server process")
async def test_retention_of_a_deleted_topic_never_moves_the_start_of_its_recreation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention pass of topic t is between reading its segments and moving its start when
    t is deleted and created again: the pass must not touch the new topic's partitions."""
    api = await start_api(tmp_path / "data", retention_check_ms=3_600_000)
    try:
        broker = api.server.app[BROKER]
        config = {**SMALL, "retention_bytes": 2048}
        assert (await api.call("PUT", "/v1/topics/t", json=config))[0] == 201
        for i in range(40):
            assert (await produce(api, "t", [value(i)]))[0] == 200
        # The worker retention reads the partitions' segments from: this process's own.
        worker = api.server.app[LOCAL_WORKER]
        paused = PausedDetails(worker.segment_details)
        monkeypatch.setattr(worker, "segment_details", paused.segment_details)
        try:
            passing = asyncio.ensure_future(broker.apply_retention())
            await asyncio.wait_for(paused.paused.wait(), 10)
            assert (await api.call("DELETE", "/v1/topics/t"))[0] == 204
            assert (await api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
            paused.go.set()
            await passing
        finally:
            monkeypatch.undo()
        (fresh,) = await api.server.app[CATALOG].list_partitions("default", "t")
        assert fresh.start_offset == 0
        for i in range(10):
            assert (await produce(api, "t", [f"new-{i}"]))[0] == 200
        await broker.apply_retention()
        _, described = await api.call("GET", "/v1/topics/t")
        assert described["partitions"][0]["start_offset"] == 0
        values = await local_records(api, "t", 0)
        assert values == {i: f"new-{i}" for i in range(10)}
    finally:
        await stop_api(api)


async def test_a_topic_created_again_waits_for_its_deletion_to_finish(
    server: TieredServer,
) -> None:
    """A PUT of a name whose deletion is still running (its objects are being deleted) waits
    for that deletion instead of running alongside it."""
    assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
    await _produce_range(server, "t", 0, 12)
    await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
    old = await server.incarnation("t")
    server.proxy.hold = lambda line: old in line  # the store stalls on the old objects
    deleting = asyncio.ensure_future(server.api.call("DELETE", "/v1/topics/t"))
    await asyncio.wait_for(server.proxy.held.wait(), 10)
    creating = asyncio.ensure_future(server.api.call("PUT", "/v1/topics/t", json=SMALL))
    done, _ = await asyncio.wait({deleting, creating}, return_when=asyncio.FIRST_COMPLETED)
    server.proxy.hold = None
    server.proxy.thaw()
    assert (await deleting)[0] == 204
    assert (await creating)[0] == 201
    assert deleting in done, "the PUT ran alongside the deletion"
    assert await server.incarnation("t") != old


async def test_orphans_are_removed_after_the_grace_period(tmp_path: Path, s3_endpoint: str) -> None:
    server = await start_tiered(tmp_path, s3_endpoint, orphan_grace_ms=3_000, orphan_check_ms=200)
    try:
        catalog = await server.open_catalog()
        assert (await server.api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
        await _produce_range(server, "t", 0, 20)
        await wait_for(lambda: _all_uploaded(server, "t"), what="uploads")
        inc = await server.incarnation("t")
        kept = await server.objects()
        store = await server.open_store()
        # An object no row names, and a copy that started but will never be retried (no
        # such segment here), with its object.
        stray = f"default/{inc}/0/{99_999:020d}.log"
        await store.put(stray, b"left by a crash")
        abandoned = RemoteSegmentRecord(
            tenant="default",
            incarnation=inc,
            partition_id=0,
            base_offset=88_888,
            last_offset=88_890,
            size_bytes=9,
            first_timestamp_ms=1,
            max_timestamp_ms=2,
            object_key=f"default/{inc}/0/{88_888:020d}.log",
            state=RemoteSegmentState.COPY_STARTED,
        )
        await catalog.add_remote_segment(abandoned)
        await store.put(abandoned.object_key, b"half a copy")
        # An object of another application in the same bucket is never touched.
        await store.put("someone-else/notes.txt", b"mine")
        await asyncio.sleep(0.6)  # cleanup passes, too early for either (S3 dates to the second)
        assert stray in await server.objects() and abandoned.object_key in await server.objects()

        async def cleaned() -> bool:
            rows = await catalog.list_remote_segments("default", inc, 0)
            return 88_888 not in {r.base_offset for r in rows} and set(await server.objects()) == {
                *kept,
                "someone-else/notes.txt",
            }

        await wait_for(cleaned, within=20, what="orphan cleanup")
        rows = await catalog.list_remote_segments("default", inc, 0)
        assert all(r.state is RemoteSegmentState.COPY_FINISHED for r in rows)
        assert len(rows) * 3 == len(kept)
    finally:
        await server.close()


async def test_the_default_store_is_a_directory_under_the_data_dir(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data", retention_check_ms=100)
    try:
        assert (await api.call("PUT", "/v1/topics/t", json=SMALL))[0] == 201
        for i in range(12):
            await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": value(i)}]})

        async def uploaded() -> bool:
            _, body = await api.call("GET", "/v1/topics/t")
            part = body["partitions"][0]
            return bool(part["segments_pending_upload"] == 0 and part["remote_bytes"] > 0)

        await wait_for(uploaded, what="uploads to the file store")
        logs = sorted((tmp_path / "data" / "objects" / "default").glob("*/0/*.log"))
        assert len(logs) >= 2
        local = tmp_path / "data" / "topics" / "default" / logs[0].parent.parent.name / "0"
        assert logs[0].read_bytes() == (local / logs[0].name).read_bytes()
    finally:
        await stop_api(api)


def test_serve_refuses_an_unknown_object_store(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(tmp_path / "d")]
        + ["--object-store", "gs://bucket"],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"unknown object store scheme 'gs'" in result.stderr


async def test_serve_takes_the_store_from_its_environment(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = await create_bucket(s3_endpoint)
    env = {
        "EVENTBUS_OBJECT_STORE": f"s3://{bucket}/from-env",
        "EVENTBUS_S3_ENDPOINT": s3_endpoint,
        "EVENTBUS_RETENTION_CHECK_MS": "100",
    }
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        auth = {"Authorization": f"Bearer {server.keys['EVENTBUS_API_KEY']}"}
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.put(f"{server.url}/v1/topics/t", json=SMALL) as response:
                assert response.status == 201
            for i in range(10):
                records = {"records": [{"value": value(i)}]}
                async with session.post(f"{server.url}/v1/topics/t/records", json=records) as r:
                    assert r.status == 200

            async def uploaded() -> bool:
                return any(k.endswith(".log") for k in await bucket_objects(s3_endpoint, bucket))

            await wait_for(uploaded, what="an upload to the bucket named in the environment")
        assert all(
            k.startswith("from-env/default/") for k in await bucket_objects(s3_endpoint, bucket)
        )
    finally:
        assert server.stop() == 0


@pytest.mark.single_process("sets the tiering service's failure inside the server process")
async def test_health_says_when_tiered_storage_stopped(server: TieredServer) -> None:
    assert await server.api.call("GET", "/healthz") == (200, {"status": "ok"})
    server.api.server.app[TIERING].failed = RuntimeError("the upload loop died")
    status, body = await server.api.call("GET", "/healthz")
    assert status == 503 and body["status"] == "unhealthy"


async def test_the_storage_quota_counts_tiered_bytes(tmp_path: Path, s3_endpoint: str) -> None:
    quota = 12 * 1024
    server = await start_tiered(
        tmp_path, s3_endpoint, default_quotas=Quotas(max_stored_bytes=quota)
    )
    try:
        config = {**SMALL, "local_retention_bytes": 2048}
        assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
        refused = None
        for i in range(200):
            status, body = await produce(server.api, "t", [value(i)])
            if status == 429:
                refused = body
                break
            assert status == 200, body
            await asyncio.sleep(0.02)  # let uploads and local retention keep up
        assert refused is not None and refused["error"]["code"] == "storage_quota_exceeded"
        part = await server.partition("t")
        # Refused on local and remote bytes together, while the disk holds far less.
        assert part["local_bytes"] < quota // 2
        assert part["local_bytes"] + part["remote_bytes"] >= quota
    finally:
        await server.close()
