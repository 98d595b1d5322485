"""The byte layout of one write-ahead-log object, and its key.

A node's WAL is a series of objects ``wal/<node>/<session>/<seq:020d>``, each holding the
entries of every partition the node appended to during one flush interval.
``docs/wire-format.md`` describes the layout for readers of the bucket; the ``struct.Struct``
definitions below are the authority. Every integer is big-endian; every CRC is CRC-32C (Castagnoli).

::

    header    magic "EBWL", version u16, seq u64, node_len u16, session_len u16,
              node (UTF-8), session (UTF-8)
    entries   back to back, each: crc u32 (of every byte of the entry after it),
              tenant_len u16, incarnation_len u16, partition u32, epoch u64,
              base_offset u64, data_len u32, tenant, incarnation, data (stored batches)
    footer    seq u64, node_len u16, session_len u16, entry_count u32, node, session, then
              per entry: tenant_len u16, incarnation_len u16, partition u32, epoch u64,
              base_offset u64, last_offset u64, position u64, length u32, tenant,
              incarnation (``position`` and ``length`` span the whole entry, crc included)
    trailer   footer_position u64, footer_length u32, footer_crc u32, object_crc u32,
              magic "EBWL" (24 bytes: always the object's last ones)

``object_crc`` covers every byte of the object before it. A reader that wants a few
partitions reads the trailer, then the footer (checked by ``footer_crc`` and against the
key's node, session and seq), then only the entries it needs (each checked by its own CRC).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c

from partitions.batch import BATCH_HEADER, read_header
from partitions.durability import WalEntry
from partitions.errors import CorruptLogError
from partitions.partition_key import PartitionKey

MAGIC = b"EBWL"
WAL_FORMAT_VERSION = 1
WAL_PREFIX = "wal"

HEADER = struct.Struct(">4sHQHH")
ENTRY_HEADER = struct.Struct(">IHHIQQI")
ENTRY_CRC = struct.Struct(">I")
FOOTER_HEADER = struct.Struct(">QHHI")
INDEX_ENTRY = struct.Struct(">HHIQQQQI")
TRAILER = struct.Struct(">QIII4s")
# The trailer's fields that object_crc does not cover: itself and the closing magic.
_TRAILER_UNCOVERED = struct.calcsize(">I4s")

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


class WalCorruptError(CorruptLogError):
    """A WAL object's bytes fail their checks (CRC, magic, lengths, or a footer that does
    not match its key or its entries)."""

    code = "corrupt_wal"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One entry as the footer lists it: where it is and which offsets it holds."""

    partition: PartitionKey
    epoch: int
    base_offset: int
    last_offset: int
    position: int
    length: int

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


@dataclass(frozen=True, slots=True)
class Footer:
    node: str
    session: str
    seq: int
    entries: tuple[IndexEntry, ...]


@dataclass(frozen=True, slots=True)
class Trailer:
    footer_position: int
    footer_length: int
    footer_crc: int
    object_crc: int


@dataclass(frozen=True, slots=True)
class WalObject:
    """A whole object, decoded and checked."""

    node: str
    session: str
    seq: int
    entries: tuple[WalEntry, ...]


# --- keys --------------------------------------------------------------------------------


def _check_name(what: str, name: str) -> bytes:
    raw = name.encode()
    if not name or "/" in name or name.startswith(".") or "\0" in name or len(raw) > _U16:
        raise ValueError(f"not a valid WAL {what}: {name!r}")
    return raw


def session_prefix(node: str, session: str) -> str:
    _check_name("node id", node)
    _check_name("session id", session)
    return f"{WAL_PREFIX}/{node}/{session}/"


def wal_key(node: str, session: str, seq: int) -> str:
    return f"{session_prefix(node, session)}{seq:020d}"


def parse_wal_key(key: str) -> tuple[str, str, int] | None:
    """(node, session, seq) of a WAL object key, or None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != WAL_PREFIX:
        return None
    _, node, session, name = parts
    if len(name) != 20 or not name.isdigit() or not node or not session:
        return None
    return node, session, int(name)


# --- encoding ----------------------------------------------------------------------------


def _last_offset(entry: WalEntry) -> int:
    """The entry's last offset, checking that its data is whole batches from its base."""
    data = entry.data
    if len(data) < BATCH_HEADER.size:
        raise ValueError("a WAL entry holds at least one whole batch")
    pos = 0
    expected = entry.base_offset
    while pos < len(data):
        if pos + BATCH_HEADER.size > len(data):
            raise ValueError("a WAL entry's data ends inside a batch header")
        header = read_header(data, pos)
        if header.base_offset != expected or header.record_count < 1:
            raise ValueError(
                f"a WAL entry's batch at {pos} starts at offset {header.base_offset}, "
                f"not {expected}"
            )
        pos += header.total_size
        expected = header.next_offset
    if pos != len(data):
        raise ValueError("a WAL entry's data ends inside a batch")
    return expected - 1


