"""Record batches: the unit that is encoded once, appended, stored, fsync'd and served.

Byte layout, format version 1. Every integer is big-endian; offsets of fields come from the
``struct.Struct`` definitions below, never counted by hand.

Batch header (``BATCH_HEADER``)::

    base_offset      u64  offset of the first record; assigned by the log when it appends
    batch_length     u32  number of bytes that follow this field (the batch is
                          ``BATCH_PREFIX.size + batch_length`` bytes long)
    crc              u32  CRC-32C (Castagnoli) of every byte that follows this field
    version          u8   format version, 1
    attributes       u8   reserved for a compression codec; 0 = none
    record_count     u32  number of records, at least 1
    first_timestamp  i64  timestamp (ms since the Unix epoch) of the first record
    max_timestamp    i64  largest timestamp of any record in the batch
    producer_tag_len u16  length of the producer tag that follows

    producer_tag     bytes  the idempotency key of the request that wrote this batch, or
                            nothing; it travels with the data so that a table of answered
                            requests can be rebuilt from the log after a crash

``base_offset`` and ``batch_length`` sit outside the CRC so that the log can assign offsets
by rewriting the first eight bytes, without checksumming again; recovery checks both
against the position in the log instead.

Then ``record_count`` records back to back, each a fixed header (``RECORD_HEADER``)::

    record_length    u32  number of bytes that follow this field
    attributes       u8   bit 0: the key was given as text (UTF-8)
                          bit 1: the value was given as text (UTF-8)
    offset_delta     u32  record offset minus base_offset
    timestamp_delta  i64  record timestamp minus first_timestamp (may be negative)
    key_length       i32  -1 for a null key
    value_length     u32
    headers_length   u32  bytes of the header block

followed by the key, the value and the header block. The header block is a ``u16`` count,
then per header a ``u16`` name length, the UTF-8 name, a ``u32`` value length and the UTF-8
value. Whether key and value were text is kept so that the HTTP API can return each in the
form it was sent.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeAlias

import crc32c

from partitions.errors import InvalidBatchError, RecordTooLargeError

#: Stored batch bytes as reads pass them on: a view into a buffer read from disk or a
#: cached chunk of an object, so that cutting a read at a batch boundary copies nothing.
BatchBytes: TypeAlias = bytes | memoryview

FORMAT_VERSION = 1

# base_offset, batch_length: outside the CRC.
BATCH_PREFIX = struct.Struct(">QI")
# crc, then the checksummed fields.
BATCH_HEADER = struct.Struct(">QIIBBIqqH")
CRC_START = BATCH_PREFIX.size + struct.calcsize(">I")
BASE_OFFSET = struct.Struct(">Q")

RECORD_HEADER = struct.Struct(">IBIqiII")
RECORD_LENGTH = struct.Struct(">I")
CRC = struct.Struct(">I")
# A record header's offset_delta and timestamp_delta, which follow record_length and
# attributes: what a batch cut from another one rewrites in each record it copies.
RECORD_DELTAS = struct.Struct(">Iq")
RECORD_DELTAS_AT = struct.calcsize(">IB")
HEADER_COUNT = struct.Struct(">H")
HEADER_NAME_LEN = struct.Struct(">H")
HEADER_VALUE_LEN = struct.Struct(">I")
# A record header's first and last fields only (record_length, headers_length), skipping
# the ones between: attributes, offset_delta, timestamp_delta, key_length, value_length.
_LENGTH_AND_HEADERS = struct.Struct(f">I{struct.calcsize('>BIqiI')}xI")

KEY_IS_TEXT = 0x01
VALUE_IS_TEXT = 0x02

MAX_PRODUCER_TAG = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF


class NewRecord(NamedTuple):
    """A record as a producer hands it in, before it has an offset.

    A named tuple rather than a frozen dataclass: produce makes one per record, and a
    frozen dataclass's constructor costs about three times as much.
    """

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timestamp_ms: int | None = None
    key_is_text: bool = False
    value_is_text: bool = False


class Record(NamedTuple):
    """A stored record, as a reader gets it back (a named tuple, as :class:`NewRecord`:
    reads make one per record)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, str], ...]
    key_is_text: bool
    value_is_text: bool

    @property
    def payload_bytes(self) -> int:
        """Key, value and header bytes: what a reader's ``max_bytes`` and metering count."""
        size = len(self.value) + (len(self.key) if self.key is not None else 0)
        for name, value in self.headers:
            size += len(name.encode()) + len(value.encode())
        return size


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    crc: int
    version: int
    attributes: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_tag_length: int

    @property
    def total_size(self) -> int:
        return BATCH_PREFIX.size + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


