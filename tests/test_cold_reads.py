"""Cold reads: offsets whose only copy is in the object store, read back through a real
server and moto's S3 over HTTP (file:// too): every record as produced, after a restart,
across the remote/local boundary, by timestamp, within the cache's bound, many partitions
at once, long-polls, read-ahead, ranged fetches, and a read racing retention."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client.wire import BATCH, CHUNK_HEADER, decode_chunks
from partitions.batch import (
    NewRecord,
    decode_records,
    encode_batch,
    read_header,
    with_base_offset,
)
from partitions.catalog import RemoteSegmentRecord, RemoteSegmentState
from partitions.catalog_sqlite import SqliteCatalog
from partitions.log.index import OFFSET_INDEX_ENTRY, TIME_INDEX_ENTRY
from partitions.partition_key import PartitionKey
from tests.conftest import Api, metric_values, start_api, stop_api
from tests.servers import WORKERS, ServerProcess
from tests.tiering_tools import TieredServer, start_tiered, wait_for
from tiered_storage.cache import ReadCache
from tiered_storage.file_store import FileObjectStore
from tiered_storage.layout import segment_key
from tiered_storage.read_settings import ColdReadSettings
from tiered_storage.reader import RemoteSegmentReader
from tiered_storage.remote_segments import RemoteSegmentDamagedError
from tiered_storage.segment_index import RemoteSegmentIndex
from tiered_storage.state import RemoteIndex

# Recent enough for the default retention (7 days); records are one second apart.
T0 = (int(time.time()) - 3600) * 1000
CHUNK = 4096
# Store calls that tests stall on purpose must not time out meanwhile.
TIMEOUT_MS = 10_000
READS = "/v1/topics/{topic}/partitions/{pid}/records"
KEY = PartitionKey("acme", "inc-1", 0)


def _spec(i: int) -> dict[str, Any]:
    """Record ``i`` as produced: keys text, binary or null; values of varied sizes (so that
    batches straddle chunk boundaries); some headers; timestamps one second apart."""
    record: dict[str, Any] = {
        "value": f"{i:05d}-" + "x" * (i * 37 % 500),
        "timestamp_ms": T0 + i * 1000,
        "headers": {"h": str(i)} if i % 3 == 0 else {},
    }
    if i % 7 == 0:
        record["key"] = None
    elif i % 5 == 0:
        record["key_b64"] = base64.b64encode(bytes([i % 256, 0, 255])).decode()
    else:
        record["key"] = f"key-{i}"
    return record


def _expected(i: int, pid: int = 0, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record ``i`` as a read answers it."""
    spec = spec or _spec(i)
    out: dict[str, Any] = {"partition": pid, "offset": i, "timestamp_ms": spec["timestamp_ms"]}
    if "key_b64" in spec:
        out["key_b64"] = spec["key_b64"]
    else:
        out["key"] = spec["key"]
    out["value"] = spec["value"]
    out["headers"] = spec["headers"]
    return out


async def _produce(api: Api, topic: str, specs: list[dict[str, Any]]) -> None:
    """In requests of 1, 2, 3 or 5 records (one batch each), so batches vary in size."""
    i = 0
    sizes = [1, 2, 3, 5]
    n = 0
    while i < len(specs):
        group = specs[i : i + sizes[n % len(sizes)]]
        status, body = await api.call(
            "POST", f"/v1/topics/{topic}/records", json={"records": group}
        )
        assert status == 200, body
        i += len(group)
        n += 1