def check_entry(entry: WalEntry) -> int:
    """Refuse (``ValueError``) an entry that an object cannot hold; answer its last offset."""
    _check_name("tenant", entry.tenant)
    _check_name("incarnation", entry.incarnation)
    if not 0 <= entry.partition_id <= _U32 or len(entry.data) > _U32:
        raise ValueError("a WAL entry's partition id or size is out of range")
    if not 0 <= entry.epoch < 2**64 or not 0 <= entry.base_offset < 2**63:
        raise ValueError("a WAL entry's epoch or base offset is out of range")
    return _last_offset(entry)


def encode_object(node: str, session: str, seq: int, entries: Sequence[WalEntry]) -> bytes:
    """The bytes of WAL object ``seq`` of ``node``'s ``session`` holding ``entries``."""
    node_raw = _check_name("node id", node)
    session_raw = _check_name("session id", session)
    if not 0 <= seq < 2**64:
        raise ValueError(f"a WAL seq is a u64, not {seq}")
    out = bytearray(HEADER.pack(MAGIC, WAL_FORMAT_VERSION, seq, len(node_raw), len(session_raw)))
    out += node_raw
    out += session_raw
    index = bytearray()
    for entry in entries:
        last = check_entry(entry)
        tenant = entry.tenant.encode()
        incarnation = entry.incarnation.encode()
        position = len(out)
        body = bytearray(
            ENTRY_HEADER.pack(
                0,
                len(tenant),
                len(incarnation),
                entry.partition_id,
                entry.epoch,
                entry.base_offset,
                len(entry.data),
            )
        )
        body += tenant
        body += incarnation
        body += entry.data
        ENTRY_CRC.pack_into(body, 0, crc32c.crc32c(memoryview(body)[ENTRY_CRC.size :]))
        out += body
        index += INDEX_ENTRY.pack(
            len(tenant),
            len(incarnation),
            entry.partition_id,
            entry.epoch,
            entry.base_offset,
            last,
            position,
            len(body),
        )
        index += tenant
        index += incarnation
    footer_position = len(out)
    footer = bytearray(FOOTER_HEADER.pack(seq, len(node_raw), len(session_raw), len(entries)))
    footer += node_raw
    footer += session_raw
    footer += index
    out += footer
    footer_crc = crc32c.crc32c(footer)
    out += TRAILER.pack(footer_position, len(footer), footer_crc, 0, MAGIC)[
        : TRAILER.size - _TRAILER_UNCOVERED
    ]
    object_crc = crc32c.crc32c(out)
    out += struct.pack(">I4s", object_crc, MAGIC)
    return bytes(out)


# --- decoding ----------------------------------------------------------------------------


def parse_trailer(trailer: bytes, object_size: int) -> Trailer:
    """The trailer (the object's last :data:`TRAILER` ``.size`` bytes), checked against the
    object's size."""
    if len(trailer) != TRAILER.size or object_size < HEADER.size + TRAILER.size:
        raise WalCorruptError("a WAL object too short for its header and trailer")
    position, length, footer_crc, object_crc, magic = TRAILER.unpack(trailer)
    if magic != MAGIC:
        raise WalCorruptError("a WAL object's trailer has the wrong magic")
    if position < HEADER.size or position + length + TRAILER.size != object_size:
        raise WalCorruptError("a WAL object's footer position and length do not add up")
    return Trailer(position, length, footer_crc, object_crc)


def _names(buf: bytes, pos: int, lengths: tuple[int, ...]) -> tuple[list[str], int]:
    names = []
    for length in lengths:
        if pos + length > len(buf):
            raise WalCorruptError("a WAL name runs past its end")
        try:
            names.append(buf[pos : pos + length].decode())
        except UnicodeDecodeError:
            raise WalCorruptError("a WAL name is not UTF-8") from None
        pos += length
    return names, pos


