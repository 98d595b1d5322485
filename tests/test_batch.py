"""The record batch format: round trips, checks, and the documented layout."""

from __future__ import annotations

import struct

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from partitions.batch import (
    BATCH_HEADER,
    BATCH_PREFIX,
    CRC_START,
    RECORD_DELTAS,
    RECORD_DELTAS_AT,
    RECORD_HEADER,
    RECORD_LENGTH,
    NewRecord,
    decode_records,
    encode_batch,
    payload_totals,
    producer_tag,
    validate_batch,
    with_base_offset,
)
from partitions.errors import (
    EventBusError,
    InvalidBatchError,
    RecordTooLargeError,
    TooManyRecordsError,
)
from partitions.incoming import IncomingBatches, RecordList, index_batches
from tests.batches import DAMAGES, FIRST_RECORD, NOW, damaged, encode, sealed

MIB = 1024 * 1024

header_text = st.text(min_size=0, max_size=20)


def record_lists(
    timestamps: st.SearchStrategy[int | None], *, max_key: int, max_records: int
) -> st.SearchStrategy[list[NewRecord]]:
    return st.lists(
        st.builds(
            NewRecord,
            value=st.binary(max_size=300),
            key=st.none() | st.binary(max_size=max_key),
            headers=st.lists(st.tuples(header_text, header_text), max_size=4).map(tuple),
            timestamp_ms=timestamps,
            key_is_text=st.booleans(),
            value_is_text=st.booleans(),
        ),
        min_size=1,
        max_size=max_records,
    )


records_strategy = record_lists(
    st.none() | st.integers(min_value=0, max_value=2**50), max_key=40, max_records=30
)


@given(records=records_strategy, base=st.integers(min_value=0, max_value=2**60))
def test_round_trip_keeps_every_field(records: list[NewRecord], base: int) -> None:
    batch = with_base_offset(
        encode_batch(records, now_ms=1_700_000_000_000, max_record_bytes=MIB), base
    )
    header = validate_batch(batch)
    assert header.base_offset == base
    assert header.record_count == len(records)
    decoded = decode_records(batch)
    assert [r.offset for r in decoded] == list(range(base, base + len(records)))
    for sent, got in zip(records, decoded, strict=True):
        assert got.value == sent.value
        assert got.key == sent.key
        assert got.headers == sent.headers
        expected_ts = sent.timestamp_ms if sent.timestamp_ms is not None else 1_700_000_000_000
        assert got.timestamp_ms == expected_ts
        assert got.key_is_text == sent.key_is_text
        assert got.value_is_text == sent.value_is_text
    assert header.max_timestamp == max(r.timestamp_ms for r in decoded)
    assert header.first_timestamp == decoded[0].timestamp_ms


def test_layout_matches_the_documented_header() -> None:
    batch = encode_batch(
        [NewRecord(value=b"v", timestamp_ms=5)],
        now_ms=9,
        max_record_bytes=MIB,
        producer_tag=b"retry-key",
    )
    base, length = BATCH_PREFIX.unpack_from(batch)
    assert base == 0
    assert length == len(batch) - BATCH_PREFIX.size
    fields = BATCH_HEADER.unpack_from(batch)
    assert fields[3] == 1  # format version
    assert fields[5] == 1  # record count
    assert fields[6] == fields[7] == 5  # first and max timestamp
    assert CRC_START == BATCH_PREFIX.size + struct.calcsize(">I")
    assert producer_tag(batch) == b"retry-key"


def test_base_offset_is_outside_the_crc() -> None:
    batch = encode_batch([NewRecord(value=b"x")], now_ms=1, max_record_bytes=MIB)
    moved = with_base_offset(batch, 12345)
    assert validate_batch(moved).base_offset == 12345


@pytest.mark.parametrize("position", [CRC_START + 1, CRC_START + 5, -1])
def test_a_flipped_byte_under_the_crc_is_refused(position: int) -> None:
    batch = bytearray(encode_batch([NewRecord(value=b"hello")], now_ms=1, max_record_bytes=MIB))
    batch[position] ^= 0x40
    with pytest.raises(InvalidBatchError, match="CRC"):
        validate_batch(bytes(batch))


def test_wrong_version_and_length_are_refused() -> None:
    batch = encode_batch([NewRecord(value=b"hello")], now_ms=1, max_record_bytes=MIB)
    with pytest.raises(InvalidBatchError, match="length"):
        validate_batch(batch + b"\x00")
    bad_version = bytearray(batch)
    bad_version[CRC_START] = 7
    with pytest.raises(InvalidBatchError, match="version"):
        validate_batch(bytes(bad_version))
    with pytest.raises(InvalidBatchError):
        validate_batch(batch[:10])


