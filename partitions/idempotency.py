"""Idempotent produce: producer tags in batches, and the table of answered requests.

A produce request with an idempotency key writes, into the producer tag of every batch it
appends, which request it was and which of the request's records that batch holds. So the
answer to a request can always be rebuilt from the log: after a crash between the append
and the answer, the table is rebuilt from the tags of recent batches, and a retry returns
the offsets the first attempt got instead of appending again. A request that reached only
some partitions (a crash or a failed disk in the middle) is finished by its retry: only the
records no batch holds yet are appended.

Producer tag layout, version 1 (big-endian integers, varints are unsigned LEB128)::

    version        u8      1
    key_length     u8      1..255
    key            bytes   the Idempotency-Key, ASCII
    request_hash   16 bytes  first 16 bytes of SHA-256 over the request's media type, a
                           newline and its decoded body (:func:`request_hash`)
    accepted_ms    u64     wall-clock time the first attempt was accepted; the answer is
                           remembered until ``accepted_ms + ANSWER_TTL_MS``
    total_records  u32     records in the whole request
    run_count      varint
    runs           run_count pairs of varints (gap, length): the request indexes this batch
                   holds, in order; ``gap`` is the first index minus the end of the run
                   before (0 for the first run at index 0)

A batch's records are the runs' indexes in order, so record ``i`` of the batch answers
request index ``indexes[i]`` at offset ``base_offset + i``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from partitions.batch import MAX_PRODUCER_TAG
from partitions.errors import ConflictError, InvalidInputError
from partitions.shapes import ShapeError, Text

TAG_VERSION = 1
ANSWER_TTL_MS = 10 * 60 * 1000
MAX_KEY_LENGTH = 255
HASH_BYTES = 16
# At most this many requests are remembered per process (a few hundred bytes each); past it
# the oldest answers are forgotten before their ten minutes, and a counter says so.
MAX_ENTRIES = 1_000_000
_FIXED = struct.Struct(">QI")
# Room left in a tag for runs, with the largest key.
_RUN_BUDGET = MAX_PRODUCER_TAG - (2 + MAX_KEY_LENGTH + HASH_BYTES + _FIXED.size + 5)


class InvalidIdempotencyKeyError(InvalidInputError):
    code = "invalid_idempotency_key"


class IdempotencyKeyReusedError(ConflictError):
    code = "idempotency_key_reused"


# An Idempotency-Key: printable ASCII without the space (characters 33 to 126).
KEY_SHAPE = Text(
    pattern=f"[!-~]{{1,{MAX_KEY_LENGTH}}}",
    meaning=f"1 to {MAX_KEY_LENGTH} printable ASCII characters without spaces",
    description="A retry with the same key and body within ten minutes answers the first "
    "answer and appends nothing",
)


def check_key(key: str) -> None:
    try:
        KEY_SHAPE.check(key, "Idempotency-Key")
    except ShapeError as exc:
        raise InvalidIdempotencyKeyError(f"Idempotency-Key {exc.message}") from None


def request_hash(media_type: str, body: bytes) -> bytes:
    """What tells a retry (the same body) from another request under the same key: the
    first 16 bytes of SHA-256 over the media type, a newline and the body, fed in pieces
    (joining them first copied the whole body). Tags written by every version hold this
    hash, so a retry across an upgrade still finds its answer."""
    hasher = hashlib.sha256(media_type.encode())
    hasher.update(b"\n")
    hasher.update(body)
    return hasher.digest()[:HASH_BYTES]


@dataclass(frozen=True, slots=True)
class ProducerTag:
    key: str
    request_hash: bytes
    accepted_ms: int
    total_records: int
    indexes: tuple[int, ...]


def _varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint runs past the end of the producer tag")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _runs(indexes: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for index in indexes:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def encode_tags(
    key: str,
    request_hash: bytes,
    accepted_ms: int,
    total_records: int,
    indexes: Sequence[int],
) -> list[tuple[list[int], bytes]]:
    """Producer tags for a batch holding the request records at ``indexes`` (ascending).

    Answers one (indexes, tag) pair per batch to write: usually one, more when the runs do
    not fit in one tag (many records spread over partitions), each a slice of ``indexes``.
    """
    key_bytes = key.encode("ascii")
    head = bytes((TAG_VERSION, len(key_bytes))) + key_bytes + request_hash
    head += _FIXED.pack(accepted_ms, total_records)
    out: list[tuple[list[int], bytes]] = []
    body = bytearray()
    runs = first = position = previous_end = 0
    for start, length in _runs(indexes):
        encoded = bytearray()
        _varint(start - previous_end, encoded)
        _varint(length, encoded)
        if runs and len(body) + len(encoded) > _RUN_BUDGET:
            out.append(_tag(head, runs, body, indexes[first:position]))
            body.clear()
            runs, first = 0, position
            encoded.clear()
            _varint(start, encoded)  # a new tag's first gap counts from index 0
            _varint(length, encoded)
        body += encoded
        runs += 1
        position += length
        previous_end = start + length
    out.append(_tag(head, runs, body, indexes[first:position]))
    return out


def _tag(head: bytes, runs: int, body: bytearray, taken: Sequence[int]) -> tuple[list[int], bytes]:
    """One producer tag: the fixed head, the count of runs, the runs; and its indexes."""
    count = bytearray()
    _varint(runs, count)
    return list(taken), head + bytes(count) + bytes(body)


def decode_tag(tag: bytes) -> ProducerTag:
    """Parse a producer tag; raises ``ValueError`` when it is not one of ours."""
    if len(tag) < 2 or tag[0] != TAG_VERSION:
        raise ValueError("not a version 1 producer tag")
    key_length = tag[1]
    pos = 2 + key_length
    key = tag[2:pos].decode("ascii")
    request_hash = tag[pos : pos + HASH_BYTES]
    pos += HASH_BYTES
    if len(tag) < pos + _FIXED.size:
        raise ValueError("a producer tag is cut short")
    accepted_ms, total = _FIXED.unpack_from(tag, pos)
    pos += _FIXED.size
    run_count, pos = _read_varint(tag, pos)
    indexes: list[int] = []
    end = 0
    for _ in range(run_count):
        gap, pos = _read_varint(tag, pos)
        length, pos = _read_varint(tag, pos)
        start = end + gap
        indexes.extend(range(start, start + length))
        end = start + length
    if pos != len(tag) or (indexes and indexes[-1] >= total):
        raise ValueError("a producer tag's runs do not add up")
    return ProducerTag(key, bytes(request_hash), accepted_ms, total, tuple(indexes))


# --- the table of answers --------------------------------------------------------------------


def _encode_indexes(indexes: Sequence[int]) -> bytes:
    out = bytearray()
    end = 0
    for start, length in _runs(indexes):
        _varint(start - end, out)
        _varint(length, out)
        end = start + length
    return bytes(out)


def _decode_runs(encoded: bytes) -> list[tuple[int, int]]:
    """The (first index, length) runs of :func:`_encode_indexes`' output."""
    runs: list[tuple[int, int]] = []
    pos = end = 0
    while pos < len(encoded):
        gap, pos = _read_varint(encoded, pos)
        length, pos = _read_varint(encoded, pos)
        start = end + gap
        runs.append((start, length))
        end = start + length
    return runs