def parse_footer(footer: bytes, trailer: Trailer) -> Footer:
    """The footer's bytes, checked by the trailer's CRC and for lengths that add up."""
    if len(footer) != trailer.footer_length or crc32c.crc32c(footer) != trailer.footer_crc:
        raise WalCorruptError("a WAL object's footer fails its CRC")
    if len(footer) < FOOTER_HEADER.size:
        raise WalCorruptError("a WAL footer too short for its header")
    seq, node_len, session_len, count = FOOTER_HEADER.unpack_from(footer)
    (node, session), pos = _names(footer, FOOTER_HEADER.size, (node_len, session_len))
    entries = []
    end_of_entries = HEADER.size + node_len + session_len
    for _ in range(count):
        if pos + INDEX_ENTRY.size > len(footer):
            raise WalCorruptError("a WAL footer lists more entries than it holds")
        t_len, i_len, pid, epoch, base, last, position, length = INDEX_ENTRY.unpack_from(
            footer, pos
        )
        (tenant, incarnation), pos = _names(footer, pos + INDEX_ENTRY.size, (t_len, i_len))
        if position != end_of_entries or last < base:
            raise WalCorruptError("a WAL footer's entries are not back to back")
        end_of_entries = position + length
        entries.append(
            IndexEntry(PartitionKey(tenant, incarnation, pid), epoch, base, last, position, length)
        )
    if pos != len(footer) or end_of_entries != trailer.footer_position:
        raise WalCorruptError("a WAL footer's lengths do not add up")
    return Footer(node, session, seq, tuple(entries))


def parse_entry(buf: bytes | memoryview, index: IndexEntry) -> WalEntry:
    """The entry that ``index`` lists, from exactly its bytes, checked by its CRC and
    against the index."""
    view = memoryview(buf)
    if len(view) != index.length or len(view) < ENTRY_HEADER.size:
        raise WalCorruptError("a WAL entry is cut short")
    crc, t_len, i_len, pid, epoch, base, data_len = ENTRY_HEADER.unpack_from(view)
    if crc32c.crc32c(view[ENTRY_CRC.size :]) != crc:
        raise WalCorruptError("a WAL entry fails its CRC")
    raw = bytes(view[ENTRY_HEADER.size :])
    (tenant, incarnation), pos = _names(raw, 0, (t_len, i_len))
    if pos + data_len != len(raw):
        raise WalCorruptError("a WAL entry's lengths do not add up")
    entry = WalEntry(PartitionKey(tenant, incarnation, pid), epoch, base, raw[pos:])
    try:
        last = _last_offset(entry)
    except ValueError as exc:
        raise WalCorruptError(f"a WAL entry's batches are broken: {exc}") from None
    if (entry.partition, epoch, base, last) != (
        index.partition,
        index.epoch,
        index.base_offset,
        index.last_offset,
    ):
        raise WalCorruptError("a WAL entry does not match its footer")
    return entry


def check_identity(footer: Footer, node: str, session: str, seq: int) -> None:
    if (footer.node, footer.session, footer.seq) != (node, session, seq):
        raise WalCorruptError(
            f"a WAL object of {footer.node}/{footer.session}/{footer.seq} is stored as "
            f"{node}/{session}/{seq}"
        )


def decode_object(data: bytes) -> WalObject:
    """Every entry of a whole object, after checking all of it: the object CRC, the header,
    the footer and each entry."""
    if len(data) < HEADER.size + TRAILER.size:
        raise WalCorruptError("a WAL object too short for its header and trailer")
    trailer = parse_trailer(data[-TRAILER.size :], len(data))
    if crc32c.crc32c(memoryview(data)[: len(data) - _TRAILER_UNCOVERED]) != trailer.object_crc:
        raise WalCorruptError("a WAL object fails its CRC")
    magic, version, seq, node_len, session_len = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WalCorruptError("not a WAL object: wrong magic")
    if version != WAL_FORMAT_VERSION:
        raise WalCorruptError(f"unknown WAL format version {version}")
    (node, session), _ = _names(data, HEADER.size, (node_len, session_len))
    footer_end = trailer.footer_position + trailer.footer_length
    footer = parse_footer(data[trailer.footer_position : footer_end], trailer)
    check_identity(footer, node, session, seq)
    entries = tuple(
        parse_entry(memoryview(data)[i.position : i.position + i.length], i) for i in footer.entries
    )
    return WalObject(node, session, seq, entries)
