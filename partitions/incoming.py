"""The records of one produce request, as the broker routes, charges and appends them.

They come in one of two forms. Decoded from JSON or NDJSON they are a list of
:class:`~partitions.batch.NewRecord` (:class:`RecordList`). Sent as binary batches
(:mod:`partitions.batch`) they stay the bytes they came in (:class:`IncomingBatches`):
validated where they lie, in one pass over the record headers, and never decoded. Both
present what the producer, the quotas, metering and the load meters read of a request
(:class:`IncomingRecords`): how many records, a record's key (routing, hot keys), its key
and value bytes, what records cost (key, value and header bytes), and a batch of any of
them, encoded for appending.

What :class:`IncomingBatches` keeps per record, by request index (parallel lists)::

    starts      position of the record's header in the body
    ends        position after its header block
    key_lengths its key_length field (-1: no key); the key follows the record header
    timestamps  first_timestamp of its batch plus its timestamp_delta
    costs       key, value and header name and value bytes (the header block's own
                framing is not counted, as reads count it)

A producer's batch whose records go whole to one partition is appended as it came: the
very bytes, or, when the server writes a producer tag, those bytes after a new header
and tag (the CRC computed again, in C). Records of a batch that go to several partitions
are copied, each once, into one new batch per partition; only their ``offset_delta`` and
``timestamp_delta`` fields are written anew. So are the records of a batch whose fields
the server owns are not what it would write (attributes other than 0, offset deltas other
than 0, 1, 2..., a first record off ``first_timestamp``, a ``max_timestamp`` that is not
the largest): reads and the time index rely on those, and re-framing costs no decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, TypeAlias

import crc32c

from partitions.batch import (
    BATCH_HEADER,
    BATCH_PREFIX,
    CRC_START,
    FORMAT_VERSION,
    HEADER_COUNT,
    HEADER_NAME_LEN,
    HEADER_VALUE_LEN,
    RECORD_DELTAS,
    RECORD_DELTAS_AT,
    RECORD_HEADER,
    RECORD_LENGTH,
    BatchBytes,
    NewRecord,
    encode_batch,
    frame_batch,
    seal_batch,
)
from partitions.errors import InvalidBatchError, RecordTooLargeError, TooManyRecordsError

#: A record's key as the producer reads it: bytes, or a view of the request body.
Key: TypeAlias = bytes | memoryview

_FIXED = RECORD_HEADER.size - RECORD_LENGTH.size  # record header bytes after record_length
_HEADER_FRAMING = HEADER_NAME_LEN.size + HEADER_VALUE_LEN.size  # per header, not payload


class IncomingRecords(Protocol):
    """A produce request's records, whichever form they came in. Indexes are request
    indexes (0 for the first record of the request); a sequence of them is ascending."""

    def __len__(self) -> int: ...

    def key(self, index: int) -> Key | None:
        """The key of the record at ``index``; None when it has none."""
        ...

    def key_value_size(self, index: int) -> int:
        """Key and value bytes of the record at ``index`` (what load meters weigh)."""
        ...

    def key_value_bytes(self) -> int:
        """Key and value bytes of every record (the produced bytes metric)."""
        ...

    def cost(self, indexes: Sequence[int]) -> int:
        """Key, value and header bytes of the records at ``indexes``: what the produce
        quota and metering count, as reads count them."""
        ...

    def encode(
        self,
        indexes: Sequence[int],
        *,
        now_ms: int,
        max_record_bytes: int,
        producer_tag: bytes = b"",
    ) -> BatchBytes:
        """One batch (base offset 0) of the records at ``indexes``, in that order. Records
        without a timestamp get ``now_ms``; one whose key, value and header block exceed
        ``max_record_bytes`` raises :class:`RecordTooLargeError` naming its request index."""
        ...


class RecordList:
    """Records decoded from JSON or NDJSON: encoded when the producer asks for a batch."""

    __slots__ = ("records",)

    def __init__(self, records: Sequence[NewRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def key(self, index: int) -> Key | None:
        return self.records[index].key

    def key_value_size(self, index: int) -> int:
        record = self.records[index]
        return len(record.value) + (0 if record.key is None else len(record.key))

    def key_value_bytes(self) -> int:
        return sum(len(r.value) + (0 if r.key is None else len(r.key)) for r in self.records)

    def _chosen(self, indexes: Sequence[int]) -> Sequence[NewRecord]:
        records = self.records
        return records if len(indexes) == len(records) else [records[i] for i in indexes]

    def cost(self, indexes: Sequence[int]) -> int:
        total = 0
        for record in self._chosen(indexes):
            total += len(record.value) + (0 if record.key is None else len(record.key))
            for name, value in record.headers:
                total += len(name.encode()) + len(value.encode())
        return total

    def encode(
        self,
        indexes: Sequence[int],
        *,
        now_ms: int,
        max_record_bytes: int,
        producer_tag: bytes = b"",
    ) -> BatchBytes:
        try:
            return encode_batch(
                self._chosen(indexes),
                now_ms=now_ms,
                max_record_bytes=max_record_bytes,
                producer_tag=producer_tag,
            )
        except RecordTooLargeError as exc:
            # The encoder counts records of the batch; the producer knows request indexes.
            index = indexes[exc.details["index"]]
            size = exc.details["size"]
            raise _too_large(index, size, max_record_bytes) from None


def _too_large(index: int, size: int, limit: int) -> RecordTooLargeError:
    return RecordTooLargeError(
        f"record {index} is {size} bytes; the limit is {limit}", index=index, size=size, limit=limit
    )


class SentBatch(NamedTuple):
    """One of the producer's batches, as it lies in the request body."""

    first: int  # request index of its first record
    records: int
    start: int  # its position in the body
    end: int
    first_timestamp: int
    max_timestamp: int
    # Every field the server would write itself is as it would write it (attributes 0,
    # offset deltas 0, 1, 2, ..., the first record at first_timestamp, max_timestamp
    # the largest): the batch may be stored as it came.
    as_sent: bool