def _decode_indexes(encoded: bytes) -> list[int]:
    return [i for start, length in _decode_runs(encoded) for i in range(start, start + length)]


@dataclass(slots=True)
class Entry:
    """What is known of one idempotent request: which of its records are written where.

    Kept compact, since there is one per request of the last ten minutes: per written
    batch, its partition, base offset and the request indexes it holds as encoded runs.
    What is written is always derived from those parts, never counted alongside them, so a
    batch learnt of twice (a rebuild that ran again) cannot make an entry look complete.
    """

    request_hash: bytes
    accepted_ms: int
    total_records: int
    # Every part as varints (partition, base offset, length of the runs) and the runs:
    # one bytes object, not a list of tuples (an entry lives ten minutes, and a request
    # over ten partitions took some 1.5 KiB as tuples).
    packed_parts: bytes = b""
    # Set while an attempt runs; later attempts wait for it.
    busy: asyncio.Future[None] | None = None
    # Partitions where an append of an attempt may or may not have been written (its
    # worker process died before answering): looked at before anything else is written.
    # Empty (the shared empty frozenset) but for such attempts.
    unsure: frozenset[int] = frozenset()

    @property
    def parts(self) -> list[tuple[int, int, bytes]]:
        """(partition, base offset, encoded runs) of every written batch."""
        out = []
        packed = self.packed_parts
        pos = 0
        while pos < len(packed):
            partition, pos = _read_varint(packed, pos)
            base_offset, pos = _read_varint(packed, pos)
            length, pos = _read_varint(packed, pos)
            out.append((partition, base_offset, packed[pos : pos + length]))
            pos += length
        return out

    @property
    def written(self) -> int:
        """How many of the request's records are written (each counted once, even if two
        parts hold it)."""
        if not self.packed_parts:
            return 0
        runs = sorted(run for _p, _b, encoded in self.parts for run in _decode_runs(encoded))
        count = end = 0
        for start, length in runs:
            if start + length > end:
                count += start + length - max(start, end)
                end = start + length
        return count

    @property
    def complete(self) -> bool:
        return self.written >= self.total_records

    def add_batch(self, partition: int, base_offset: int, indexes: Sequence[int]) -> None:
        """Note a written batch; one already noted (same partition and base offset) is
        ignored."""
        if any(p == partition and b == base_offset for p, b, _ in self.parts):
            return
        encoded = _encode_indexes(indexes)
        head = bytearray()
        for value in (partition, base_offset, len(encoded)):
            _varint(value, head)
        self.packed_parts += bytes(head) + encoded

    def add_found(self, partition: int, base_offset: int, indexes: Sequence[int]) -> None:
        """Record a batch found in the log, unless it is known already."""
        if any(p == partition and b == base_offset for p, b, _ in self.parts):
            return
        self.add_batch(partition, base_offset, indexes)

    def add_placed(self, placed: Sequence[tuple[int, tuple[int, int]]]) -> None:
        """Record (request index, (partition, offset)) pairs: each run of consecutive
        offsets in one partition becomes one part."""
        ordered = sorted(placed, key=lambda item: item[1])
        run: list[int] = []
        for n, (index, (partition, offset)) in enumerate(ordered):
            run.append(index)
            last = n + 1 == len(ordered)
            if last or ordered[n + 1][1] != (partition, offset + 1):
                self.add_batch(partition, offset - len(run) + 1, run)
                run = []

    def placed(self) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        for partition, base_offset, encoded in self.parts:
            for position, index in enumerate(_decode_indexes(encoded)):
                out[index] = (partition, base_offset + position)
        return out

    def answer(self) -> list[tuple[int, int]]:
        placed = self.placed()
        return [placed[i] for i in range(self.total_records)]

    def missing(self) -> list[int]:
        placed = self.placed()
        return [i for i in range(self.total_records) if i not in placed]