def test_oversize_record_is_refused_with_its_index() -> None:
    records = [NewRecord(value=b"a"), NewRecord(value=b"b" * 101)]
    with pytest.raises(RecordTooLargeError) as caught:
        encode_batch(records, now_ms=1, max_record_bytes=100)
    assert caught.value.details["index"] == 1
    assert caught.value.status == 413
    # Key and header bytes count too.
    with pytest.raises(RecordTooLargeError):
        encode_batch(
            [NewRecord(value=b"v" * 90, key=b"k" * 9, headers=(("h", "xy"),))],
            now_ms=1,
            max_record_bytes=100,
        )


def test_empty_batch_is_refused() -> None:
    with pytest.raises(InvalidBatchError):
        encode_batch([], now_ms=1, max_record_bytes=MIB)


def test_errors_share_one_root_with_distinct_codes() -> None:
    import partitions.errors as errors

    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, EventBusError) and c is not EventBusError
    ]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), codes


@given(
    batches=st.lists(records_strategy, min_size=1, max_size=4),
    from_index=st.integers(min_value=0, max_value=130),
)
def test_payload_totals_count_what_decoding_would(
    batches: list[list[NewRecord]], from_index: int
) -> None:
    """Metering counts a binary answer's records and bytes without decoding: exactly what
    decoding it and summing each record's payload_bytes gives, from any offset."""
    data, base = b"", 0
    for records in batches:
        data += with_base_offset(encode_batch(records, now_ms=0, max_record_bytes=MIB), base)
        base += len(records)
    decoded = [r for pos in _batch_starts(data) for r in decode_records(data, pos)]
    wanted = [r for r in decoded if r.offset >= from_index]
    assert payload_totals(data, from_index) == (
        len(wanted),
        sum(r.payload_bytes for r in wanted),
    )


