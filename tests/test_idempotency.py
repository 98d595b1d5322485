"""Idempotent produce: a retried request never writes twice, even across a crash."""

from __future__ import annotations

import asyncio
import gc
import random
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.service import key_hash
from gateway.http.keys import BROKER
from partitions.errors import PartitionUnavailableError
from partitions.idempotency import (
    ANSWER_TTL_MS,
    AnswerTable,
    Entry,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKeyError,
    check_key,
    decode_tag,
    encode_tags,
)
from partitions.log.values import AppendResult
from partitions.partition_key import PartitionKey
from tests.conftest import ADMIN_KEY, Api, start_api, stop_api
from tests.servers import ServerProcess
from tests.tiering_tools import wait_for

MID = 1 << 63  # where a split of partition 0 cuts the hash space by default

# --- the producer tag and the table ----------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 5000),
    data=st.data(),
    key=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=255),
)
def test_tags_round_trip_and_cover_exactly_their_indexes(total: int, data: Any, key: str) -> None:
    indexes = sorted(data.draw(st.sets(st.integers(0, total - 1), min_size=1)))
    pieces = encode_tags(key, b"h" * 16, 123, total, indexes)
    covered: list[int] = []
    for piece, tag in pieces:
        assert len(tag) <= 0xFFFF
        decoded = decode_tag(tag)
        assert decoded.key == key and decoded.request_hash == b"h" * 16
        assert decoded.accepted_ms == 123 and decoded.total_records == total
        assert list(decoded.indexes) == piece
        covered += piece
    assert covered == indexes


def test_a_request_spread_thin_needs_several_tags() -> None:
    # Every other index of 100,000: 50,000 runs do not fit in one 64 KiB tag.
    indexes = list(range(0, 100_000, 2))
    pieces = encode_tags("k" * 255, b"h" * 16, 1, 100_000, indexes)
    assert len(pieces) > 1
    assert [i for piece, _ in pieces for i in piece] == indexes


def test_garbage_is_not_a_tag() -> None:
    for raw in (b"", b"\x02abc", b"\x01\x05ab", b"\x01\x01k" + b"h" * 16 + b"\x00" * 12 + b"\x05"):
        with pytest.raises(ValueError):
            decode_tag(raw)


def test_the_table_forgets_after_ten_minutes() -> None:
    async def run() -> None:
        table = AnswerTable()
        entry = table.claim("t", "inc", "k", b"a" * 16, 1, now_ms=1000)
        entry.add_batch(0, 7, [0])
        assert table.claim("t", "inc", "k", b"a" * 16, 1, now_ms=2000).answer() == [(0, 7)]
        with pytest.raises(IdempotencyKeyReusedError):
            table.claim("t", "inc", "k", b"b" * 16, 1, now_ms=2000)
        # Another topic incarnation does not see it.
        assert not table.claim("t", "other", "k", b"b" * 16, 1, now_ms=2000).complete
        later = 1000 + ANSWER_TTL_MS
        fresh = table.claim("t", "inc", "k", b"b" * 16, 1, now_ms=later)
        assert not fresh.complete and fresh.accepted_ms == later

    asyncio.run(run())


def test_entries_keep_batches_compactly_and_answer_in_request_order() -> None:
    table = AnswerTable()

    async def run() -> None:
        entry = table.claim("t", "inc", "k", b"a" * 16, 6, now_ms=0)
        # Indexes 0, 2, 4 went to partition 1 at 10..12; 1, 3 to partition 2 at 5..6,
        # and index 5 to partition 1 at 20 (another batch, after someone else's).
        entry.add_placed([(0, (1, 10)), (1, (2, 5)), (2, (1, 11)), (3, (2, 6)), (4, (1, 12))])
        assert not entry.complete and entry.missing() == [5]
        entry.add_placed([(5, (1, 20))])
        assert entry.complete and len(entry.parts) == 3
        assert entry.answer() == [(1, 10), (2, 5), (1, 11), (2, 6), (1, 12), (1, 20)]

    asyncio.run(run())