async def _tiered(
    server: TieredServer | Api,
    count: int,
    *,
    topic: str = "t",
    segment_bytes: int = 8192,
    local_bytes: int = 8192,
    pid: int = 0,
) -> int:
    """A topic with ``count`` records whose older part local retention left in the object
    store only; answers the partition's local start."""
    api = server.api if isinstance(server, TieredServer) else server
    config = {"segment_bytes": segment_bytes, "local_retention_bytes": local_bytes}
    assert (await api.call("PUT", f"/v1/topics/{topic}", json=config))[0] == 201
    await _produce(api, topic, [_spec(i) for i in range(count)])
    return await _settled(api, topic, pid, count // 2)


async def _settled(api: Api, topic: str, pid: int, past: int) -> int:
    async def tiered() -> bool:
        part = await _partition(api, topic, pid)
        return bool(part["segments_pending_upload"] == 0 and part["local_start_offset"] >= past)

    await wait_for(tiered, what="uploads and local retention")
    return int((await _partition(api, topic, pid))["local_start_offset"])


async def _partition(api: Api, topic: str, pid: int = 0) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/topics/{topic}")
    assert status == 200, body
    return dict(next(p for p in body["partitions"] if p["id"] == pid))


async def _read(
    api: Api, offset: int | None, *, topic: str = "t", pid: int = 0, **params: Any
) -> Any:
    query = {k: str(v) for k, v in params.items()}
    if offset is not None:
        query["offset"] = str(offset)
    status, body = await api.call("GET", READS.format(topic=topic, pid=pid), params=query)
    assert status == 200, body
    return body


async def _read_all(api: Api, offset: int = 0, **params: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    while True:
        body = await _read(api, offset, **params)
        records.extend(body["records"])
        if body["next_offset"] >= body["high_watermark"]:
            return records
        assert body["next_offset"] > offset
        offset = body["next_offset"]


async def _read_binary(api: Api, offset: int, **params: Any) -> tuple[bytes, int, int]:
    """(stored batches, next offset, high watermark) of one binary read."""
    query = {"offset": str(offset), **{k: str(v) for k, v in params.items()}}
    status, headers, body = await api.raw(
        "GET", READS.format(topic="t", pid=0), params=query, headers={"Accept": BATCH}
    )
    assert status == 200, body
    data = b""
    if body:
        _partition_id, _from, length = CHUNK_HEADER.unpack_from(body, 0)
        data = body[CHUNK_HEADER.size : CHUNK_HEADER.size + length]
        assert CHUNK_HEADER.size + length == len(body)
    return data, int(headers["Eventbus-Next-Offset"]), int(headers["Eventbus-High-Watermark"])


async def _log_gets(server: TieredServer, pid: int) -> list[str]:
    inc = await server.incarnation("t")
    return [
        line
        for line in server.proxy.requests
        if line.startswith("GET ") and f"/{inc}/{pid}/" in line and ".log" in line
    ]


def _stall_log_gets(server: TieredServer) -> None:
    server.proxy.released.clear()
    server.proxy.stall = lambda line: line.startswith("GET ") and ".log" in line


@pytest.fixture
async def server(tmp_path: Path, s3_endpoint: str) -> AsyncIterator[TieredServer]:
    made = await start_tiered(
        tmp_path, s3_endpoint, read_chunk_bytes=CHUNK, object_store_timeout_ms=TIMEOUT_MS
    )
    yield made
    await made.close()


# --- every record, as produced --------------------------------------------------------------


async def test_reads_from_offset_zero_return_every_record_as_produced(
    server: TieredServer,
) -> None:
    count = 300
    local_start = await _tiered(server, count)
    part = await _partition(server.api, "t")
    assert part["start_offset"] == 0 and local_start >= count // 2
    expected = [_expected(i) for i in range(count)]
    # Pages of an odd size, so that reads start and stop inside batches and segments.
    assert await _read_all(server.api, 0, max_records=37) == expected
    assert await _read_all(server.api, 0, max_records=1000, max_bytes=3000) == expected
    # The binary path hands out the stored batches byte for byte: the tiered part of the
    # stream is exactly the bucket's log objects, one after the other.
    stream = b""
    offset = 0
    while True:
        data, offset, high_watermark = await _read_binary(server.api, offset, max_bytes=5000)
        stream += data
        if offset >= high_watermark:
            break
    objects = await server.objects()
    uploaded = b"".join(objects[k] for k in sorted(objects) if k.endswith(".log"))
    assert len(uploaded) > 8 * 1024 and stream.startswith(uploaded)
    decoded = [
        record for _pid, record in decode_chunks(CHUNK_HEADER.pack(0, 0, len(stream)) + stream)
    ]
    assert [r.offset for r in decoded] == list(range(count))
    assert [r.value.decode() for r in decoded] == [_spec(i)["value"] for i in range(count)]
    metrics = await metric_values(server.api)
    assert metrics["eventbus_cold_reads_total"] > 0
    assert metrics["eventbus_read_cache_misses_total"] > 0
    assert metrics["eventbus_read_cache_hits_total"] > 0
    assert (
        metrics['eventbus_cold_read_seconds_bucket{le="+Inf"}']
        == metrics["eventbus_cold_reads_total"]
    )
    assert metrics["eventbus_read_cache_fetched_bytes_total"] >= len(uploaded) - 16 * 1024


async def test_after_a_restart_reads_start_from_an_empty_cache_and_return_the_same(
    server: TieredServer,
) -> None:
    count = 200
    await _tiered(server, count)
    expected = [_expected(i) for i in range(count)]
    assert await _read_all(server.api, 0, max_records=50) == expected
    await server.restart()
    metrics = await metric_values(server.api)
    assert metrics["eventbus_read_cache_bytes"] == 0
    assert metrics["eventbus_read_cache_misses_total"] == 0
    assert await _read_all(server.api, 0, max_records=50) == expected
    metrics = await metric_values(server.api)
    assert metrics["eventbus_read_cache_misses_total"] > 0  # fetched again, from the store
    assert metrics["eventbus_read_cache_bytes"] > 0


async def test_cold_reads_work_on_the_file_store(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data", retention_check_ms=100, read_chunk_bytes=CHUNK)
    try:
        count = 150
        local_start = await _tiered(api, count)
        assert await _read_all(api, 0, max_records=40) == [_expected(i) for i in range(count)]
        found = await _read(api, None, timestamp_ms=T0 + 10 * 1000 - 1, max_records=1)
        assert found["records"][0]["offset"] == 10 < local_start
        assert (await metric_values(api))["eventbus_read_cache_misses_total"] > 0
    finally:
        await stop_api(api)


async def test_the_file_store_is_read_straight_in_one_buffer_per_read(tmp_path: Path) -> None:
    """A local store's objects are read directly (the kernel's page cache keeps them): the
    binary path returns the stored batches byte for byte across segment boundaries, within
    each read's budget, and the read cache holds no log chunks, only indexes."""
    api = await start_api(tmp_path / "data", retention_check_ms=100)
    try:
        count = 400
        local_start = await _tiered(api, count, segment_bytes=4096, local_bytes=4096)
        root = tmp_path / "data" / "objects"
        logs = sorted(root.rglob("*.log"))
        assert len(logs) >= 5
        uploaded = b"".join(path.read_bytes() for path in logs)
        for max_bytes in (1, 900, 5000, 13_000):
            stream = b""
            offset, high_watermark = 0, count
            while offset < high_watermark:
                data, offset, high_watermark = await _read_binary(api, offset, max_bytes=max_bytes)
                first = read_header(data).total_size
                assert len(data) <= max(max_bytes, first)
                stream += data
            assert len(uploaded) > local_start * 50 and stream.startswith(uploaded)
        # A read in the middle of a segment looks its offset up in the segment's index.
        assert (await _read(api, 17, max_records=1))["records"] == [_expected(17)]
        metrics = await metric_values(api)
        # One entry: that segment's parsed indexes, far smaller than any of its log.
        assert metrics["eventbus_read_cache_misses_total"] == 1
        assert 0 < metrics["eventbus_read_cache_peak_bytes"] < min(p.stat().st_size for p in logs)
        assert metrics["eventbus_read_cache_fetched_bytes_total"] >= 4 * len(uploaded)
    finally:
        await stop_api(api)


# --- the boundary and timestamps ---------------------------------------------------------------


async def test_a_read_across_the_boundary_returns_one_seamless_run(server: TieredServer) -> None:
    count = 300
    local_start = await _tiered(server, count)
    start = local_start - 5
    # Decoded: one answer from the object store on into local data.
    body = await _read(server.api, start, max_records=20)
    assert body["records"] == [_expected(i) for i in range(start, start + 20)]
    assert body["next_offset"] == start + 20
    # Stored batches too: whole batches, their offsets running on without a gap.
    data, next_offset, _hw = await _read_binary(server.api, start, max_bytes=16 * 1024)
    offsets = [r.offset for _p, r in decode_chunks(CHUNK_HEADER.pack(0, start, len(data)) + data)]
    assert offsets == list(range(start, next_offset)) and next_offset > local_start
    first = read_header(data)
    assert first.base_offset <= start < first.next_offset  # the batch holding the offset
    # A read the bounds stop before the boundary: next_offset leads on seamlessly.
    body = await _read(server.api, start, max_records=3)
    assert [r["offset"] for r in body["records"]] == [start, start + 1, start + 2]
    body = await _read(server.api, body["next_offset"], max_records=10)
    assert [r["offset"] for r in body["records"]] == list(range(start + 3, start + 13))


async def test_reads_by_timestamp_find_records_in_remote_segments(server: TieredServer) -> None:
    count = 300
    local_start = await _tiered(server, count)
    for i in (0, 1, 17, 60, local_start - 1, local_start, local_start + 3, count - 1):
        for ts in (T0 + i * 1000 - 999, T0 + i * 1000):
            body = await _read(server.api, None, timestamp_ms=ts, max_records=2)
            assert [r["offset"] for r in body["records"]][:1] == [i], (i, ts)
    status, body = await server.api.call(
        "GET", READS.format(topic="t", pid=0), params={"timestamp_ms": str(T0 - 10**6)}
    )
    assert status == 200 and body["records"][0]["offset"] == 0
    status, body = await server.api.call(
        "GET", READS.format(topic="t", pid=0), params={"timestamp_ms": str(T0 + count * 1000)}
    )
    assert status == 200 and body["records"] == [] and body["next_offset"] == count
    # A group seeks by timestamp into tiered data too.
    status, body = await server.api.call(
        "POST", "/v1/topics/t/groups/g/seek", json={"to": {"timestamp_ms": T0 + 42 * 1000}}
    )
    assert status == 200 and body["committed"] == [{"partition": 0, "offset": 42}]


async def test_a_timestamp_only_an_old_remote_record_reaches_is_found_there(
    server: TieredServer,
) -> None:
    # Producer timestamps need not rise: record 10 carries the newest timestamp of all.
    count = 200
    specs = [_spec(i) for i in range(count)]
    specs[10]["timestamp_ms"] = T0 + 900_000
    config = {"segment_bytes": 8192, "local_retention_bytes": 8192}
    assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
    await _produce(server.api, "t", specs)
    local_start = await _settled(server.api, "t", 0, count // 2)
    assert local_start > 10
    for ts, first in ((T0 + 5_000, 5), (T0 + 150_000, 10), (T0 + 900_000, 10)):
        body = await _read(server.api, None, timestamp_ms=ts, max_records=1)
        assert body["records"][0]["offset"] == first, ts
    body = await _read(server.api, None, timestamp_ms=T0 + 900_001)
    assert body["records"] == [] and body["next_offset"] == count


# --- the cache ------------------------------------------------------------------------------


async def test_the_read_cache_stays_under_its_bound(tmp_path: Path, s3_endpoint: str) -> None:
    bound = 16 * 1024
    server = await start_tiered(
        tmp_path, s3_endpoint, read_cache_bytes=bound, read_chunk_bytes=CHUNK
    )
    try:
        count = 300
        await _tiered(server, count)
        records: list[dict[str, Any]] = []
        offset = 0
        while offset < count:
            body = await _read(server.api, offset, max_records=10)
            records.extend(body["records"])
            offset = body["next_offset"]
            metrics = await metric_values(server.api)
            assert 0 < metrics["eventbus_read_cache_bytes"] <= bound
        assert records == [_expected(i) for i in range(count)]
        metrics = await metric_values(server.api)
        # One cache per worker process: /metrics sums them.
        assert metrics["eventbus_read_cache_capacity_bytes"] == bound * max(1, WORKERS)
        assert metrics["eventbus_read_cache_peak_bytes"] <= bound
        assert metrics["eventbus_read_cache_evictions_total"] > 0
        # Far more went through the cache than it may hold at once.
        assert metrics["eventbus_read_cache_fetched_bytes_total"] > 3 * bound
    finally:
        await server.close()


def test_the_cache_evicts_the_least_recently_used_first() -> None:
    cache = ReadCache(100)
    for name in "abcd":
        assert cache.put(name, name.encode(), 25)
    assert cache.get("a") == b"a"  # now the most recent
    assert cache.put("e", b"e", 25)
    assert "b" not in cache and {"a", "c", "d", "e"} <= {k for k in "abcde" if k in cache}
    assert cache.size_bytes == 100 and cache.evictions == 1
    assert not cache.put("huge", b"", 101)  # larger than the bound: never kept
    assert "huge" not in cache and cache.size_bytes == 100
    assert cache.put("c", b"C", 60)  # replacing an entry charges the new size
    assert cache.get("c") == b"C" and cache.size_bytes <= 100 and cache.peak_bytes <= 100
    assert cache.discard_where(lambda k: k in ("c", "e")) == 2
    assert cache.size_bytes == sum(25 for k in "ad" if k in cache)


def test_a_remote_index_stops_at_its_first_bad_entry() -> None:
    entries = [(0, 0, 0), (10, 4096, 1_000), (20, 8192, 2_000), (15, 9000, 3_000)]
    index = b"".join(OFFSET_INDEX_ENTRY.pack(rel, pos) for rel, pos, _ in entries[1:])
    times = b"".join(TIME_INDEX_ENTRY.pack(ts, rel) for rel, _, ts in entries[1:])
    parsed = RemoteSegmentIndex.parse(index + b"\x01", times)  # a torn last entry too
    assert list(parsed.relative_offsets) == [10, 20]  # offsets must rise: 15 ends it
    assert parsed.locate(100, 115) == (4096, 110)
    assert parsed.locate(100, 105) == (0, 100)
    assert parsed.timestamp_position(100, 1_500) == (4096, 110)
    assert parsed.timestamp_position(100, 500) == (0, 100)
    assert (
        ColdReadSettings(cache_bytes=16 * 1024, chunk_bytes=1 << 22).effective_chunk_bytes == 4096
    )


# --- many partitions, long-polls ----------------------------------------------------------------


async def _two_tiered_partitions(server: TieredServer, per_partition: int) -> dict[int, list[int]]:
    """Partitions 1 and 2 (children of 0), each with records mostly in the object store;
    answers the offsets of each one's records by their produced index."""
    config = {"segment_bytes": 8192, "local_retention_bytes": 8192}
    assert (await server.api.call("PUT", "/v1/topics/t", json=config))[0] == 201
    assert (await server.api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    produced: dict[int, list[int]] = {1: [], 2: []}
    i = 0
    while min(len(v) for v in produced.values()) < per_partition:
        spec = {**_spec(i), "key": f"key-{i}"}
        spec.pop("key_b64", None)
        status, body = await server.api.call(
            "POST", "/v1/topics/t/records", json={"records": [spec]}
        )
        assert status == 200, body
        produced[body["offsets"][0]["partition"]].append(i)
        i += 1
    for pid in (1, 2):
        await _settled(server.api, "t", pid, len(produced[pid]) // 2)
    return produced


async def test_two_partitions_read_cold_at_once_are_fetched_concurrently(
    server: TieredServer,
) -> None:
    await _two_tiered_partitions(server, 60)
    _stall_log_gets(server)  # every GET of a log object waits until released
    reads = [asyncio.ensure_future(_read(server.api, 0, pid=pid, max_records=5)) for pid in (1, 2)]

    async def both_waiting() -> bool:
        return bool(await _log_gets(server, 1) and await _log_gets(server, 2))

    # Both partitions' fetches reach the store while neither has an answer: not one at a
    # time (had they been, the second GET could not be sent before the first returned).
    await wait_for(both_waiting, what="both partitions' GETs in flight together")
    assert not any(read.done() for read in reads)
    server.proxy.release()
    answers = await asyncio.gather(*reads)
    for pid, body in zip((1, 2), answers, strict=True):
        assert [r["offset"] for r in body["records"]] == list(range(5))
        assert {r["partition"] for r in body["records"]} == {pid}


async def test_a_group_reads_its_cold_partitions_together_and_consumes_everything(
    server: TieredServer,
) -> None:
    produced = await _two_tiered_partitions(server, 60)
    _stall_log_gets(server)
    fetch = asyncio.ensure_future(
        server.api.call(
            "POST",
            "/v1/topics/t/groups/g/fetch",
            json={"auto_offset_reset": "earliest", "max_records": 40, "wait_ms": 100},
        )
    )

    async def both_waiting() -> bool:
        return bool(await _log_gets(server, 1) and await _log_gets(server, 2))

    await wait_for(both_waiting, what="one fetch's GETs of both partitions in flight together")
    # Well past the fetch's wait: the fetch still waits for the store, not answering empty.
    await asyncio.sleep(0.5)
    assert not fetch.done()
    server.proxy.release()
    status, answer = await fetch
    assert status == 200, answer
    # Both partitions progressed in the one fetch, each from its committed start.
    by_partition: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for record in answer["records"]:
        by_partition[record["partition"]].append(record)
    assert all(len(v) >= 10 for v in by_partition.values()), answer["records"]
    member = answer["member_id"]
    # Fetching on (auto commit) delivers each partition's records once, in order, as produced.
    while sum(len(v) for v in by_partition.values()) < sum(len(v) for v in produced.values()):
        status, answer = await server.api.call(
            "POST", "/v1/topics/t/groups/g/fetch", json={"member_id": member, "max_records": 40}
        )
        assert status == 200 and answer["records"], answer
        for record in answer["records"]:
            by_partition[record["partition"]].append(record)
    for pid, indexes in produced.items():
        got = by_partition[pid]
        assert [r["offset"] for r in got] == list(range(len(indexes)))
        assert [r["value"] for r in got] == [_spec(i)["value"] for i in indexes]


async def test_a_long_poll_read_that_must_go_remote_waits_for_the_store(
    server: TieredServer,
) -> None:
    await _tiered(server, 120)
    _stall_log_gets(server)
    read = asyncio.ensure_future(_read(server.api, 0, wait_ms=100, max_records=3))
    await wait_for(lambda: _has_log_get(server), what="the read's GET")
    await asyncio.sleep(0.5)  # five times the read's wait_ms
    assert not read.done()
    server.proxy.release()
    body = await read
    assert [r["offset"] for r in body["records"]] == [0, 1, 2]


async def _has_log_get(server: TieredServer) -> bool:
    return bool(await _log_gets(server, 0))


# --- read-ahead and ranged fetches ------------------------------------------------------------


async def test_sequential_readers_get_read_ahead_and_indexes_are_fetched_once(
    tmp_path: Path, s3_endpoint: str
) -> None:
    server = await start_tiered(tmp_path, s3_endpoint, read_chunk_bytes=CHUNK, read_ahead_chunks=2)
    try:
        count = 400
        local_start = await _tiered(server, count, segment_bytes=16 * 1024, local_bytes=16 * 1024)
        first = await _read(server.api, 0, max_records=2)
        second = await _read(server.api, first["next_offset"], max_records=2)
        after_two = await metric_values(server.api)
        assert after_two["eventbus_read_ahead_chunks_total"] > 0  # the second read continued
        # From here on every chunk a read needs is cached or already on its way: the
        # reader never waits for a fetch of its own, reading records or stored batches
        # (bounded by records, or by bytes).
        offset = second["next_offset"]
        turn = 0
        while offset < local_start + 10:
            if turn % 2:
                _data, offset, _hw = await _read_binary(server.api, offset, max_bytes=1500)
            else:
                offset = (await _read(server.api, offset, max_records=3))["next_offset"]
            turn += 1
        metrics = await metric_values(server.api)
        assert (
            metrics["eventbus_read_cache_misses_total"]
            == after_two["eventbus_read_cache_misses_total"]
        )
        assert (
            metrics["eventbus_read_cache_hits_total"] > after_two["eventbus_read_cache_hits_total"]
        )
        # A sequential reader knows where it stopped and enters each segment at its
        # start: it needed no index at all.
        assert _index_gets(server) == []
        # Reads that start anywhere look their position up in the segment's indexes,
        # fetched once per segment however often they are needed.
        for _round in range(2):
            for offset in range(7, local_start, 23):
                body = await _read(server.api, offset, max_records=1)
                assert [r["offset"] for r in body["records"]] == [offset]
        fetched = _index_gets(server)
        assert len(fetched) >= 2 * 3 and len(fetched) == len(set(fetched))
    finally:
        await server.close()


def _index_gets(server: TieredServer) -> list[str]:
    return [
        line.split("?")[0]
        for line in server.proxy.requests
        if line.startswith("GET ") and (".index" in line or ".timeindex" in line)
    ]


async def test_a_read_fetches_only_the_byte_range_it_needs(server: TieredServer) -> None:
    segment = 64 * 1024
    count = 900
    local_start = await _tiered(server, count, segment_bytes=segment, local_bytes=segment)
    assert local_start > 300
    objects = await server.objects()
    first_log = sorted(k for k in objects if k.endswith(".log"))[0]
    assert len(objects[first_log]) > segment * 3 // 4
    index_bytes = sum(
        len(objects[first_log.replace(".log", suffix)]) for suffix in (".index", ".timeindex")
    )
    body = await _read(server.api, 150, max_records=1)
    assert [r["offset"] for r in body["records"]] == [150]
    fetched = (await metric_values(server.api))["eventbus_read_cache_fetched_bytes_total"]
    # The indexes, then at most the two chunks between the index entry and the record.
    assert fetched <= index_bytes + 2 * CHUNK


# --- races and settings ---------------------------------------------------------------------


async def test_a_cold_read_racing_total_retention_answers_out_of_range(
    server: TieredServer,
) -> None:
    assert (
        await server.api.call(
            "PUT", "/v1/topics/t", json={"segment_bytes": 1024, "local_retention_bytes": 2048}
        )
    )[0] == 201
    old = int(time.time() * 1000) - 2 * 3600 * 1000
    old_records = [{"value": f"old-{i}-" + "o" * 150, "timestamp_ms": old} for i in range(30)]
    await _produce(server.api, "t", old_records)
    await _produce(server.api, "t", [{"value": f"new-{i}-" + "n" * 150} for i in range(20)])
    await _settled(server.api, "t", 0, 30)
    _stall_log_gets(server)
    read = asyncio.ensure_future(
        server.api.call("GET", READS.format(topic="t", pid=0), params={"offset": "0"})
    )
    await wait_for(lambda: _has_log_get(server), what="the read's GET")
    # Retention removes the old records (and their objects) while the read waits.
    status, _ = await server.api.call("PATCH", "/v1/topics/t", json={"retention_ms": 3_600_000})
    assert status == 200

    async def old_objects_gone() -> bool:
        part = await _partition(server.api, "t")
        objects = await server.objects()
        return part["start_offset"] >= 30 and f"{0:020d}.log" not in "".join(objects)

    await wait_for(old_objects_gone, what="retention to delete the old segments")
    server.proxy.release()
    status, body = await read
    assert status == 416, body
    assert body["error"]["code"] == "offset_out_of_range"
    assert body["error"]["details"]["start_offset"] >= 30


async def test_a_cold_read_racing_the_topics_deletion_answers_closed_and_keeps_nothing(
    server: TieredServer,
) -> None:
    """A cold read waits on the store while its topic is deleted (and the store refuses to
    list the topic's objects, so they stay for a later pass): the read answers
    partition_closed (503, retriable; a retry finds no topic), and nothing of the deleted
    topic comes back into the read cache or the remote index when its fetch returns."""
    await _tiered(server, 120)
    _stall_log_gets(server)
    read = asyncio.ensure_future(
        server.api.call("GET", READS.format(topic="t", pid=0), params={"offset": "0"})
    )
    await wait_for(lambda: _has_log_get(server), what="the read's GET")
    server.proxy.fail_match = lambda line: "list-type" in line
    server.proxy.fail_next = [(403, "AccessDenied")] * 1000
    try:
        assert (await server.api.call("DELETE", "/v1/topics/t"))[0] == 204
        server.proxy.release()
        status, body = await read
        assert status == 503, body
        assert body["error"]["code"] == "partition_closed"
        metrics = await metric_values(server.api)
        assert metrics["eventbus_read_cache_bytes"] == 0
        assert metrics["eventbus_tiering_remote_bytes"] == 0
        status, body = await server.api.call(
            "GET", READS.format(topic="t", pid=0), params={"offset": "0"}
        )
        assert status == 404 and body["error"]["code"] == "topic_not_found"
    finally:
        server.proxy.fail_next = []


async def test_a_remote_index_load_racing_its_topics_deletion_keeps_nothing(
    tmp_path: Path,
) -> None:
    """A read's load of a partition's remote rows is still waiting on the catalog when its
    topic is deleted (the rows stay in the catalog until the purge): the index must not
    hold them afterwards, or they count as remote bytes forever."""
    catalog = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    try:
        await catalog.create_tenant("acme")
        topic, _ = await catalog.create_topic("acme", "t", {})
        key = PartitionKey("acme", topic.incarnation, 0)
        await catalog.add_remote_segment(
            RemoteSegmentRecord(
                tenant="acme",
                incarnation=topic.incarnation,
                partition_id=0,
                base_offset=0,
                last_offset=9,
                size_bytes=1000,
                first_timestamp_ms=1,
                max_timestamp_ms=2,
                object_key=f"acme/{topic.incarnation}/0/{0:020d}.log",
                state=RemoteSegmentState.COPY_STARTED,
            )
        )
        await catalog.set_remote_segment_state(
            "acme",
            topic.incarnation,
            0,
            0,
            from_state=RemoteSegmentState.COPY_STARTED,
            to_state=RemoteSegmentState.COPY_FINISHED,
        )
        index = RemoteIndex(catalog)
        assert index.remote_bytes() == 0
        await catalog.delete_topic("acme", "t")  # its rows stay until the purge
        loading = asyncio.ensure_future(index.rows(key))
        await asyncio.sleep(0)  # the load is waiting on the catalog
        assert not loading.done()
        index.forget_topic("acme", topic.incarnation)
        await loading
        assert index.cached(key) is None and index.remote_bytes() == 0
    finally:
        await catalog.close()


async def test_a_store_that_does_not_answer_fails_only_cold_reads_and_retriably(
    tmp_path: Path, s3_endpoint: str
) -> None:
    server = await start_tiered(tmp_path, s3_endpoint, read_chunk_bytes=CHUNK)
    try:
        count = 120
        local_start = await _tiered(server, count)
        server.proxy.freeze()  # every request to the store hangs past its deadline (1 s)
        status, headers, body = await server.api.raw(
            "GET", READS.format(topic="t", pid=0), params={"offset": "0"}
        )
        assert status == 503 and headers["Retry-After"], body
        assert b"object_store_unavailable" in body
        local = await _read(server.api, local_start, max_records=5)  # local data: as ever
        assert [r["offset"] for r in local["records"]] == list(range(local_start, local_start + 5))
        server.proxy.thaw()
        assert await _read_all(server.api, 0) == [_expected(i) for i in range(count)]
        metrics = await metric_values(server.api)
        assert metrics["eventbus_read_cache_fetch_failures_total"] > 0
        # Deleting the topic drops what the cache held of it.
        assert metrics["eventbus_read_cache_bytes"] > 0
        assert (await server.api.call("DELETE", "/v1/topics/t"))[0] == 204
        assert (await metric_values(server.api))["eventbus_read_cache_bytes"] == 0
    finally:
        await server.close()


async def test_serve_takes_the_read_cache_settings_from_flags_and_environment(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path / "data",
        args=["--metrics-public", "--read-chunk-bytes", "65536"],
        env={"EVENTBUS_READ_CACHE_BYTES": "1048576", "EVENTBUS_READ_AHEAD_CHUNKS": "0"},
    ).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/metrics") as response:
                text = await response.text()
        capacity = float(1_048_576 * max(1, WORKERS))  # one cache per worker, summed
        assert f"eventbus_read_cache_capacity_bytes {capacity:.6e}" in text
        assert "eventbus_read_cache_bytes 0.0" in text
    finally:
        assert server.stop() == 0


# --- reading a local store directly ------------------------------------------------------------


def _offsets(data: bytes | memoryview) -> list[int]:
    """The record offsets of stored batches back to back."""
    offsets: list[int] = []
    pos = 0
    while pos < len(data):
        offsets.extend(r.offset for r in decode_records(data, pos))
        pos += read_header(data, pos).total_size
    return offsets


async def _local_segments(
    tmp_path: Path, *, segments: int = 2, batches: int = 10, records: int = 3, repeat: int = 50
) -> tuple[FileObjectStore, list[RemoteSegmentRecord]]:
    """A file store holding ``segments`` remote segments of partition KEY, each of
    ``batches`` batches of ``records`` records (offsets from 0 on, record ``n``'s value
    ``f"{n:04d}" * repeat``); empty indexes, so look-ups scan from a segment's start."""
    store = await FileObjectStore.open(tmp_path / "objects")
    rows = []
    size = batches * records
    for base in range(0, segments * size, size):
        encoded = [
            with_base_offset(
                encode_batch(
                    [
                        NewRecord(f"{base + b * records + i:04d}".encode() * repeat)
                        for i in range(records)
                    ],
                    now_ms=T0,
                    max_record_bytes=1 << 20,
                ),
                base + b * records,
            )
            for b in range(batches)
        ]
        log_bytes = b"".join(encoded)
        for suffix, data in ((".log", log_bytes), (".index", b""), (".timeindex", b"")):
            await store.put(segment_key(KEY, base, suffix), data)
        rows.append(
            RemoteSegmentRecord(
                KEY.tenant,
                KEY.incarnation,
                0,
                base,
                base + size - 1,
                len(log_bytes),
                T0,
                T0,
                segment_key(KEY, base),
                RemoteSegmentState.COPY_FINISHED,
            )
        )
    return store, rows


def _reader_of(store: FileObjectStore, rows: list[RemoteSegmentRecord]) -> RemoteSegmentReader:
    async def finished(key: PartitionKey) -> list[RemoteSegmentRecord]:
        return rows

    async def reload(key: PartitionKey) -> None:
        return None

    return RemoteSegmentReader(store, finished, reload)


async def test_a_local_store_read_continues_across_segments_and_past_a_wrong_position(
    tmp_path: Path,
) -> None:
    store, rows = await _local_segments(tmp_path)
    reader = _reader_of(store, rows)
    try:
        batch = rows[0].size_bytes // 10
        # A read that crosses from the first segment into the second, in one buffer.
        first = await reader.read_batches(KEY, 24, max_bytes=5 * batch, end_offset=60)
        assert (first.first_offset, first.next_offset) == (24, 39)
        assert _offsets(first.data) == list(range(24, 39))
        # The next read continues where that one stopped, without a look-up...
        second = await reader.read_batches(KEY, 39, max_bytes=2 * batch, end_offset=60)
        assert (second.first_offset, second.next_offset) == (39, 45)
        # ...unless the position it kept is wrong: then it looks the offset up again.
        (kept,) = reader.read_ends.of(KEY)
        assert kept.next_offset == 45
        assert reader.read_ends.take(KEY, 45) == kept
        reader.read_ends.remember(
            KEY, kept.next_offset, kept.segment_base, kept.position + 7, kept.batch_base
        )
        third = await reader.read_batches(KEY, 45, max_bytes=batch, end_offset=60)
        assert (third.first_offset, third.next_offset) == (45, 48)
        assert _offsets(third.data) == [45, 46, 47]
        assert reader.cache.get((segment_key(KEY, 30), 0)) is None  # no log chunk cached
    finally:
        await reader.close()
        await store.close()


async def test_a_local_store_walks_many_small_batches_in_few_reads(tmp_path: Path) -> None:
    """Records, offset look-ups and timestamps walk batches one by one; from a local store
    they still read many batches per store call."""
    store, rows = await _local_segments(tmp_path, segments=1, batches=3000, records=1, repeat=5)
    reader = _reader_of(store, rows)
    try:
        got = await reader.read(KEY, 2500, max_records=400, max_bytes=1 << 20, end_offset=3000)
        assert [r.offset for r in got.records] == list(range(2500, 2900))
        assert got.records[0].value == b"2500" * 5
        # The look-up scanned 2,500 batches from the segment's start (its index is empty):
        # its two index objects and one read of the log.
        assert reader.counters.fetches == 3
        batches = await reader.read_batches(KEY, 2950, max_bytes=1 << 20, end_offset=3000)
        assert _offsets(batches.data) == list(range(2950, 3000))
        assert reader.counters.fetches <= 3 + 3
    finally:
        await reader.close()
        await store.close()


async def test_a_local_store_read_of_a_row_that_overstates_its_object_is_damage(
    tmp_path: Path,
) -> None:
    store, rows = await _local_segments(tmp_path, segments=1)
    rows[0] = replace(rows[0], last_offset=rows[0].last_offset + 10)  # offsets 30-39 are not there
    reader = _reader_of(store, rows)
    try:
        first = await reader.read_batches(KEY, 0, max_bytes=1 << 20, end_offset=40)
        assert _offsets(first.data) == list(range(30)) and first.next_offset == 30
        with pytest.raises(RemoteSegmentDamagedError):
            await reader.read_batches(KEY, 30, max_bytes=1 << 20, end_offset=40)
        # Nothing remote from an offset at or past the end: an empty answer.
        empty = await reader.read_batches(KEY, 40, max_bytes=1 << 20, end_offset=40)
        assert (bytes(empty.data), empty.first_offset, empty.next_offset) == (b"", 40, 40)
        assert reader.counters.fetch_failures == 0
    finally:
        await reader.close()
        await store.close()