class IncomingBatches:
    """Binary batches of a produce body, checked in place and never decoded; build one
    with :func:`index_batches`. The lists are parallel, by request index (see the module
    docstring); ``batches`` are the producer's batches in body order."""

    __slots__ = (
        "body",
        "batches",
        "starts",
        "ends",
        "key_lengths",
        "timestamps",
        "costs",
        "min_timestamp",
        "max_timestamp",
        "_view",
        "_by_first",
        "_largest",
        "_key_values",
        "_cost",
    )

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.batches: list[SentBatch] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.key_lengths: list[int] = []
        self.timestamps: list[int] = []
        self.costs: list[int] = []
        self.min_timestamp = 0
        self.max_timestamp = 0
        self._view = memoryview(body)
        self._by_first: dict[int, SentBatch] = {}
        self._largest = 0  # the largest key, value and header block of any record
        self._key_values = 0
        self._cost = 0

    def __len__(self) -> int:
        return len(self.starts)

    def key(self, index: int) -> Key | None:
        length = self.key_lengths[index]
        if length < 0:
            return None
        at = self.starts[index] + RECORD_HEADER.size
        return self._view[at : at + length]

    def key_value_size(self, index: int) -> int:
        fields = RECORD_HEADER.unpack_from(self._view, self.starts[index])
        key_length: int = fields[4]
        value_length: int = fields[5]
        return value_length + max(key_length, 0)

    def key_value_bytes(self) -> int:
        return self._key_values

    def cost(self, indexes: Sequence[int]) -> int:
        if len(indexes) == len(self.costs):
            return self._cost
        costs = self.costs
        return sum(costs[i] for i in indexes)

    def encode(
        self,
        indexes: Sequence[int],
        *,
        now_ms: int,
        max_record_bytes: int,
        producer_tag: bytes = b"",
    ) -> BatchBytes:
        """As the protocol says; ``now_ms`` is unused, every record has a timestamp."""
        if self._largest > max_record_bytes:
            self._check_sizes(indexes, max_record_bytes)
        sent = self._by_first.get(indexes[0])
        if (
            sent is not None
            and sent.as_sent
            and sent.records == len(indexes)
            and indexes[-1] == sent.first + sent.records - 1
        ):
            return self._as_sent(sent, producer_tag)
        return self._cut(indexes, producer_tag)

    def _check_sizes(self, indexes: Sequence[int], limit: int) -> None:
        starts, ends = self.starts, self.ends
        for index in indexes:
            size = ends[index] - starts[index] - RECORD_HEADER.size
            if size > limit:
                raise _too_large(index, size, limit)

    def _as_sent(self, sent: SentBatch, producer_tag: bytes) -> BatchBytes:
        """The producer's batch as it came; with a producer tag, its records after a new
        header and the tag."""
        if not producer_tag:
            if sent.start == 0 and sent.end == len(self.body):
                return self.body
            return self._view[sent.start : sent.end]
        return frame_batch(
            self._view[sent.start + BATCH_HEADER.size : sent.end],
            sent.records,
            sent.first_timestamp,
            sent.max_timestamp,
            producer_tag,
        )

    def _cut(self, indexes: Sequence[int], producer_tag: bytes) -> BatchBytes:
        """A new batch of the records at ``indexes``: each record's bytes copied once,
        its offset and timestamp deltas written for the new batch."""
        starts, ends, timestamps = self.starts, self.ends, self.timestamps
        head = BATCH_HEADER.size + len(producer_tag)
        out = bytearray(head + sum(ends[i] - starts[i] for i in indexes))
        view = self._view
        first = top = timestamps[indexes[0]]
        pack_deltas = RECORD_DELTAS.pack_into
        pos = head
        for position, index in enumerate(indexes):
            start = starts[index]
            after = pos + ends[index] - start
            out[pos:after] = view[start : ends[index]]
            timestamp = timestamps[index]
            if timestamp > top:
                top = timestamp
            pack_deltas(out, pos + RECORD_DELTAS_AT, position, timestamp - first)
            pos = after
        seal_batch(out, len(indexes), first, top, producer_tag)
        return memoryview(out)

    def _add_batch(
        self,
        start: int,
        end: int,
        count: int,
        first_timestamp: int,
        header_max: int,
        plain: bool,
    ) -> None:
        """Check and index the records of the batch at ``start`` (up to ``end``), whose
        header says ``count`` records, ``first_timestamp`` and ``header_max`` (its
        max_timestamp); ``plain``: its attributes are 0."""
        view = self._view
        unpack = RECORD_HEADER.unpack_from
        header_size = RECORD_HEADER.size
        starts, ends = self.starts.append, self.ends.append
        key_lengths, timestamps, costs = (
            self.key_lengths.append,
            self.timestamps.append,
            self.costs.append,
        )
        first_index = len(self.starts)
        in_order = True
        largest, key_values, total = self._largest, self._key_values, self._cost
        cursor = start + BATCH_HEADER.size
        # Per record, so kept to plain steps: this loop is most of what a binary produce
        # costs before its append.
        for position in range(count):
            if cursor + header_size > end:
                raise InvalidBatchError("a record is truncated")
            length, _, offset_delta, delta, key_length, value_length, headers_length = unpack(
                view, cursor
            )
            record_end = cursor + RECORD_LENGTH.size + length
            if record_end > end:
                raise InvalidBatchError("a record runs past the end of its batch")
            key_value = value_length + key_length if key_length > 0 else value_length
            if key_length < -1 or length != _FIXED + key_value + headers_length:
                raise InvalidBatchError("a record's lengths do not add up")
            if offset_delta != position:
                in_order = False
            payload = length - _FIXED
            if payload > largest:
                largest = payload
            if headers_length:
                cost = payload - _header_framing(view, record_end - headers_length, record_end)
            else:
                cost = payload
            key_values += key_value
            total += cost
            starts(cursor)
            ends(record_end)
            key_lengths(key_length)
            timestamps(first_timestamp + delta)
            costs(cost)
            cursor = record_end
        if cursor != end:
            raise InvalidBatchError(
                f"the records end {end - cursor} bytes before the batch does "
                f"(record_count says {count})"
            )
        stamps = self.timestamps[first_index:]
        top, bottom = max(stamps), min(stamps)
        if first_index:
            self.min_timestamp = min(self.min_timestamp, bottom)
            self.max_timestamp = max(self.max_timestamp, top)
        else:
            self.min_timestamp, self.max_timestamp = bottom, top
        self._largest, self._key_values, self._cost = largest, key_values, total
        sent = SentBatch(
            first_index,
            count,
            start,
            end,
            first_timestamp,
            top,
            plain and in_order and stamps[0] == first_timestamp and top == header_max,
        )
        self.batches.append(sent)
        self._by_first[first_index] = sent


