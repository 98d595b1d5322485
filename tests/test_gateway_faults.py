"""Races and failures around the broker, each one a defect an earlier version had."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path

import pytest

from gateway.broker.service import key_hash
from gateway.http.keys import BROKER
from partitions.batch import NewRecord
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.errors import PartitionUnavailableError
from partitions.fileio import FileOps, WriteFailedError
from partitions.incoming import RecordList
from tests.conftest import ADMIN_KEY, Api, start_api, stop_api
from tests.servers import read_credentials

MID = 1 << 63


@pytest.mark.single_process("counts the broker's locks inside the server process")
async def test_lookups_of_missing_topics_leak_a_lock_each(api: Api) -> None:
    broker = api.server.app[BROKER]
    before = broker.views.lock_count
    for n in range(500):
        status, _ = await api.call("GET", f"/v1/topics/no-such-topic-{n}")
        assert status == 404
    assert broker.views.lock_count - before < 10, broker.views.lock_count - before


@pytest.mark.single_process("counts the broker's locks inside the server process")
async def test_deletes_splits_and_merges_of_missing_topics_keep_no_lock(api: Api) -> None:
    broker = api.server.app[BROKER]
    before = broker.views.lock_count
    for n in range(100):
        assert (await api.call("DELETE", f"/v1/topics/gone-d{n}"))[0] == 404
        assert (await api.call("POST", f"/v1/topics/gone-s{n}/partitions/0/split"))[0] == 404
        merge = {"partitions": [1, 2]}
        assert (await api.call("POST", f"/v1/topics/gone-m{n}/merge", json=merge))[0] == 404
    assert broker.views.lock_count - before < 10, broker.views.lock_count - before


async def test_long_poll_above_the_high_watermark_is_416_at_once(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    started = time.monotonic()
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "5", "wait_ms": "3000"}
    )
    elapsed = time.monotonic() - started
    assert status == 416, body
    assert elapsed < 1.0, f"416 came after {elapsed:.1f}s"


async def test_a_start_cut_short_in_the_first_setup_is_finished_by_the_next(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # The process died after bootstrap's create_tenant('default') committed, before the
    # key and the 'bootstrapped' setting were written.
    catalog = await SqliteCatalog.open(data / CATALOG_FILE)
    await catalog.create_tenant("default")
    await catalog.close()
    api = await start_api(data)  # finishes the setup instead of failing on the tenant
    try:
        key = read_credentials(data)["EVENTBUS_API_KEY"]
        assert (await api.call("PUT", "/v1/topics/t", key=key))[0] == 201
    finally:
        await stop_api(api)


@pytest.mark.single_process("races the broker's own calls inside the server process")
async def test_patch_racing_delete_and_recreate(api: Api) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/t")
    delete = asyncio.ensure_future(broker.delete_topic("default", "t"))
    await asyncio.sleep(0)  # DELETE holds the topic lock, awaiting the catalog
    put = asyncio.ensure_future(broker.put_topic("default", "t", {}))
    await asyncio.sleep(0)
    patch = asyncio.ensure_future(broker.patch_topic("default", "t", {"retention_ms": 1000}))
    await delete
    _, created = await put
    assert created
    await patch  # answers the view of the deleted incarnation (the handler's describe -> 404)
    stored = await broker.catalog.get_topic("default", "t")
    assert stored.config["retention_ms"] == 1000  # the change is committed ...
    live = broker.views.get("default", "t")  # ... but the live view never sees it
    assert live.record.config["retention_ms"] == 1000, live.record.config["retention_ms"]


async def test_long_poll_released_by_a_split_names_no_children(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    poll = asyncio.ensure_future(
        api.call(
            "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0", "wait_ms": "5000"}
        )
    )
    await asyncio.sleep(0.3)
    status, _ = await api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200
    status, body = await poll
    assert status == 200 and body["sealed"] is True
    assert body["children"] == [1, 2], body


@pytest.mark.single_process("changes the catalog and a log behind the broker's back")
async def test_sealed_retry_duplicates_the_batches_that_succeeded(api: Api) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    view = broker.views.get("default", "t")
    # Partition 2 is sealed in the catalog and its log, but this process's view still routes
    # to it (the case produce's retry exists for: 'sealed by hand, before a restart').
    await broker.catalog.split_partition("default", "t", 2, at=MID + (MID >> 1), end_offset=0)
    await broker.worker.seal(view.key(2))
    low = next(f"a{i}" for i in range(1000) if key_hash(f"a{i}".encode()) < MID)
    high = next(
        f"b{i}" for i in range(1000) if MID <= key_hash(f"b{i}".encode()) < MID + (MID >> 1)
    )
    status, body = await api.call(
        "POST",
        "/v1/topics/t/records",
        json={"records": [{"key": low, "value": "x"}, {"key": high, "value": "y"}]},
    )
    assert status == 200, body
    status, body = await api.call("GET", "/v1/topics/t/partitions/1/records")
    assert [r["value"] for r in body["records"]] == ["x"], body["records"]


@pytest.mark.single_process("makes the disk fail by patching the server process")
async def test_a_disk_full_answer_does_not_name_server_paths(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.call("PUT", "/v1/topics/t")

    def full(self: FileOps, fd: int, buffers: object, offset: int) -> int:
        raise WriteFailedError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileOps, "pwritev", full)
    status, body = await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"value": "x"}]}
    )
    assert status == 503 and body["error"]["code"] == "disk_full"
    assert str(api.data_dir) not in str(body) and "/" not in body["error"]["message"]


@pytest.mark.single_process("races the broker's own calls inside the server process")
async def test_patch_during_a_split_is_acknowledged_but_lost(api: Api) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/t")
    split = asyncio.ensure_future(broker.split("default", "t", 0, None))
    await asyncio.sleep(0)  # the split holds the topic lock, in the catalog
    patch = asyncio.ensure_future(broker.patch_topic("default", "t", {"retention_ms": 1000}))
    await split
    view = await patch  # what the PATCH handler answers 200 with
    assert view.record.config["retention_ms"] == 1000
    assert (await broker.catalog.get_topic("default", "t")).config["retention_ms"] == 1000
    status, body = await api.call("GET", "/v1/topics/t")
    assert body["config"]["retention_ms"] == 1000, body["config"]["retention_ms"]


async def _raw(host: str, port: int, method: str) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    await reader.read()
    writer.close()


async def test_unauthenticated_methods_grow_metric_label_sets(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data")
    try:
        for n in range(200):
            await _raw(str(api.server.host), int(api.server.port or 0), f"M{n:04d}")
        _, text = await api.call("GET", "/metrics", key=ADMIN_KEY)
        series = [
            line for line in text.splitlines() if line.startswith("eventbus_http_requests_total{")
        ]
        assert len(series) < 50, f"{len(series)} series"
    finally:
        await stop_api(api)


@pytest.mark.single_process("makes a seal fail by patching the server process")
async def test_split_whose_seal_fails_keeps_producing_to_the_sealed_parent(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/t")

    async def unavailable(key: object) -> int:  # the parent is recovering from an I/O error
        raise PartitionUnavailableError("recovering")

    monkeypatch.setattr(broker.worker, "seal", unavailable)
    status, body = await api.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200, body  # the catalog changed; the log seal is retried later
    monkeypatch.undo()
    status, body = await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"key": "k", "value": "v"}]}
    )
    assert status == 200, body
    assert body["offsets"][0]["partition"] != 0, "written to a partition the catalog sealed"
    await broker.apply_retention()  # retries the seal
    assert (await broker.worker.stats((await broker.view("default", "t")).key(0))).sealed


@pytest.mark.single_process("makes a partition fail by patching the server process")
async def test_one_failing_partition_does_not_stop_retention_of_other_topics(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/a")
    await api.call("PUT", "/v1/topics/b")
    seen = []
    # Retention (tiered: remote and local together) looks at each partition's segments.
    real = broker.worker.segment_details

    async def details(key: object) -> object:
        seen.append(key)
        if key == broker.views.get("default", "a").key(0):
            raise PartitionUnavailableError("recovering")
        return await real(key)  # type: ignore[arg-type]

    monkeypatch.setattr(broker.worker, "segment_details", details)
    await broker.apply_retention()  # logs topic a's failure and goes on
    assert broker.views.get("default", "b").key(0) in seen, "topic b was never considered"


@pytest.mark.single_process("races the broker's own calls inside the server process")
async def test_sealed_retry_deadlocks_with_a_split(api: Api) -> None:
    broker = api.server.app[BROKER]
    await api.call("PUT", "/v1/topics/t")
    view = broker.views.get("default", "t")
    await broker.worker.seal(view.key(0))  # the log is sealed, the view still routes to it
    produce = asyncio.ensure_future(
        broker.produce("default", "t", RecordList([NewRecord(value=b"v", key=b"k")]))
    )
    await asyncio.sleep(0)  # the produce is in flight (gathering its append)
    split = asyncio.ensure_future(broker.split("default", "t", 0, None))
    done, pending = await asyncio.wait({produce, split}, timeout=3)
    for task in pending:
        task.cancel()
    assert not pending, "produce and split wait for each other forever"
