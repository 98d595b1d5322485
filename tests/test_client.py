"""The Python client (gateway.client) against a real server: every call, both flavours,
retries with idempotency keys, compression and errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from gateway.client import ApiError, AsyncClient, Client, TransportError
from gateway.client import aio as client_module
from gateway.client.ranges import Grouping, HashRanges
from partitions.batch import NewRecord
from tests.conftest import Api
from tests.proxy import LossyProxy


@pytest.fixture
async def proxy(api: Api) -> AsyncIterator[LossyProxy]:
    url = urlsplit(api.base)
    assert url.hostname is not None and url.port is not None
    lossy = await LossyProxy(url.hostname, url.port).start()
    yield lossy
    await lossy.close()


async def _stored(api: Api, topic: str = "t") -> list[dict[str, object]]:
    """Every record of partition 0, as the JSON API shows it."""
    status, body = await api.call(
        "GET", f"/v1/topics/{topic}/partitions/0/records", params={"max_records": "10000"}
    )
    assert status == 200, body
    records: list[dict[str, object]] = body["records"]
    return records


async def test_produce_and_read_keep_every_field(api: Api) -> None:
    records = [
        ("user-1", "hello"),
        (b"\x00bin", b"\xff\xfe"),
        (None, "keyless"),
        {"key": "k", "value": "with headers", "headers": {"trace": "abc", "n": "1"}},
        {"value": b"dated", "timestamp_ms": 1_700_000_000_123},
        NewRecord(value=b"raw", key=b"rk", key_is_text=True, value_is_text=True),
    ]
    async with AsyncClient(api.base, api.key) as client:
        await client.create_topic("t")
        placed = await client.produce("t", records)
        assert placed == [(0, n) for n in range(len(records))]
        result = await client.read("t", 0)
    assert result.next_offset == result.high_watermark == len(records)
    assert result.start_offset == 0 and not result.sealed and result.children == []
    got = result.records
    assert [(r.key, r.value) for r in got] == [
        (b"user-1", b"hello"),
        (b"\x00bin", b"\xff\xfe"),
        (None, b"keyless"),
        (b"k", b"with headers"),
        (None, b"dated"),
        (b"rk", b"raw"),
    ]
    assert got[3].headers == (("trace", "abc"), ("n", "1"))
    assert got[4].timestamp_ms == 1_700_000_000_123
    # Text stays text and bytes stay bytes for JSON readers too.
    stored = await _stored(api)
    assert stored[0]["key"] == "user-1" and stored[0]["value"] == "hello"
    assert "key_b64" in stored[1] and "value_b64" in stored[1]
    assert stored[4]["value_b64"] == "ZGF0ZWQ="


async def test_reads_from_an_offset_and_up_to_a_count(api: Api) -> None:
    async with AsyncClient(api.base, api.key) as client:
        await client.create_topic("t")
        for chunk in range(4):
            await client.produce("t", [(None, f"v{chunk}-{n}") for n in range(25)])
        result = await client.read("t", 0, 30, max_records=10)
        assert [r.offset for r in result.records] == list(range(30, 40))
        assert result.next_offset == 40 and result.high_watermark == 100
        assert (await client.read("t", 0, 100)).records == []


async def test_group_fetch_commit_describe_and_seek(api: Api) -> None:
    async with AsyncClient(api.base, api.key) as client:
        await client.create_topic("t")
        for start in range(0, 20, 5):
            await client.produce("t", [(f"k{n % 3}", f"v{n}") for n in range(start, start + 5)])
        # Fetches hand out whole stored batches: up to the one that reaches max_records.
        first = await client.fetch("t", "g", auto_offset_reset="earliest", max_records=12)
        assert first.assignment == [0]
        assert [r.value for _, r in first.records] == [f"v{n}".encode() for n in range(15)]
        committed = await client.commit("t", "g", first.member_id, first.generation, {0: 15})
        assert committed == {0: 15}
        rest = await client.fetch("t", "g", first.member_id)
        assert [r.offset for _, r in rest.records] == list(range(15, 20))
        described = await client.describe_group("t", "g")
        assert described["partitions"][0]["committed"] == 15
        assert described["partitions"][0]["lag"] == 5
        await client.leave("t", "g", first.member_id)
        assert await client.seek_group("t", "g", "earliest") == {0: 0}
        again = await client.fetch("t", "g")
        assert len(again.records) == 20


async def test_a_commit_drops_the_partitions_a_rebalance_moved_away(api: Api) -> None:
    """The cooperative rule from the client's side: a commit naming a partition the member
    lost since its fetch commits the others and drops that one's work (its records go to
    its new owner from the last commit); one naming only lost partitions commits nothing."""
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200  # 1 and 2
    async with AsyncClient(api.base, api.key) as client:
        await client.produce("t", [(f"k{n}", f"v{n}") for n in range(40)])
        a = await client.fetch("t", "g", auto_offset_reset="earliest", auto_commit=False)
        assert a.assignment == [1, 2]
        ends = {p: max(r.offset for q, r in a.records if q == p) + 1 for p in a.assignment}
        b = await client.fetch("t", "g", auto_commit=False)
        kept = await client.fetch("t", "g", a.member_id, auto_commit=False)  # gives one up
        b = await client.fetch("t", "g", b.member_id, auto_commit=False)  # and b takes it
        (lost,) = b.assignment
        (mine,) = kept.assignment
        committed = await client.commit("t", "g", a.member_id, a.generation, ends)
        assert committed[mine] == ends[mine]
        assert committed.get(lost, 0) == 0  # a's work on it was dropped, b's start stands
        assert await client.commit("t", "g", a.member_id, None, {lost: ends[lost]}) == {}
        described = await client.describe_group("t", "g")
        by_partition = {p["partition"]: p["committed"] for p in described["partitions"]}
        assert by_partition[mine] == ends[mine] and by_partition[lost] is None  # never


async def test_topics_list_follows_every_page(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_LIST_PAGE", 2)
    async with AsyncClient(api.base, api.key) as client:
        for name in ("e", "a", "d", "c", "b"):
            await client.create_topic(name, {"retention_ms": 60_000})
        assert [t["name"] for t in await client.list_topics()] == ["a", "b", "c", "d", "e"]
        described = await client.describe_topic("c")
        assert described["config"]["retention_ms"] == 60_000
        await client.delete_topic("c")
        assert [t["name"] for t in await client.list_topics()] == ["a", "b", "d", "e"]


async def test_the_blocking_client_does_the_same_from_any_thread(api: Api) -> None:
    def work() -> tuple[list[tuple[int, int]], list[bytes], int]:
        with Client(api.base, api.key) as client:
            client.create_topic("t")
            placed = client.produce("t", [("k", "a"), ("k", "b")])
            values = [r.value for r in client.read("t", 0).records]
            fetched = client.fetch("t", "g", auto_offset_reset="earliest")
            client.commit("t", "g", fetched.member_id, fetched.generation, {0: 2})
            lag = client.describe_group("t", "g")["partitions"][0]["lag"]
            return placed, values, lag

    placed, values, lag = await asyncio.to_thread(work)
    assert placed == [(0, 0), (0, 1)]
    assert values == [b"a", b"b"]
    assert lag == 0


async def test_a_produce_whose_answer_was_lost_is_retried_and_appends_once(
    api: Api, proxy: LossyProxy
) -> None:
    await api.call("PUT", "/v1/topics/t")
    async with AsyncClient(proxy.url, api.key, retries=3) as client:
        await client.describe_topic("t")  # what produce would read first: its hash ranges
        proxy.drop_answers = 2  # the first two attempts reach the server; their answers do not
        placed = await client.produce("t", [(None, f"r{n}") for n in range(100)])
    assert proxy.dropped == 2
    assert placed == [(0, n) for n in range(100)]
    stored = await _stored(api)
    assert [r["value"] for r in stored] == [f"r{n}" for n in range(100)]
    # All three attempts carried the same key.
    sent = bytes(proxy.sent)
    assert sent.count(b"POST /v1/topics/t/records") == 3
    keys = {
        line.split(b":", 1)[1].strip()
        for line in sent.split(b"\r\n")
        if line.lower().startswith(b"idempotency-key:")
    }
    assert len(keys) == 1


async def test_a_fetch_whose_answer_was_lost_is_not_repeated(api: Api, proxy: LossyProxy) -> None:
    await api.call("PUT", "/v1/topics/t")
    async with AsyncClient(api.base, api.key) as direct:
        await direct.produce("t", [(None, "x")])
    proxy.drop_answers = 1
    async with AsyncClient(proxy.url, api.key, retries=3) as client:
        with pytest.raises(TransportError):
            await client.fetch("t", "g", auto_offset_reset="earliest")
    assert bytes(proxy.sent).count(b"/groups/g/fetch") == 1


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
async def test_produce_bodies_are_compressed_when_asked(
    api: Api, proxy: LossyProxy, compression: str
) -> None:
    await api.call("PUT", "/v1/topics/t")
    value = "compressible " * 500
    async with AsyncClient(proxy.url, api.key, compression=compression) as client:  # type: ignore[arg-type]
        await client.produce("t", [(None, value)] * 20)
        result = await client.read("t", 0)
    assert [r.value.decode() for r in result.records] == [value] * 20
    sent = bytes(proxy.sent)
    assert f"Content-Encoding: {compression}".encode() in sent
    assert len(sent) < len(value) * 20 / 10  # the body went compressed


async def test_errors_carry_the_servers_code(api: Api) -> None:
    async with AsyncClient(api.base, api.key) as client:
        with pytest.raises(ApiError) as missing:
            await client.produce("nope", [(None, "x")])
        assert missing.value.status == 404 and missing.value.code == "topic_not_found"
        await client.create_topic("t")
        with pytest.raises(ApiError) as beyond:
            await client.read("t", 0, 5)
        assert beyond.value.status == 416
    async with AsyncClient(api.base, "ebk_not-a-key") as stranger:
        with pytest.raises(ApiError) as denied:
            await stranger.list_topics()
        assert denied.value.status == 401


async def test_an_unreachable_server_raises_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with AsyncClient(f"http://127.0.0.1:{port}", "k", retries=2) as client:
            with pytest.raises(TransportError, match="cannot reach"):
                await client.list_topics()


def test_records_are_grouped_one_batch_per_partition_in_request_order() -> None:
    described = {
        "partitions": [
            {"id": 0, "state": "sealed", "hash_range": {"start": "0", "end": str(1 << 64)}},
            {"id": 2, "state": "active", "hash_range": {"start": str(1 << 63), "end": "x"}},
            {"id": 1, "state": "active", "hash_range": {"start": "0", "end": str(1 << 63)}},
        ]
    }
    ranges = HashRanges.of_topic(described)
    assert ranges == HashRanges((0, 1 << 63), (1, 2))
    records = [
        NewRecord(value=b"%d" % n, key=None if n % 4 == 0 else b"k%d" % n) for n in range(40)
    ]
    grouping = Grouping(records, ranges)
    assert set(grouping.groups) == {None, 1, 2}
    for pid, indexes in grouping.groups.items():
        assert indexes == sorted(indexes)
        for index in indexes:
            key = records[index].key
            assert pid == (None if key is None else ranges.partition_of(key))
    assert sorted(grouping.order) == list(range(40))
    # Answers come in the order the batches were sent; the caller gets them in its own.
    sent_order = [(0, position) for position in range(40)]
    placed = grouping.in_request_order(sent_order)
    assert [placed[index] for index in grouping.order] == sent_order
    # One partition: one batch as the records came, keyless ones too.
    single = Grouping(records, HashRanges((0,), (7,)))
    assert single.groups == {7: list(range(40))}
    assert Grouping(records, None).groups == {None: list(range(40))}


async def test_produce_groups_by_hash_range_and_reads_them_again_after_a_split(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200  # 1 and 2
    records = [(None if n % 9 == 0 else f"user-{n % 17}", f"v{n}") for n in range(300)]
    async with AsyncClient(api.base, api.key) as client:
        describes = 0
        describe = client.describe_topic

        async def counted(name: str) -> object:
            nonlocal describes
            describes += 1
            return await describe(name)

        monkeypatch.setattr(client, "describe_topic", counted)

        async def produce_and_check() -> None:
            placed = await client.produce("t", records)
            by_key: dict[str | None, list[tuple[int, int]]] = {}
            for (key, _), spot in zip(records, placed, strict=True):
                by_key.setdefault(key, []).append(spot)
            for key, spots in by_key.items():
                if key is not None:  # per key: one partition, offsets in request order
                    assert len({p for p, _ in spots}) == 1
                    assert [o for _, o in spots] == sorted(o for _, o in spots)
            for partition in {p for p, _ in placed}:
                stored = await client.read("t", partition, 0, max_records=10_000)
                at = {r.offset: r.value for r in stored.records}
                for (_, value), (p, offset) in zip(records, placed, strict=True):
                    if p == partition:
                        assert at[offset] == value.encode()

        await produce_and_check()
        await produce_and_check()
        assert describes == 1  # the ranges are kept
        assert (await api.call("POST", "/v1/topics/t/partitions/1/split"))[0] == 200
        await produce_and_check()  # the answer shows the split: the ranges are dropped
        assert describes == 1
        await produce_and_check()
        assert describes == 2