def _encode_headers(headers: tuple[tuple[str, str], ...]) -> bytes:
    if not headers:
        return b""
    if len(headers) > _U16_MAX:
        raise InvalidBatchError("a record has more than 65535 headers")
    parts = [HEADER_COUNT.pack(len(headers))]
    for name, value in headers:
        name_b = name.encode()
        value_b = value.encode()
        if len(name_b) > _U16_MAX:
            raise InvalidBatchError("a header name is longer than 65535 bytes")
        parts.append(HEADER_NAME_LEN.pack(len(name_b)))
        parts.append(name_b)
        parts.append(HEADER_VALUE_LEN.pack(len(value_b)))
        parts.append(value_b)
    return b"".join(parts)


def encode_batch(
    records: Sequence[NewRecord],
    *,
    now_ms: int,
    max_record_bytes: int,
    producer_tag: bytes = b"",
) -> bytes:
    """Encode ``records`` as one batch with base offset 0 (the log assigns the real one).

    Records without a timestamp get ``now_ms``. A record whose key, value and headers exceed
    ``max_record_bytes`` raises :class:`RecordTooLargeError` naming its index.
    """
    if not records:
        raise InvalidBatchError("a batch needs at least one record")
    if len(producer_tag) > MAX_PRODUCER_TAG:
        raise InvalidBatchError("the producer tag is longer than 65535 bytes")
    first_ts = records[0].timestamp_ms if records[0].timestamp_ms is not None else now_ms
    max_ts = first_ts
    parts: list[bytes] = []
    append = parts.append
    pack_record = RECORD_HEADER.pack
    fixed = RECORD_HEADER.size - RECORD_LENGTH.size
    # Per record, so kept to plain steps: this loop is most of a large produce's encoding.
    for index, (value, key, headers, ts, key_is_text, value_is_text) in enumerate(records):
        if ts is None:
            ts = now_ms
        if ts > max_ts:
            max_ts = ts
        header_block = _encode_headers(headers) if headers else b""
        value_len = len(value)
        if key is None:
            key_len = -1
            payload = value_len + len(header_block)
        else:
            key_len = len(key)
            payload = value_len + key_len + len(header_block)
        if payload > max_record_bytes:
            raise RecordTooLargeError(
                f"record {index} is {payload} bytes; the limit is {max_record_bytes}",
                index=index,
                size=payload,
                limit=max_record_bytes,
            )
        append(
            pack_record(
                fixed + payload,
                (KEY_IS_TEXT if key_is_text else 0) | (VALUE_IS_TEXT if value_is_text else 0),
                index,
                ts - first_ts,
                key_len,
                value_len,
                len(header_block),
            )
        )
        if key:
            append(key)
        append(value)
        if header_block:
            append(header_block)
    return frame_batch(b"".join(parts), len(records), first_ts, max_ts, producer_tag)


def frame_batch(
    records: bytes | memoryview,
    record_count: int,
    first_timestamp: int,
    max_timestamp: int,
    producer_tag: bytes,
) -> bytes:
    """The batch (base offset 0) of ``record_count`` encoded ``records`` back to back: its
    header and producer tag before them, and the CRC over all but the first fields."""
    checked = (
        BATCH_HEADER.pack(
            0,
            0,
            0,
            FORMAT_VERSION,
            0,
            record_count,
            first_timestamp,
            max_timestamp,
            len(producer_tag),
        )[CRC_START:]
        + producer_tag
    )
    crc = crc32c.crc32c(records, crc32c.crc32c(checked))
    batch_length = CRC.size + len(checked) + len(records)
    if batch_length > _U32_MAX:
        raise InvalidBatchError("a batch may not exceed 4 GiB")
    return b"".join((BATCH_PREFIX.pack(0, batch_length), CRC.pack(crc), checked, records))


def seal_batch(
    buf: bytearray, record_count: int, first_timestamp: int, max_timestamp: int, tag: bytes
) -> None:
    """Write the header, the producer tag and the CRC of a batch (base offset 0) into the
    room left for them at the start of ``buf``, whose records follow them already."""
    if len(buf) - BATCH_PREFIX.size > _U32_MAX:
        raise InvalidBatchError("a batch may not exceed 4 GiB")
    BATCH_HEADER.pack_into(
        buf,
        0,
        0,
        len(buf) - BATCH_PREFIX.size,
        0,
        FORMAT_VERSION,
        0,
        record_count,
        first_timestamp,
        max_timestamp,
        len(tag),
    )
    buf[BATCH_HEADER.size : BATCH_HEADER.size + len(tag)] = tag
    CRC.pack_into(buf, BATCH_PREFIX.size, crc32c.crc32c(memoryview(buf)[CRC_START:]))