def _header_framing(view: memoryview, pos: int, end: int) -> int:
    """Check the header block of a record at ``pos`` (up to ``end``): its lengths, and
    that names and values are UTF-8. Answers the bytes of its framing (the count and each
    header's lengths), which are not payload."""
    if end - pos < HEADER_COUNT.size:
        raise InvalidBatchError("a record's header block is cut short")
    count: int = HEADER_COUNT.unpack_from(view, pos)[0]
    pos += HEADER_COUNT.size
    try:
        for _ in range(count):
            name_at = pos + HEADER_NAME_LEN.size
            if name_at > end:
                raise InvalidBatchError("a record's header block is cut short")
            (name_length,) = HEADER_NAME_LEN.unpack_from(view, pos)
            value_at = name_at + name_length + HEADER_VALUE_LEN.size
            if value_at > end:
                raise InvalidBatchError("a record's header block is cut short")
            (value_length,) = HEADER_VALUE_LEN.unpack_from(view, value_at - HEADER_VALUE_LEN.size)
            pos = value_at + value_length
            if pos > end:
                raise InvalidBatchError("a record's header block is cut short")
            str(view[name_at : name_at + name_length], "utf-8")
            str(view[value_at:pos], "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBatchError("a header is not valid UTF-8") from exc
    if pos != end:
        raise InvalidBatchError("a record's header block has trailing bytes")
    return HEADER_COUNT.size + count * _HEADER_FRAMING


def index_batches(body: bytes, *, max_records: int) -> IncomingBatches:
    """Check the binary batches of a produce body and index their records, without
    decoding any: each batch's framing, version, record count and CRC-32C, an empty
    producer tag (the server writes tags), every record's lengths (they add up, and the
    records fill the batch exactly) and its header block (framing, UTF-8). Timestamps and
    record sizes are the caller's to judge (``min_timestamp``, ``max_timestamp``,
    :meth:`IncomingBatches.encode`). More than ``max_records`` records in all raise
    :class:`TooManyRecordsError` before the batch that passes the limit is walked."""
    batches = IncomingBatches(body)
    view = memoryview(body)
    size = len(body)
    pos = number = 0
    while pos < size:
        if size - pos < BATCH_HEADER.size:
            raise InvalidBatchError(f"batch {number} is cut short")
        _, length, crc, version, attributes, count, first_timestamp, header_max, tag_length = (
            BATCH_HEADER.unpack_from(view, pos)
        )
        end = pos + BATCH_PREFIX.size + length
        if end > size:
            raise InvalidBatchError(f"batch {number} is cut short")
        if end < pos + BATCH_HEADER.size:
            raise InvalidBatchError(
                f"batch {number}: a batch is at least {BATCH_HEADER.size} bytes"
            )
        if version != FORMAT_VERSION:
            raise InvalidBatchError(f"batch {number}: unknown batch format version {version}")
        if count < 1:
            raise InvalidBatchError(f"batch {number}: a batch needs at least one record")
        if tag_length:
            raise InvalidBatchError(
                f"batch {number} has a producer tag; send the Idempotency-Key header instead"
            )
        if len(batches) + count > max_records:
            raise TooManyRecordsError(f"a produce request holds at most {max_records} records")
        if crc32c.crc32c(view[pos + CRC_START : end]) != crc:
            raise InvalidBatchError(f"batch {number}: batch CRC-32C mismatch")
        try:
            batches._add_batch(pos, end, count, first_timestamp, header_max, attributes == 0)
        except InvalidBatchError as exc:
            raise InvalidBatchError(f"batch {number}: {exc}") from None
        pos = end
        number += 1
    if not number:
        raise InvalidBatchError("the body holds no batch")
    return batches
