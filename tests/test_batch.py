"""The record batch format: round trips, checks, and the documented layout."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partitions.batch import (
    BATCH_HEADER,
    BATCH_PREFIX,
    CRC_START,
    NewRecord,
    decode_records,
    encode_batch,
    payload_totals,
    producer_tag,
    validate_batch,
    with_base_offset,
)
from partitions.errors import EventBusError, InvalidBatchError, RecordTooLargeError

MIB = 1024 * 1024

header_text = st.text(min_size=0, max_size=20)
records_strategy = st.lists(
    st.builds(
        NewRecord,
        value=st.binary(max_size=300),
        key=st.none() | st.binary(max_size=40),
        headers=st.lists(st.tuples(header_text, header_text), max_size=4).map(tuple),
        timestamp_ms=st.none() | st.integers(min_value=0, max_value=2**50),
        key_is_text=st.booleans(),
        value_is_text=st.booleans(),
    ),
    min_size=1,
    max_size=30,
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