def _batch_starts(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        (length,) = struct.unpack_from(">I", data, pos + 8)
        pos += BATCH_PREFIX.size + length
    return starts


# --- binary produce bodies, checked in place and cut by slicing (partitions.incoming) -------

# Binary batches give every record a timestamp; short keys, so that keys repeat.
timed_records = record_lists(
    st.integers(min_value=0, max_value=2 * NOW), max_key=12, max_records=40
)


def _index(body: bytes) -> IncomingBatches:
    return index_batches(body, max_records=MAX_RECORDS)


def _route(records: list[NewRecord], partitions: int) -> dict[int, list[int]]:
    """Request indexes per partition as the producer routes them: keyed records by hash
    range (``partitions`` equal ranges), keyless ones together to the last partition."""
    groups: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        if record.key is None:
            pid = partitions - 1
        else:
            pid = xxhash.xxh3_64_intdigest(memoryview(record.key)) * partitions >> 64
        groups.setdefault(pid, []).append(index)
    return groups


MAX_RECORDS = 100_000


@given(records=timed_records, partitions=st.integers(min_value=1, max_value=4))
def test_cutting_a_batch_by_partition_equals_routing_decoded_records(
    records: list[NewRecord], partitions: int
) -> None:
    """Every partition's batch cut from the producer's batch by slicing record bytes is
    byte for byte what encoding that partition's decoded records gives, with or without a
    producer tag; and it decodes to exactly those records."""
    incoming = _index(encode(records))
    keys = [incoming.key(i) for i in range(len(records))]
    assert [None if k is None else bytes(k) for k in keys] == [r.key for r in records]
    for indexes in _route(records, partitions).values():
        chosen = [records[i] for i in indexes]
        for tag in (b"", b"t" * 40):
            cut = incoming.encode(indexes, now_ms=0, max_record_bytes=MIB, producer_tag=tag)
            assert bytes(cut) == encode(chosen, tag)
        decoded = decode_records(bytes(incoming.encode(indexes, now_ms=0, max_record_bytes=MIB)))
        assert [(r.key, r.value, r.headers, r.timestamp_ms) for r in decoded] == [
            (r.key, r.value, r.headers, r.timestamp_ms) for r in chosen
        ]
        assert [(r.key_is_text, r.value_is_text) for r in decoded] == [
            (r.key_is_text, r.value_is_text) for r in chosen
        ]


@given(batches=st.lists(timed_records, min_size=1, max_size=3))
def test_the_index_counts_what_decoding_would(batches: list[list[NewRecord]]) -> None:
    """Costs, keys and timestamps from the index match the decoded records, over several
    batches in one body."""
    records = [r for batch in batches for r in batch]
    incoming = _index(b"".join(encode(batch) for batch in batches))
    everything = list(range(len(records)))
    stored = decode_records(encode(records))
    assert len(incoming) == len(records)
    assert incoming.cost(everything) == sum(r.payload_bytes for r in stored)
    assert incoming.cost(everything[1:]) == sum(r.payload_bytes for r in stored[1:])
    assert incoming.timestamps == [r.timestamp_ms for r in records]
    assert incoming.min_timestamp == min(incoming.timestamps)
    assert incoming.max_timestamp == max(incoming.timestamps)
    assert incoming.key_value_bytes() == sum(len(r.value) + len(r.key or b"") for r in records)
    assert [incoming.key_value_size(i) for i in everything] == [
        len(r.value) + len(r.key or b"") for r in records
    ]


def test_a_whole_batch_is_appended_as_the_bytes_it_came_in() -> None:
    records = [NewRecord(value=b"v%d" % n, key=b"k", timestamp_ms=NOW + n) for n in range(5)]
    body = encode(records)
    incoming = _index(body)
    assert incoming.encode(range(5), now_ms=0, max_record_bytes=MIB) is body
    # Of two batches in a body, each goes as a view of its own bytes.
    second = encode(records[:2])
    both = _index(body + second)
    assert bytes(both.encode([5, 6], now_ms=0, max_record_bytes=MIB)) == second
    # With a producer tag: a new header and the tag, then the very record bytes.
    tagged = bytes(incoming.encode(range(5), now_ms=0, max_record_bytes=MIB, producer_tag=b"k1"))
    assert producer_tag(tagged) == b"k1"
    assert tagged[FIRST_RECORD + 2 :] == body[FIRST_RECORD:]
    assert validate_batch(tagged).record_count == 5


def test_a_batch_the_server_would_write_otherwise_is_written_anew() -> None:
    """Fields the server owns that a producer got wrong (max_timestamp, offset deltas,
    attributes) are not stored as sent: the batch is framed again, its records the same."""
    records = [NewRecord(value=b"a", timestamp_ms=NOW), NewRecord(value=b"b", timestamp_ms=NOW + 9)]
    good = encode(records)
    wrong_max = bytearray(good)
    BATCH_HEADER.pack_into(wrong_max, 0, *(list(BATCH_HEADER.unpack_from(good))[:7] + [NOW, 0]))
    wrong_delta = bytearray(good)
    second = FIRST_RECORD + RECORD_LENGTH.size + RECORD_HEADER.unpack_from(good, FIRST_RECORD)[0]
    RECORD_DELTAS.pack_into(wrong_delta, second + RECORD_DELTAS_AT, 7, 9)
    flagged = bytearray(good)
    flagged[CRC_START + 1] = 0x04
    for fixed in (wrong_max, wrong_delta, flagged):
        incoming = _index(sealed(fixed))
        assert bytes(incoming.encode([0, 1], now_ms=0, max_record_bytes=MIB)) == good


@pytest.mark.parametrize(("damage", "message"), DAMAGES.items())
def test_a_damaged_batch_is_refused_naming_it(damage: str, message: str) -> None:
    good = encode([NewRecord(value=b"first")])
    with pytest.raises(InvalidBatchError, match=f"batch 1.*{message}"):
        _index(good + damaged(damage))


def test_too_many_records_are_refused_before_the_batch_is_walked() -> None:
    body = encode([NewRecord(value=b"")] * 10)
    with pytest.raises(TooManyRecordsError):
        index_batches(body + body, max_records=15)
    assert len(index_batches(body + body, max_records=20)) == 20


def test_an_oversize_record_is_named_by_its_index_in_the_request() -> None:
    records = [NewRecord(value=b"x" * (60 if n == 5 else 10), key=b"%d" % n) for n in range(8)]
    for incoming in (_index(encode(records)), RecordList(records)):
        with pytest.raises(RecordTooLargeError) as caught:
            incoming.encode([1, 3, 5, 7], now_ms=NOW, max_record_bytes=50)
        assert caught.value.details == {"index": 5, "size": 61, "limit": 50}
        assert "record 5 " in caught.value.message
        incoming.encode([1, 3, 7], now_ms=NOW, max_record_bytes=50)  # the others fit


def test_both_forms_present_the_same_records() -> None:
    records = [
        NewRecord(value=b"v1", key=b"key", headers=(("h\u00e9", "x"),), timestamp_ms=NOW),
        NewRecord(value=b"v22", timestamp_ms=NOW),
    ]
    binary, listed = _index(encode(records)), RecordList(records)
    for form in (binary, listed):
        assert len(form) == 2
        assert form.key(1) is None and bytes(form.key(0) or b"") == b"key"
        assert form.cost([0]) == 2 + 3 + 3 + 1 and form.cost([0, 1]) == 9 + 3
        assert form.key_value_size(0) == 5 and form.key_value_bytes() == 8
        assert bytes(form.encode([1], now_ms=NOW, max_record_bytes=MIB)) == encode(records[1:])