class WalkStop(enum.Enum):
    """Why :func:`walk_batches` stopped."""

    END = "end"  # the next batch is not wholly in the buffer (or the buffer ended)
    BUDGET = "budget"  # the next batch does not fit the byte budget
    BAD = "bad"  # the next header is not a batch header (or not the expected offset)


class Walk(NamedTuple):
    position: int  # in the buffer, after the last batch taken
    next_offset: int  # after the last batch taken (the expected offset when none was)
    stop: WalkStop


_MIN_LENGTH = BATCH_HEADER.size - BATCH_PREFIX.size


def walk_batches(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    budget: int,
    *,
    first: bool,
    expected: int | None = None,
) -> Walk:
    """Take whole batches of ``buf`` from ``pos`` on, in one pass over their headers: while
    the next lies wholly before ``end`` and fits ``budget`` bytes (the first one whatever
    its size, when ``first``), and its header is sound (the format version, a record
    count, a length that holds the header and its producer tag, and the base offset
    ``expected`` when one is given). Reads check batches this way before they hand them
    on; a caller that meets ``BAD`` raises its own error for that position."""
    unpack = BATCH_HEADER.unpack_from
    header_size = BATCH_HEADER.size
    prefix = BATCH_PREFIX.size
    taken = 0
    next_offset = -1 if expected is None else expected
    while pos + header_size <= end:
        base, length, _, version, _, count, _, _, tag = unpack(buf, pos)
        if (
            version != FORMAT_VERSION
            or count < 1
            or length < _MIN_LENGTH + tag
            or (expected is not None and base != expected)
        ):
            return Walk(pos, next_offset, WalkStop.BAD)
        size = prefix + length
        if pos + size > end:
            break
        if taken + size > budget and not (first and not taken):
            return Walk(pos, next_offset, WalkStop.BUDGET)
        pos += size
        taken += size
        next_offset = expected = base + count
    return Walk(pos, next_offset, WalkStop.END)


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the batch header at ``pos``; the caller makes sure it is all there."""
    return BatchHeader._make(BATCH_HEADER.unpack_from(buf, pos))


def checksum_ok(buf: bytes | bytearray | memoryview, pos: int, header: BatchHeader) -> bool:
    """Whether the batch at ``pos`` (all of it in ``buf``) matches its CRC."""
    view = memoryview(buf)[pos + CRC_START : pos + header.total_size]
    return bool(crc32c.crc32c(view) == header.crc)


def validate_batch(batch: bytes | bytearray | memoryview) -> BatchHeader:
    """Check that ``batch`` is exactly one well-formed batch; answer its header.

    Checks the version, that the length field matches the bytes, the record count and the
    CRC. Records themselves are checked by :func:`decode_records`.
    """
    if len(batch) < BATCH_HEADER.size:
        raise InvalidBatchError(f"a batch is at least {BATCH_HEADER.size} bytes")
    header = read_header(batch)
    if header.version != FORMAT_VERSION:
        raise InvalidBatchError(f"unknown batch format version {header.version}")
    if header.total_size != len(batch):
        raise InvalidBatchError(
            f"batch length field says {header.total_size} bytes but {len(batch)} were given"
        )
    if header.record_count < 1:
        raise InvalidBatchError("a batch needs at least one record")
    if BATCH_HEADER.size + header.producer_tag_length > len(batch):
        raise InvalidBatchError("the producer tag runs past the end of the batch")
    if not checksum_ok(batch, 0, header):
        raise InvalidBatchError("batch CRC-32C mismatch")
    return header


def producer_tag(batch: bytes | bytearray | memoryview, pos: int = 0) -> bytes:
    header = read_header(batch, pos)
    start = pos + BATCH_HEADER.size
    return bytes(batch[start : start + header.producer_tag_length])


def with_base_offset(batch: bytes, base_offset: int) -> bytes:
    """The same batch with another base offset (the CRC does not cover it)."""
    return BASE_OFFSET.pack(base_offset) + batch[BASE_OFFSET.size :]


def trim_batches(data: BatchBytes, from_offset: int, max_records: int) -> tuple[BatchBytes, int]:
    """Keep the leading batches of ``data`` until they hold ``max_records`` records at or
    past ``from_offset`` (at least one batch); answers the bytes and the next offset."""
    pos = 0
    count = 0
    next_offset = from_offset
    while pos < len(data):
        header = read_header(data, pos)
        pos += header.total_size
        next_offset = header.next_offset
        count += header.next_offset - max(header.base_offset, from_offset)
        if count >= max_records:
            break
    return (data if pos == len(data) else memoryview(data)[:pos]), next_offset


def whole_batches_within(data: BatchBytes, max_bytes: int) -> tuple[BatchBytes, int]:
    """The leading whole batches of ``data`` that fit ``max_bytes`` together (maybe none),
    and the offset after the last of them (0 when none fits)."""
    pos = 0
    next_offset = 0
    while pos < len(data):
        header = read_header(data, pos)
        if pos + header.total_size > max_bytes:
            break
        pos += header.total_size
        next_offset = header.next_offset
    return (data if pos == len(data) else memoryview(data)[:pos]), next_offset


def payload_totals(data: bytes | bytearray | memoryview, from_offset: int = 0) -> tuple[int, int]:
    """(records, key + value + header bytes) of the records at or past ``from_offset`` in
    whole stored batches, as :attr:`Record.payload_bytes` counts them, without decoding.

    A record's ``record_length`` covers its fixed fields, key, value and header block; the
    header block's own framing (its ``u16`` count, each header's ``u16`` and ``u32``
    lengths) is not payload. Records of a batch have offsets ``base_offset + index``.
    """
    buf = memoryview(data)
    unpack = _LENGTH_AND_HEADERS.unpack_from
    header_count = HEADER_COUNT.unpack_from
    fixed = RECORD_HEADER.size - RECORD_LENGTH.size
    framing = HEADER_NAME_LEN.size + HEADER_VALUE_LEN.size
    records = payload = 0
    pos = 0
    while pos < len(buf):
        header = read_header(buf, pos)
        cursor = pos + BATCH_HEADER.size + header.producer_tag_length
        pos += header.total_size
        skip = from_offset - header.base_offset  # records delivered before
        if skip >= header.record_count:
            continue
        for index in range(header.record_count):
            length, headers_len = unpack(buf, cursor)
            cursor += RECORD_LENGTH.size + length
            if index >= skip:
                records += 1
                payload += length - fixed
                if headers_len:
                    (count,) = header_count(buf, cursor - headers_len)
                    payload -= HEADER_COUNT.size + count * framing
    return records, payload


def _decode_headers(buf: memoryview, pos: int, end: int) -> tuple[tuple[str, str], ...]:
    if pos == end:
        return ()
    (count,) = HEADER_COUNT.unpack_from(buf, pos)
    pos += HEADER_COUNT.size
    out = []
    for _ in range(count):
        (name_len,) = HEADER_NAME_LEN.unpack_from(buf, pos)
        pos += HEADER_NAME_LEN.size
        name = bytes(buf[pos : pos + name_len]).decode()
        pos += name_len
        (value_len,) = HEADER_VALUE_LEN.unpack_from(buf, pos)
        pos += HEADER_VALUE_LEN.size
        value = bytes(buf[pos : pos + value_len]).decode()
        pos += value_len
        out.append((name, value))
    if pos != end:
        raise InvalidBatchError("a record's header block has trailing bytes")
    return tuple(out)


def iter_records(
    batch: bytes | bytearray | memoryview, pos: int = 0, *, min_offset: int = 0
) -> Iterator[Record]:
    """Decode the records of the batch at ``pos`` whose offset is at least ``min_offset``.

    Raises :class:`InvalidBatchError` when the records do not fit the batch's own lengths.
    """
    buf = memoryview(batch)
    header = read_header(buf, pos)
    end = pos + header.total_size
    cursor = pos + BATCH_HEADER.size + header.producer_tag_length
    unpack = RECORD_HEADER.unpack_from
    try:
        for _ in range(header.record_count):
            length, attrs, offset_delta, ts_delta, key_len, value_len, headers_len = unpack(
                buf, cursor
            )
            record_end = cursor + RECORD_LENGTH.size + length
            if record_end > end:
                raise InvalidBatchError("a record runs past the end of its batch")
            offset = header.base_offset + offset_delta
            cursor += RECORD_HEADER.size
            if offset < min_offset:
                cursor = record_end
                continue
            if key_len < 0:
                key = None
            else:
                key = bytes(buf[cursor : cursor + key_len])
                cursor += key_len
            value = bytes(buf[cursor : cursor + value_len])
            cursor += value_len
            headers = _decode_headers(buf, cursor, cursor + headers_len)
            cursor += headers_len
            if cursor != record_end:
                raise InvalidBatchError("a record's lengths do not add up")
            yield Record(
                offset,
                header.first_timestamp + ts_delta,
                key,
                value,
                headers,
                bool(attrs & KEY_IS_TEXT),
                bool(attrs & VALUE_IS_TEXT),
            )
    except struct.error as exc:
        raise InvalidBatchError(f"a record is truncated: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidBatchError("a header is not valid UTF-8") from exc


def decode_records(batch: bytes | bytearray | memoryview, pos: int = 0) -> list[Record]:
    return list(iter_records(batch, pos))
