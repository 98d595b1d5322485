"""Body formats over a real server: binary batches, NDJSON, compression, content negotiation."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest

from gateway.client import wire
from gateway.http import bodies as server_wire
from gateway.http.record_json import MAX_PRODUCE_RECORDS
from partitions.batch import (
    BATCH_HEADER,
    NewRecord,
    Record,
    decode_records,
    encode_batch,
    producer_tag,
    read_header,
    validate_batch,
    with_base_offset,
)
from partitions.errors import TooManyRecordsError
from partitions.idempotency import decode_tag
from tests.batches import DAMAGES, damaged
from tests.conftest import Api, start_api, stop_api

BATCH = wire.BATCH

RECORDS = [
    NewRecord(value=b"text value", key=b"k1", key_is_text=True, value_is_text=True),
    NewRecord(value=b"\x00\xffbinary", key=None, headers=(("h", "v"), ("trace", "\u00e9"))),
    NewRecord(value=b"", key=b"\x01\x02", timestamp_ms=1_700_000_000_000),
    NewRecord(value=b"v" * 3000, key=b"k1", key_is_text=True, value_is_text=True),
]


def _batch(records: list[NewRecord], **kwargs: Any) -> bytes:
    now = int(time.time() * 1000)
    return encode_batch(records, now_ms=now, max_record_bytes=1 << 30, **kwargs)


def _same(sent: NewRecord, got: Record) -> None:
    assert got.key == sent.key
    assert got.value == sent.value
    assert got.headers == sent.headers
    assert got.key_is_text == sent.key_is_text
    assert got.value_is_text == sent.value_is_text
    if sent.timestamp_ms is not None:
        assert got.timestamp_ms == sent.timestamp_ms


async def _produce_binary(api: Api, body: bytes, **headers: str) -> tuple[int, Any]:
    status, _, raw = await api.raw(
        "POST",
        "/v1/topics/t/records",
        data=body,
        headers={"Content-Type": BATCH, **headers},
    )
    return status, orjson.loads(raw)


async def test_binary_produce_and_read_round_trip_every_field(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    body = _batch(RECORDS[:2]) + _batch(RECORDS[2:])  # two batches in one request
    status, answer = await _produce_binary(api, body)
    assert status == 200, answer
    assert answer["offsets"] == [{"partition": 0, "offset": n} for n in range(4)]

    status, headers, raw = await api.raw(
        "GET",
        "/v1/topics/t/partitions/0/records",
        params={"offset": "0"},
        headers={"Accept": BATCH},
    )
    assert status == 200 and headers["Content-Type"] == BATCH
    got = list(wire.decode_chunks(raw))
    assert [p for p, _ in got] == [0, 0, 0, 0]
    for sent, (_, record) in zip(RECORDS, got, strict=True):
        _same(sent, record)
    assert [r.offset for _, r in got] == [0, 1, 2, 3]
    assert headers["Eventbus-Next-Offset"] == "4"
    assert headers["Eventbus-High-Watermark"] == "4"
    assert headers["Eventbus-Start-Offset"] == "0"
    assert headers["Eventbus-Sealed"] == "false"
    assert headers["Eventbus-Children"] == ""

    # JSON readers get the same records in the form they were sent.
    status, json_body = await api.call("GET", "/v1/topics/t/partitions/0/records")
    assert status == 200
    assert (
        json_body["records"][0]["key"] == "k1" and json_body["records"][0]["value"] == "text value"
    )
    assert "value_b64" in json_body["records"][1] and json_body["records"][1]["key"] is None
    assert json_body["records"][1]["headers"] == {"h": "v", "trace": "\u00e9"}


async def test_binary_reads_skip_records_below_the_offset_and_honour_max_records(
    api: Api,
) -> None:
    await api.call("PUT", "/v1/topics/t")
    for n in range(3):
        batch = _batch([NewRecord(value=f"{n}-{i}".encode()) for i in range(10)])
        assert (await _produce_binary(api, batch))[0] == 200
    # Offset 15 is inside the second stored batch: the chunk says to skip 10..14.
    status, headers, raw = await api.raw(
        "GET",
        "/v1/topics/t/partitions/0/records",
        params={"offset": "15", "max_records": "3"},
        headers={"Accept": BATCH},
    )
    assert status == 200
    offsets = [r.offset for _, r in wire.decode_chunks(raw)]
    # max_records counts whole batches: the batch that reaches 3 is the last one sent.
    assert offsets == list(range(15, 20))
    assert headers["Eventbus-Next-Offset"] == "20"
    # At the end: an empty body.
    status, headers, raw = await api.raw(
        "GET",
        "/v1/topics/t/partitions/0/records",
        params={"offset": "30"},
        headers={"Accept": BATCH},
    )
    assert status == 200 and raw == b"" and headers["Eventbus-Next-Offset"] == "30"


async def test_binary_group_fetch_delivers_each_record_once(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    sent = [NewRecord(value=str(n).encode(), key=str(n % 7).encode()) for n in range(500)]
    for start in range(0, 500, 100):
        assert (await _produce_binary(api, _batch(sent[start : start + 100])))[0] == 200
    # Two partitions, so that the fetch answers more than one chunk.
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
    assert (
        await _produce_binary(api, _batch([NewRecord(value=b"late", key=b"x") for _ in range(5)]))
    )[0] == 200
    member = None
    seen: list[tuple[int, int]] = []
    values: list[bytes] = []
    for _ in range(50):
        fetch: dict[str, Any] = {"max_records": 150, "auto_offset_reset": "earliest"}
        if member:
            fetch["member_id"] = member
        status, headers, raw = await api.raw(
            "POST",
            "/v1/topics/t/groups/g/fetch",
            data=orjson.dumps(fetch),
            headers={"Accept": BATCH, "Content-Type": "application/json"},
        )
        assert status == 200, raw
        member = headers["Eventbus-Member-Id"]
        assert headers["Eventbus-Generation"]
        got = list(wire.decode_chunks(raw))
        if not got and len(values) >= 505:
            break
        seen += [(p, r.offset) for p, r in got]
        values += [r.value for _, r in got]
    assert len(seen) == len(set(seen)) == 505
    assert sorted(values[:500], key=int) == [str(n).encode() for n in range(500)]
    status, described = await api.call("GET", "/v1/topics/t/groups/g")
    assert status == 200
    assert sum(p["lag"] for p in described["partitions"]) == 0


async def test_ndjson_produce(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    lines = b'{"value": "a"}\n\n{"key": "k", "value_b64": "AAE="}\n{"value": "c"}'
    status, _, raw = await api.raw(
        "POST",
        "/v1/topics/t/records",
        data=lines,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200, raw
    assert [o["offset"] for o in orjson.loads(raw)["offsets"]] == [0, 1, 2]
    _, body = await api.call("GET", "/v1/topics/t/partitions/0/records")
    assert [r.get("value", r.get("value_b64")) for r in body["records"]] == ["a", "AAE=", "c"]
    # A bad line names itself; nothing is written.
    status, _, raw = await api.raw(
        "POST",
        "/v1/topics/t/records",
        data=b'{"value": "ok"}\n{"value": \n',
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["code"] == "malformed_json" and "line 2" in error["message"]
    status, _, raw = await api.raw(
        "POST",
        "/v1/topics/t/records",
        data=b'{"value": "ok"}\n{"val": "x"}\n',
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 400 and orjson.loads(raw)["error"]["code"] == "invalid_record"
    assert (await api.call("GET", "/v1/topics/t"))[1]["partitions"][0]["end_offset"] == 3


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_compressed_produce_bodies(api: Api, encoding: str) -> None:
    await api.call("PUT", "/v1/topics/t")
    body = orjson.dumps({"records": [{"value": "x" * 100} for _ in range(50)]})
    status, _, raw = await api.raw(
        "POST",
        "/v1/topics/t/records",
        data=wire.compress(body, encoding),
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert status == 200, raw
    binary = wire.compress(_batch(RECORDS), encoding)
    status, answer = await _produce_binary(api, binary, **{"Content-Encoding": encoding})
    assert status == 200, answer
    assert answer["offsets"][-1]["offset"] == 53


async def test_bad_encodings_and_media_types(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({"Content-Encoding": "gzip"}, b"not gzip at all", 400, "invalid_content_encoding"),
        ({"Content-Encoding": "zstd"}, b"not zstd either", 400, "invalid_content_encoding"),
        ({"Content-Encoding": "lzma"}, b"{}", 415, "unsupported_content_encoding"),
        ({"Content-Type": "application/xml"}, b"<r/>", 415, "unsupported_media_type"),
        ({"Content-Type": BATCH}, b"\x00" * 10, 400, "invalid_batch"),
        ({"Content-Type": BATCH}, _batch(RECORDS)[:-1], 400, "invalid_batch"),
        ({"Content-Type": BATCH}, _batch(RECORDS, producer_tag=b"mine"), 400, "invalid_batch"),
        ({"Content-Type": BATCH}, b"", 400, "invalid_batch"),
    ]
    damaged = bytearray(_batch(RECORDS))
    damaged[-1] ^= 0xFF
    cases.append(({"Content-Type": BATCH}, bytes(damaged), 400, "invalid_batch"))
    future = [NewRecord(value=b"x", timestamp_ms=int(time.time() * 1000) + 2 * 3600 * 1000)]
    cases.append(({"Content-Type": BATCH}, _batch(future), 400, "timestamp_in_future"))
    for headers, body, status, code in cases:
        headers = {"Content-Type": "application/json", **headers}
        got_status, _, raw = await api.raw(
            "POST", "/v1/topics/t/records", data=body, headers=headers
        )
        assert (got_status, orjson.loads(raw)["error"]["code"]) == (status, code), headers
    assert (await api.call("GET", "/v1/topics/t"))[1]["partitions"][0]["end_offset"] == 0
    status, _, raw = await api.raw(
        "GET", "/v1/topics/t/partitions/0/records", headers={"Accept": "text/html"}
    )
    assert status == 406 and orjson.loads(raw)["error"]["code"] == "not_acceptable"


def test_a_batch_with_too_many_records_is_refused_before_its_records_are_read() -> None:
    """The count is in the batch header: a body over the limit is refused without decoding
    its records (a 13 MiB body of empty records would otherwise hold the event loop for
    seconds). The one bad record at the end shows they were never looked at."""
    now = int(time.time() * 1000)
    records = [NewRecord(value=b"")] * MAX_PRODUCE_RECORDS
    records.append(NewRecord(value=b"", timestamp_ms=now + 2 * 3600 * 1000))
    with pytest.raises(TooManyRecordsError):
        server_wire.parse_batches(_batch(records), now_ms=now)
    # Over two batches, the second one's count refuses the body before its records are read.
    with pytest.raises(TooManyRecordsError):
        server_wire.parse_batches(_batch(records[:10]) + _batch(records[10:]), now_ms=now)


async def test_a_record_too_large_in_binary_is_refused_whole(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t", json={"max_record_bytes": 1000})
    body = _batch([NewRecord(value=b"ok"), NewRecord(value=b"x" * 2000)])
    status, answer = await _produce_binary(api, body)
    assert status == 413 and answer["error"]["code"] == "record_too_large"
    assert (await api.call("GET", "/v1/topics/t"))[1]["partitions"][0]["end_offset"] == 0


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [("zstd, gzip", "zstd"), ("gzip", "gzip"), ("gzip;q=0, zstd;q=0", None), ("*", "zstd")],
)
async def test_read_answers_are_compressed_as_accepted(
    api: Api, accept_encoding: str, expected: str | None
) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "y" * 4000}]})
    for accept in ("application/json", BATCH):
        status, headers, raw = await api.raw(
            "GET",
            "/v1/topics/t/partitions/0/records",
            headers={"Accept": accept, "Accept-Encoding": accept_encoding},
        )
        assert status == 200
        assert headers.get("Content-Encoding") == expected
        plain = wire.decompress(raw, expected) if expected else raw
        if accept == BATCH:
            assert [r.value for _, r in wire.decode_chunks(plain)] == [b"y" * 4000]
        else:
            assert orjson.loads(plain)["records"][0]["value"] == "y" * 4000
        if expected:
            assert len(raw) < len(plain) // 10


async def test_small_answers_are_not_compressed(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    status, headers, raw = await api.raw(
        "GET", "/v1/topics/t/partitions/0/records", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200 and "Content-Encoding" not in headers
    assert orjson.loads(raw)["records"] == []


async def test_a_compression_bomb_is_bounded_by_the_request_limit(tmp_path: Any) -> None:
    api = await start_api(tmp_path / "data", max_request_bytes=64 * 1024)
    try:
        await api.call("PUT", "/v1/topics/t")
        bomb = gzip.compress(b'{"records": [{"value": "' + b"a" * (8 << 20) + b'"}]}')
        assert len(bomb) < 64 * 1024
        status, _, raw = await api.raw(
            "POST",
            "/v1/topics/t/records",
            data=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert status == 413, raw
    finally:
        await stop_api(api)


# --- binary batches are checked in place, stored as sent, and cut by partition -------------


async def _read_partition(api: Api, partition: int) -> tuple[dict[str, str], bytes]:
    """Partition ``partition`` from offset 0 as stored: the answer's headers and the
    bytes of its one chunk's batches."""
    status, headers, raw = await api.raw(
        "GET",
        f"/v1/topics/t/partitions/{partition}/records",
        params={"offset": "0", "max_records": "10000", "max_bytes": str(8 << 20)},
        headers={"Accept": BATCH},
    )
    assert status == 200, raw
    if not raw:
        return headers, b""
    chunk_partition, from_offset, length = wire.CHUNK_HEADER.unpack_from(raw)
    assert (chunk_partition, from_offset, len(raw)) == (
        partition,
        0,
        wire.CHUNK_HEADER.size + length,
    )
    return headers, raw[wire.CHUNK_HEADER.size :]