def test_a_batch_known_twice_counts_once() -> None:
    """A rebuild that reads a batch's tag again (it ran before and failed part-way) must
    not count its records twice: the entry would look complete with records missing."""
    table = AnswerTable()
    tag = decode_tag(encode_tags("k", b"a" * 16, 0, 4, [0, 1])[0][1])

    async def run() -> None:
        table.add_tag("t", "inc", 1, 30, tag)
        table.add_tag("t", "inc", 1, 30, tag)
        entry = table.claim("t", "inc", "k", b"a" * 16, 4, now_ms=0)
        assert not entry.complete and entry.written == 2 and entry.missing() == [2, 3]
        entry.add_placed([(2, (2, 7)), (3, (2, 8))])
        assert entry.complete and entry.answer() == [(1, 30), (1, 31), (2, 7), (2, 8)]

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.integers(0, 60), min_size=1, max_size=40, unique=True).map(sorted),
        min_size=0,
        max_size=6,
    )
)
def test_written_counts_each_request_index_once(batches: list[list[int]]) -> None:
    """``written`` is counted from the parts' runs without listing every index: it must
    equal the number of distinct indexes, also when two batches hold the same ones."""
    entry = Entry(b"a" * 16, 0, 61)
    for n, indexes in enumerate(batches):
        entry.add_batch(n % 3, 100 * n, indexes)
    assert entry.written == len(entry.placed()) == len({i for b in batches for i in b})
    assert entry.complete == (entry.written == 61)


def test_keys_are_1_to_255_printable_ascii_characters_without_spaces() -> None:
    for code in range(0x300):
        if 33 <= code <= 126:
            check_key(f"a{chr(code)}b")
        else:
            with pytest.raises(InvalidIdempotencyKeyError):
                check_key(f"a{chr(code)}b")
    check_key("k" * 255)
    for bad in ("", "k" * 256, "\u00e9t\u00e9", "tab\tkey"):
        with pytest.raises(InvalidIdempotencyKeyError):
            check_key(bad)


def test_a_finished_entry_is_kept_as_plain_values_the_collector_does_not_track() -> None:
    table = AnswerTable()

    async def run() -> None:
        entry = table.claim("t", "inc", "k", b"a" * 16, 2, now_ms=0)
        entry.add_placed([(0, (1, 5)), (1, (1, 6))])
        table.settle("t", "inc", "k", entry)
        gc.collect()
        kept = table.kept_value("t", "inc", "k")
        assert isinstance(kept, tuple) and not gc.is_tracked(kept)
        again = table.claim("t", "inc", "k", b"a" * 16, 2, now_ms=1000)
        assert again.complete and again.answer() == [(1, 5), (1, 6)]
        with pytest.raises(IdempotencyKeyReusedError):
            table.claim("t", "inc", "k", b"b" * 16, 2, now_ms=1000)
        # One written in part goes back to an object, for the attempt that completes it.
        part = table.claim("t", "inc", "p", b"a" * 16, 2, now_ms=10)
        part.add_placed([(0, (2, 9))])
        table.settle("t", "inc", "p", part)
        retry = table.claim("t", "inc", "p", b"a" * 16, 2, now_ms=20)
        assert retry.missing() == [1] and table.entry("t", "inc", "p") is retry
        assert table.expire(ANSWER_TTL_MS + 10) == 2 and len(table) == 0

    asyncio.run(run())


def test_the_table_is_bounded() -> None:
    table = AnswerTable(max_entries=3)

    async def run() -> None:
        for n in range(5):
            table.claim("t", "inc", f"k{n}", b"a" * 16, 1, now_ms=n)
        assert len(table) == 3 and table.forgotten_early == 2
        assert table.entry("t", "inc", "k0") is None and table.entry("t", "inc", "k4")

    asyncio.run(run())


# --- over HTTP -------------------------------------------------------------------------------


def _body(tag: str, count: int = 5, keys: int = 0) -> bytes:
    records = []
    for n in range(count):
        record: dict[str, Any] = {"value": f"{tag}-{n}"}
        if keys:
            record["key"] = f"key-{n % keys}"
        records.append(record)
    return orjson.dumps({"records": records})


async def _produce(api: Api, key: str, body: bytes, topic: str = "t") -> tuple[int, Any]:
    return await api.call(
        "POST",
        f"/v1/topics/{topic}/records",
        data=body,
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )


async def _values(api: Api, topic: str = "t") -> list[tuple[int, int, str]]:
    """(partition, offset, value) of every record of every partition."""
    _, described = await api.call("GET", f"/v1/topics/{topic}")
    out = []
    for partition in described["partitions"]:
        pid = partition["id"]
        offset = partition["start_offset"]
        while offset < partition["end_offset"]:
            _, body = await api.call(
                "GET",
                f"/v1/topics/{topic}/partitions/{pid}/records",
                params={"offset": str(offset)},
            )
            out += [(pid, r["offset"], r["value"]) for r in body["records"]]
            offset = body["next_offset"]
    return out


async def test_a_retry_returns_the_first_answer_and_appends_nothing(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    first = await _produce(api, "req-1", _body("a"))
    assert first[0] == 200
    again = await _produce(api, "req-1", _body("a"))
    assert again == first
    assert len(await _values(api)) == 5
    _, metrics = await api.call("GET", "/metrics", key=ADMIN_KEY)
    assert "eventbus_idempotency_replays_total 1.0" in metrics
    assert "eventbus_idempotency_entries 1.0" in metrics
    # Without a key, the same body appends again.
    assert (await api.call("POST", "/v1/topics/t/records", data=_body("a")))[0] == 200
    assert len(await _values(api)) == 10


async def test_the_same_key_with_another_body_is_a_conflict(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    assert (await _produce(api, "req-1", _body("a")))[0] == 200
    status, body = await _produce(api, "req-1", _body("b"))
    assert status == 409 and body["error"]["code"] == "idempotency_key_reused"
    # The same records in another format are another body too.
    status, body = await api.call(
        "POST",
        "/v1/topics/t/records",
        data=b"\n".join(orjson.dumps(r) for r in orjson.loads(_body("a"))["records"]),
        headers={"Idempotency-Key": "req-1", "Content-Type": "application/x-ndjson"},
    )
    assert status == 409
    assert len(await _values(api)) == 5


async def test_a_request_that_wrote_nothing_leaves_its_key_free(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t", json={"max_record_bytes": 100})
    too_large = orjson.dumps({"records": [{"value": "x" * 200}]})
    status, body = await _produce(api, "k", too_large)
    assert status == 413 and body["error"]["code"] == "record_too_large"
    assert (await _produce(api, "k", _body("fixed")))[0] == 200
    assert len(await _values(api)) == 5


async def test_keys_are_per_topic_and_per_incarnation(api: Api) -> None:
    for topic in ("t", "u"):
        await api.call("PUT", f"/v1/topics/{topic}")
        assert (await _produce(api, "same", _body("a"), topic))[0] == 200
    assert len(await _values(api, "t")) == len(await _values(api, "u")) == 5
    await api.call("DELETE", "/v1/topics/t")
    await api.call("PUT", "/v1/topics/t")
    assert (await _produce(api, "same", _body("a")))[0] == 200
    assert len(await _values(api)) == 5


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
async def test_bad_keys_are_refused(api: Api, key: str) -> None:
    await api.call("PUT", "/v1/topics/t")
    status, body = await _produce(api, key, _body("a"))
    assert status == 400 and body["error"]["code"] == "invalid_idempotency_key"
    assert await _values(api) == []


async def test_concurrent_duplicates_append_once(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/partitions/0/split")
    body = _body("c", count=400, keys=37)
    answers = await asyncio.gather(*(_produce(api, "dup", body) for _ in range(20)))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][0] == 200
    stored = await _values(api)
    assert sorted(v for _, _, v in stored) == sorted(f"c-{n}" for n in range(400))
    by_place = {(p, o): v for p, o, v in stored}
    for n, placed in enumerate(answers[0][1]["offsets"]):
        assert by_place[(placed["partition"], placed["offset"])] == f"c-{n}"


async def test_a_retry_after_a_dropped_connection_appends_once(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    body = _body("d", count=50)
    url = urlsplit(api.base)
    request = (
        f"POST /v1/topics/t/records HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Authorization: Bearer {api.key}\r\nIdempotency-Key: drop-1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(request)
    # The client is gone before any answer; the server appends anyway.
    for _ in range(200):
        if len(await _values(api)) == 50:
            break
        await asyncio.sleep(0.02)
    status, answer = await _produce(api, "drop-1", body)
    assert status == 200
    assert [o["offset"] for o in answer["offsets"]] == list(range(50))
    assert len(await _values(api)) == 50


async def test_answers_survive_a_restart(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data")
    try:
        await api.call("PUT", "/v1/topics/t")
        await api.call("POST", "/v1/topics/t/partitions/0/split")
        first = await _produce(api, "r", _body("e", count=100, keys=11))
    finally:
        await stop_api(api)
    api = await start_api(tmp_path / "data")
    try:
        assert await _produce(api, "r", _body("e", count=100, keys=11)) == first
        assert (await _produce(api, "r", _body("other")))[0] == 409
        assert len(await _values(api)) == 100
    finally:
        await stop_api(api)


@pytest.mark.single_process("the server kills itself whole; test_workers.py kills a worker")
async def test_a_crash_between_append_and_answer_does_not_append_twice(tmp_path: Path) -> None:
    """The server is SIGKILLed right after the first batch of a request is durable, before
    it answers. The retry, against the restarted server, writes only what is missing and
    answers where every record is, and every record is stored exactly once."""
    data = tmp_path / "data"
    rng = random.Random(7)
    crashing = ServerProcess(data, module="tests.idempotency_crash_child").start()
    try:
        keys = crashing.keys
        headers = {"Authorization": f"Bearer {keys['EVENTBUS_API_KEY']}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            assert (await session.put(f"{crashing.url}/v1/topics/t")).status == 201
            for pid in (0, 1):
                split = await session.post(f"{crashing.url}/v1/topics/t/partitions/{pid}/split")
                assert split.status == 200
            await session.post(f"{crashing.url}/v1/topics/t/records", data=_body("warm", 30, 5))
            body = _body("x", count=300, keys=rng.randint(20, 40))
            with pytest.raises(aiohttp.ClientError):
                await session.post(
                    f"{crashing.url}/v1/topics/t/records",
                    data=body,
                    headers={"Idempotency-Key": "die-1", "Content-Type": "application/json"},
                )
        assert crashing.process is not None
        assert crashing.process.wait(10) == -9
    finally:
        crashing.kill()
    server = ServerProcess(data).start()
    try:
        api = Api(
            aiohttp.ClientSession(),
            server.url,
            server.keys["EVENTBUS_API_KEY"],
            None,
            data,  # type: ignore[arg-type]
        )
        try:
            before = [v for _, _, v in await _values(api) if v.startswith("x-")]
            # Only the first batch was durable before the crash.
            assert 0 < len(before) < 300
            status, answer = await _produce(api, "die-1", body)
            assert status == 200, answer
            stored = await _values(api)
            xs = [v for _, _, v in stored if v.startswith("x-")]
            assert sorted(xs) == sorted(f"x-{n}" for n in range(300))
            by_place = {(p, o): v for p, o, v in stored}
            for n, placed in enumerate(answer["offsets"]):
                assert by_place[(placed["partition"], placed["offset"])] == f"x-{n}"
            # And once more: the same answer, nothing appended.
            assert await _produce(api, "die-1", body) == (status, answer)
            assert len(await _values(api)) == len(stored)
        finally:
            await api.session.close()
    finally:
        server.stop()


@pytest.mark.single_process("makes a partition fail by patching the server process")
async def test_a_retry_after_a_failed_rebuild_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt wrote only partition 1's records; after a restart the retry's
    rebuild of the answers fails part-way (partition 2's tags cannot be read yet). The
    next retry must still write partition 2's records, once."""
    low = [k for k in (f"k{n}" for n in range(100)) if key_hash(k.encode()) < MID][:2]
    high = [k for k in (f"k{n}" for n in range(100)) if key_hash(k.encode()) >= MID][:2]
    body = orjson.dumps({"records": [{"key": k, "value": f"v-{k}"} for k in low + high]})
    api = await start_api(tmp_path / "data")
    try:
        await api.call("PUT", "/v1/topics/t")
        assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
        worker = api.server.app[BROKER].worker
        real_append = worker.append

        async def append_failing_on_2(key: PartitionKey, batch: bytes) -> AppendResult:
            if key.partition_id == 2:
                raise PartitionUnavailableError("injected: partition 2's disk failed")
            return await real_append(key, batch)

        monkeypatch.setattr(worker, "append", append_failing_on_2)
        assert (await _produce(api, "req-42", body))[0] == 503
    finally:
        await stop_api(api)
    api = await start_api(tmp_path / "data")  # the answers are rebuilt from producer tags
    try:
        worker = api.server.app[BROKER].worker
        real_tags = worker.producer_tags
        failures = [PartitionUnavailableError("injected: partition 2 is still recovering")]

        async def tags_failing_once_on_2(key: PartitionKey, since: int) -> list[tuple[int, bytes]]:
            if key.partition_id == 2 and failures:
                raise failures.pop()
            return await real_tags(key, since)

        monkeypatch.setattr(worker, "producer_tags", tags_failing_once_on_2)
        assert (await _produce(api, "req-42", body))[0] == 503
        status, answer = await _produce(api, "req-42", body)
        assert status == 200, answer
        assert [o["partition"] for o in answer["offsets"]] == [1, 1, 2, 2]
        stored = sorted(value for _, _, value in await _values(api))
        assert stored == sorted(f"v-{k}" for k in low + high)  # each record once
    finally:
        await stop_api(api)


async def test_a_retry_after_a_restart_finds_its_answer_once_local_retention_ran(
    tmp_path: Path,
) -> None:
    """Local retention deletes the segment holding a tagged batch (it is in tiered storage);
    the server restarts within the ten minutes, and the client retries: it gets the first
    answer, nothing is appended, and another body under the key is still a conflict."""
    settings = {"retention_check_ms": 100, "upload_retry_max_ms": 300}
    body = orjson.dumps({"records": [{"value": "payment-42"}]})
    api = await start_api(tmp_path / "data", **settings)
    try:
        config = {"segment_bytes": 1024, "local_retention_bytes": 2048}
        assert (await api.call("PUT", "/v1/topics/t", json=config))[0] == 201
        first = await _produce(api, "pay-42", body)
        assert first[0] == 200 and first[1]["offsets"] == [{"partition": 0, "offset": 0}]
        for i in range(40):  # about ten segments: the first one rolls, tiers and goes
            status, _ = await api.call(
                "POST", "/v1/topics/t/records", json={"records": [{"value": f"{i}" + "v" * 150}]}
            )
            assert status == 200

        async def tiered() -> bool:
            _, described = await api.call("GET", "/v1/topics/t")
            return bool(described["partitions"][0]["local_start_offset"] > 0)

        await wait_for(tiered, what="local retention of the first segment")
    finally:
        await stop_api(api)
    data = tmp_path / "data"
    # The deleted segment's tags are saved beside the segments, and never tiered.
    assert [p.name for p in (data / "topics").rglob("*.tags")] == [f"{0:020d}.tags"]
    assert not list((data / "objects").rglob("*.tags"))
    api = await start_api(data, **settings)
    try:
        assert await _produce(api, "pay-42", body) == first
        status, refused = await _produce(api, "pay-42", orjson.dumps({"records": [{"value": "x"}]}))
        assert status == 409 and refused["error"]["code"] == "idempotency_key_reused"
        _, described = await api.call("GET", "/v1/topics/t")
        assert described["partitions"][0]["end_offset"] == 41
        # The saved tags go with the topic.
        assert (await api.call("DELETE", "/v1/topics/t"))[0] == 204
        assert not list((data / "topics").rglob("*.tags"))
    finally:
        await stop_api(api)


@pytest.mark.single_process("looks at the broker's answer table in the server process")
async def test_a_produce_without_a_key_does_no_idempotency_work(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    for n in range(3):
        assert (await api.call("POST", "/v1/topics/t/records", data=_body(f"p{n}")))[0] == 200
    broker = api.server.app[BROKER]
    incarnation = (await broker.view("default", "t")).record.incarnation
    table = broker.idempotent.table
    # Nothing remembered, and the topic's producer tags were never read to rebuild it.
    assert len(table) == 0
    assert table.rebuild_future("default", incarnation) is None
    assert broker.idempotent.replays == 0
    assert (await _produce(api, "now-with-a-key", _body("k")))[0] == 200
    assert len(table) == 1 and table.rebuild_future("default", incarnation) is not None