# A finished entry as the table keeps it: request hash, acceptance time, record count and
# packed parts (see :meth:`AnswerTable.settle`).
SettledEntry = tuple[bytes, int, int, bytes]


def _accepted_ms(value: Entry | SettledEntry) -> int:
    return value[1] if isinstance(value, tuple) else value.accepted_ms


def _busy(value: Entry | SettledEntry) -> bool:
    return not isinstance(value, tuple) and value.busy is not None


class AnswerTable:
    """Idempotent requests of the last ``ANSWER_TTL_MS``, per topic incarnation.

    Held in memory; a topic's part is rebuilt from its partitions' producer tags the first
    time an idempotent request reaches it after a start (see :meth:`needs_rebuild`).
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: dict[tuple[str, str, str], Entry | SettledEntry] = {}
        self._rebuilt: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.max_entries = max_entries
        self.forgotten_early = 0

    def __len__(self) -> int:
        return len(self._entries)

    def rebuild_future(self, tenant: str, incarnation: str) -> asyncio.Future[None] | None:
        return self._rebuilt.get((tenant, incarnation))

    def start_rebuild(self, tenant: str, incarnation: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rebuilt[(tenant, incarnation)] = future
        return future

    def forget_rebuild(self, tenant: str, incarnation: str) -> None:
        self._rebuilt.pop((tenant, incarnation), None)

    def add_tag(
        self, tenant: str, incarnation: str, partition: int, base_offset: int, tag: ProducerTag
    ) -> None:
        entry = self.entry(tenant, incarnation, tag.key)
        if entry is None or entry.request_hash != tag.request_hash:
            entry = Entry(tag.request_hash, tag.accepted_ms, tag.total_records)
            self._entries[(tenant, incarnation, tag.key)] = entry
        entry.add_batch(partition, base_offset, tag.indexes)

    def kept_value(self, tenant: str, incarnation: str, key: str) -> Entry | SettledEntry | None:
        """What the table keeps for a key, as it keeps it: a finished entry stays the tuple
        of plain values :meth:`settle` made, not turned back into an :class:`Entry` as
        :meth:`entry` does. For looking at only."""
        return self._entries.get((tenant, incarnation, key))

    def entry(self, tenant: str, incarnation: str, key: str) -> Entry | None:
        """The entry of a key, as an object that an attempt may change."""
        composite = (tenant, incarnation, key)
        value = self._entries.get(composite)
        if value is None or isinstance(value, Entry):
            return value
        entry = self._entries[composite] = Entry(*value)
        return entry

    def settle(self, tenant: str, incarnation: str, key: str, entry: Entry) -> None:
        """An attempt ended: keep a finished entry as a tuple of plain values, which the
        garbage collector stops tracking (the table holds ten minutes of requests, and
        every full collection walked each entry object: pauses of 10 ms and more)."""
        composite = (tenant, incarnation, key)
        if self._entries.get(composite) is entry and entry.busy is None and not entry.unsure:
            self._entries[composite] = (
                entry.request_hash,
                entry.accepted_ms,
                entry.total_records,
                entry.packed_parts,
            )

    def claim(
        self,
        tenant: str,
        incarnation: str,
        key: str,
        request_hash: bytes,
        total_records: int,
        *,
        now_ms: int,
    ) -> Entry:
        """The entry of a request, made when new (or when the old one expired)."""
        self.expire(now_ms)
        value = self._entries.get((tenant, incarnation, key))
        # A finished request's answer is read from a copy; the table keeps the tuple.
        entry = Entry(*value) if isinstance(value, tuple) else value
        if entry is not None and entry.busy is None and entry.accepted_ms + ANSWER_TTL_MS <= now_ms:
            entry = None  # expired: the key may be used again
        if entry is not None and entry.request_hash != request_hash:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used for a different request in the last "
                f"{ANSWER_TTL_MS // 60000} minutes; use a new key for new records",
                idempotency_key=key,
            )
        if entry is None:
            entry = Entry(request_hash, now_ms, total_records)
            self._entries.pop((tenant, incarnation, key), None)
            self._make_room()
            self._entries[(tenant, incarnation, key)] = entry
        elif entry.total_records != total_records:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used for a request with another record count",
                idempotency_key=key,
            )
        elif isinstance(value, tuple) and not entry.complete:
            self._entries[(tenant, incarnation, key)] = entry  # an attempt will change it
        return entry

    def expire(self, now_ms: int) -> int:
        """Drop answers older than the TTL; entries are kept in acceptance order."""
        entries = self._entries
        if not entries or _accepted_ms(next(iter(entries.values()))) + ANSWER_TTL_MS > now_ms:
            return 0  # the oldest is still kept (every request asks: no list made for it)
        dropped = 0
        for composite, value in self._iter_oldest():
            if _accepted_ms(value) + ANSWER_TTL_MS > now_ms:
                break
            if not _busy(value):
                del self._entries[composite]
                dropped += 1
        return dropped

    def discard(self, tenant: str, incarnation: str, key: str, entry: Entry) -> None:
        """Forget ``entry`` (an attempt that wrote nothing), so that the key is free."""
        if self._entries.get((tenant, incarnation, key)) is entry and entry.busy is None:
            del self._entries[(tenant, incarnation, key)]

    def _make_room(self) -> None:
        while len(self._entries) >= self.max_entries:
            for composite, value in self._iter_oldest():
                if not _busy(value):
                    del self._entries[composite]
                    self.forgotten_early += 1
                    break
            else:
                return  # every one of the oldest is still running: let the table grow

    def _iter_oldest(self) -> list[tuple[tuple[str, str, str], Entry | SettledEntry]]:
        # A few at a time: each request does a little of the sweeping.
        return list(itertools.islice(self._entries.items(), 64))

    def drop_topic(self, tenant: str, incarnation: str) -> None:
        for composite in [k for k in self._entries if k[:2] == (tenant, incarnation)]:
            del self._entries[composite]
        self._rebuilt.pop((tenant, incarnation), None)
