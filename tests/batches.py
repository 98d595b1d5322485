"""Binary batches damaged on purpose, for the tests of what a produce refuses: each damage
keeps the CRC right where the record walk, not the CRC, is what must find it."""

from __future__ import annotations

import crc32c

from partitions.batch import (
    BATCH_HEADER,
    BATCH_PREFIX,
    CRC,
    CRC_START,
    RECORD_HEADER,
    RECORD_LENGTH,
    NewRecord,
    encode_batch,
)

NOW = 1_700_000_000_000
FIRST_RECORD = BATCH_HEADER.size  # where the first record starts in a batch without a tag
DAMAGED_RECORDS = [
    NewRecord(value=b"hello", key=b"k", headers=(("name", "value"),), timestamp_ms=NOW),
    NewRecord(value=b"world", timestamp_ms=NOW),
]
# Where the first record's header block starts: after its header, key and value.
_BLOCK = FIRST_RECORD + RECORD_HEADER.size + 1 + 5

# Each damage, and what the refusal says.
DAMAGES = {
    "crc": "CRC-32C mismatch",
    "more records": "a record is truncated",
    "fewer records": "the records end",
    "cut short": "is cut short",
    "record runs past": "runs past the end of its batch",
    "lengths": "lengths do not add up",
    "header name": "not valid UTF-8",
    "header value": "not valid UTF-8",
    "header block": "header block",
    "producer tag": "producer tag",
    "version": "version",
}


def encode(records: list[NewRecord], tag: bytes = b"") -> bytes:
    return encode_batch(records, now_ms=NOW, max_record_bytes=1 << 30, producer_tag=tag)


def sealed(batch: bytearray) -> bytes:
    """``batch`` with its length and CRC made to match its bytes again."""
    BATCH_PREFIX.pack_into(batch, 0, 0, len(batch) - BATCH_PREFIX.size)
    CRC.pack_into(batch, BATCH_PREFIX.size, crc32c.crc32c(bytes(batch[CRC_START:])))
    return bytes(batch)


def damaged(damage: str) -> bytes:
    """A batch of :data:`DAMAGED_RECORDS` with one of :data:`DAMAGES`."""
    batch = bytearray(encode(DAMAGED_RECORDS))
    header = RECORD_HEADER.unpack_from(batch, FIRST_RECORD)
    if damage == "crc":
        batch[-1] ^= 0x01
        return bytes(batch)
    if damage == "cut short":
        return bytes(batch[:-3])
    if damage == "producer tag":
        return encode(DAMAGED_RECORDS, b"mine")
    if damage in ("more records", "fewer records"):
        fields = list(BATCH_HEADER.unpack_from(batch))
        fields[5] = 3 if damage == "more records" else 1
        BATCH_HEADER.pack_into(batch, 0, *fields)
    elif damage == "record runs past":
        RECORD_LENGTH.pack_into(batch, FIRST_RECORD, header[0] + 1000)
    elif damage == "lengths":
        RECORD_HEADER.pack_into(batch, FIRST_RECORD, *header[:5], header[5] + 1, header[6])
    elif damage == "header name":
        batch[_BLOCK + 4] = 0xFF  # the first byte of "name"
    elif damage == "header value":
        batch[_BLOCK + 12] = 0xC3  # the first byte of "value": a lead byte, then "a"
    elif damage == "header block":
        batch[_BLOCK + 1] = 2  # two headers claimed, one there
    elif damage == "version":
        batch[CRC_START] = 9
    else:
        raise ValueError(damage)
    return sealed(batch)