def _stored_batches(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = read_header(data, pos).total_size
        out.append(data[pos : pos + size])
        pos += size
    return out


@pytest.mark.parametrize("damage", [*DAMAGES, "oversize"])
async def test_a_bad_binary_batch_is_refused_and_writes_nothing(api: Api, damage: str) -> None:
    """The bad batch follows a good one in the same body: neither is written."""
    await api.call("PUT", "/v1/topics/t", json={"max_record_bytes": 1000})
    assert (await _produce_binary(api, _batch([NewRecord(value=b"before")])))[0] == 200
    good = _batch([NewRecord(value=b"good", key=b"k")])
    if damage == "oversize":
        bad = _batch([NewRecord(value=b"ok"), NewRecord(value=b"x" * 2000)])
    else:
        bad = damaged(damage)
    status, answer = await _produce_binary(api, good + bad)
    if damage == "oversize":
        assert (status, answer["error"]["code"]) == (413, "record_too_large")
        assert answer["error"]["details"]["index"] == 2
    else:
        assert (status, answer["error"]["code"]) == (400, "invalid_batch")
        assert "batch 1" in answer["error"]["message"]
        assert DAMAGES[damage] in answer["error"]["message"]
    headers, data = await _read_partition(api, 0)
    assert [r.value for r in decode_records(data)] == [b"before"]
    assert headers["Eventbus-High-Watermark"] == "1"


async def test_a_stored_batch_reads_back_byte_for_byte(api: Api) -> None:
    """A producer's batch is stored as the bytes it came in: only the base offset differs,
    and with an Idempotency-Key the header gains the producer tag (length and CRC with it)
    while the records stay the very bytes sent."""
    await api.call("PUT", "/v1/topics/t")
    first, second, third = _batch(RECORDS), _batch(RECORDS[:2]), _batch(RECORDS[1:])
    assert (await _produce_binary(api, first))[0] == 200
    assert (await _produce_binary(api, second))[0] == 200
    status, answer = await _produce_binary(api, third, **{"Idempotency-Key": "bytes-1"})
    assert status == 200, answer
    _, data = await _read_partition(api, 0)
    stored = _stored_batches(data)
    assert stored[:2] == [first, with_base_offset(second, 4)]
    tagged = read_header(stored[2])
    sent = read_header(third)
    assert tagged.base_offset == 6
    assert (tagged.record_count, tagged.first_timestamp, tagged.max_timestamp) == (
        sent.record_count,
        sent.first_timestamp,
        sent.max_timestamp,
    )
    assert decode_tag(producer_tag(stored[2])).key == "bytes-1"
    assert stored[2][BATCH_HEADER.size + tagged.producer_tag_length :] == third[BATCH_HEADER.size :]
    validate_batch(stored[2])


async def test_a_batch_over_several_partitions_is_cut_keeping_every_record(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200  # 1 and 2
    assert (await api.call("POST", "/v1/topics/t/partitions/1/split"))[0] == 200  # 3 and 4
    now = int(time.time() * 1000)
    records = [
        NewRecord(
            value=f"value {n}".encode() if n % 4 else bytes([n % 256, 0, 255]),
            key=None if n % 5 == 0 else f"key-{n % 13}".encode(),
            headers=(("n", str(n)), ("\u00e9", "x")) if n % 3 == 0 else (),
            timestamp_ms=now - 5000 + (n * 7919) % 3000,  # not in order
            key_is_text=n % 2 == 0,
            value_is_text=n % 4 != 0,
        )
        for n in range(300)
    ]
    status, answer = await _produce_binary(api, _batch(records[:170]) + _batch(records[170:]))
    assert status == 200, answer
    placed = [(o["partition"], o["offset"]) for o in answer["offsets"]]
    assert len(placed) == 300 and {p for p, _ in placed} == {2, 3, 4}
    # Per key: one partition, offsets rising in request order.
    for key in {r.key for r in records}:
        where = [placed[i] for i, r in enumerate(records) if r.key == key]
        assert len({p for p, _ in where}) == 1
        assert [o for _, o in where] == sorted(o for _, o in where)
    stored = {}
    for partition in (2, 3, 4):
        _, data = await _read_partition(api, partition)
        for batch in _stored_batches(data):
            validate_batch(batch)
            stored.update({(partition, r.offset): r for r in decode_records(batch)})
    assert len(stored) == 300
    for index, sent in enumerate(records):
        got = stored[placed[index]]
        _same(sent, got)
        assert got.timestamp_ms == sent.timestamp_ms


@pytest.mark.parametrize("splits", [0, 2])
async def test_an_idempotent_binary_produce_retried_answers_the_same_and_stores_once(
    api: Api, splits: int
) -> None:
    await api.call("PUT", "/v1/topics/t")
    for partition in range(splits):
        assert (await api.call("POST", f"/v1/topics/t/partitions/{partition}/split"))[0] == 200
    records = [
        NewRecord(value=b"%d" % n, key=None if n % 7 == 0 else b"k%d" % (n % 11))
        for n in range(200)
    ]
    body = _batch(records[:120]) + _batch(records[120:])
    first = await _produce_binary(api, body, **{"Idempotency-Key": "retry-1"})
    again = await _produce_binary(api, body, **{"Idempotency-Key": "retry-1"})
    assert first[0] == again[0] == 200
    assert first[1] == again[1]
    described = (await api.call("GET", "/v1/topics/t"))[1]
    assert sum(p["end_offset"] for p in described["partitions"]) == 200
    assert len({(o["partition"], o["offset"]) for o in first[1]["offsets"]}) == 200


async def test_a_binary_read_answers_up_to_max_bytes_of_8_mib_in_one_answer(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    value = bytes(range(256)) * 1024  # 256 KiB
    for _ in range(40):
        batch = _batch([NewRecord(value=value, key=b"k")])
        assert (await _produce_binary(api, batch))[0] == 200
    eight_mib = 8 * 1024 * 1024
    bodies: dict[str | None, bytes] = {}
    for encoding in (None, "zstd"):
        status, headers, raw = await api.raw(
            "GET",
            "/v1/topics/t/partitions/0/records",
            params={"offset": "0", "max_bytes": str(eight_mib), "max_records": "1000"},
            headers={"Accept": BATCH, "Accept-Encoding": encoding or "identity"},
        )
        assert status == 200 and headers.get("Content-Encoding") == encoding
        plain = wire.decompress(raw, encoding) if encoding else raw
        if encoding is None:
            assert int(headers["Content-Length"]) == len(raw)
        bodies[encoding] = plain
    # Sent from the buffers it was read into or compressed: the same bytes either way.
    assert bodies[None] == bodies["zstd"]
    records = [r for _, r in wire.decode_chunks(bodies[None])]
    assert [r.offset for r in records] == list(range(len(records)))
    assert all(r.value == value for r in records)
    # Whole batches up to 8 MiB: 31 of them (each a little over 256 KiB).
    assert len(records) == eight_mib // (len(value) + 64)
    assert 8 * 1024 * 1024 - len(bodies[None]) < len(value) + 64
