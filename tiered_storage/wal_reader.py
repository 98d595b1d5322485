"""Reading a session's write-ahead log back: a partition's replay after a takeover, and
deleting the objects every partition has uploaded past.

Both read only what they need: for each object, the trailer (its last 24 bytes), then the
footer by ranged gets; a replay then reads just the entries of its partition.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from partitions.durability import WalEntry
from partitions.partition_key import PartitionKey
from tiered_storage.objects import ObjectStore
from tiered_storage.wal_format import (
    TRAILER,
    Footer,
    WalCorruptError,
    check_identity,
    parse_entry,
    parse_footer,
    parse_trailer,
    parse_wal_key,
    session_prefix,
)


@dataclass(frozen=True, slots=True)
class SessionObject:
    """One WAL object of a session, as its listing names it."""

    key: str
    seq: int
    size: int


async def list_session(store: ObjectStore, node: str, session: str) -> list[SessionObject]:
    """The session's WAL objects in seq order (keys that are not WAL objects left out)."""
    found = []
    for info in await store.list(session_prefix(node, session)):
        parsed = parse_wal_key(info.key)
        if parsed is not None and parsed[:2] == (node, session):
            found.append(SessionObject(info.key, parsed[2], info.size))
    return sorted(found, key=lambda o: o.seq)


async def read_footer(store: ObjectStore, node: str, session: str, obj: SessionObject) -> Footer:
    """The object's footer, by two ranged gets, checked (CRC, lengths, and that it names
    the node, session and seq its key does)."""
    if obj.size < TRAILER.size:
        raise WalCorruptError(f"WAL object {obj.key} is {obj.size} bytes")
    trailer = parse_trailer(await store.get(obj.key, obj.size - TRAILER.size, obj.size), obj.size)
    start = trailer.footer_position
    raw = await store.get(obj.key, start, start + trailer.footer_length)
    footer = parse_footer(raw, trailer)
    check_identity(footer, node, session, obj.seq)
    return footer


class ReplayStop(enum.Enum):
    """Why a replay ended."""

    #: Every object of the session was read; the partition's entries in it are all there.
    END = "end"
    #: An entry of the partition starts past the offset the replay had reached.
    GAP = "gap"
    #: An object, or one of the partition's entries in it, fails its checks.
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    stop: ReplayStop
    #: The offset after the last entry yielded (the start offset when none was).
    next_offset: int
    #: The object where the replay stopped (None at END).
    key: str | None = None
    detail: str = ""


class PartitionReplay:
    """One partition's entries in a session's WAL, from ``from_offset`` on.

    Iterating yields, in seq order, the entries that continue the partition from
    ``from_offset``: each starts at or before the offset reached so far and ends past it
    (so the first may begin before ``from_offset`` when that falls inside a batch; every
    later one starts exactly where the previous ended). Entries wholly below the offset
    reached are skipped. It stops at the first entry that starts past the offset reached
    (a gap) or the first object that fails its checks, and then :attr:`outcome` says which.
    A store that cannot be read raises its error: nothing is decided then.
    """

    def __init__(
        self,
        store: ObjectStore,
        node: str,
        session: str,
        partition: PartitionKey,
        from_offset: int,
    ) -> None:
        self.store = store
        self.node = node
        self.session = session
        self.partition = partition
        self.from_offset = from_offset
        self.outcome: ReplayOutcome | None = None

    async def __aiter__(self) -> AsyncIterator[WalEntry]:
        reached = self.from_offset
        for obj in await list_session(self.store, self.node, self.session):
            try:
                footer = await read_footer(self.store, self.node, self.session, obj)
            except WalCorruptError as exc:
                self.outcome = ReplayOutcome(ReplayStop.CORRUPT, reached, obj.key, str(exc))
                return
            wanted = [
                i
                for i in footer.entries
                if i.partition == self.partition and i.next_offset > reached
            ]
            if not wanted:
                continue
            raw = await self.store.get_ranges(
                [(obj.key, i.position, i.position + i.length) for i in wanted]
            )
            pos = 0
            for index in wanted:
                if index.base_offset > reached:
                    detail = f"the WAL continues at {index.base_offset}, not {reached}"
                    self.outcome = ReplayOutcome(ReplayStop.GAP, reached, obj.key, detail)
                    return
                try:
                    entry = parse_entry(memoryview(raw)[pos : pos + index.length], index)
                except WalCorruptError as exc:
                    self.outcome = ReplayOutcome(ReplayStop.CORRUPT, reached, obj.key, str(exc))
                    return
                pos += index.length
                if index.next_offset <= reached:
                    continue  # an earlier entry of this object already got past it
                yield entry
                reached = index.next_offset
        self.outcome = ReplayOutcome(ReplayStop.END, reached)


@dataclass(frozen=True, slots=True)
class Deletion:
    deleted: list[str]
    #: The lowest seq still stored (None when none is): the session's low-water seq.
    low_water_seq: int | None


async def delete_uploaded(
    store: ObjectStore,
    node: str,
    session: str,
    uploaded_ends: Mapping[PartitionKey, int],
) -> Deletion:
    """Delete the session's WAL objects whose every entry ends at or below its partition's
    uploaded end (the offset up to which its segments are in object storage for good).

    An object with an entry of a partition not in ``uploaded_ends``, or whose footer cannot
    be read, is kept: deciding that it is no longer needed is not this function's to guess.
    """
    deleted = []
    low: int | None = None
    for obj in await list_session(store, node, session):
        try:
            footer = await read_footer(store, node, session, obj)
        except WalCorruptError:
            footer = None
        if footer is not None and all(
            i.next_offset <= uploaded_ends.get(i.partition, -1) for i in footer.entries
        ):
            await store.delete(obj.key)
            deleted.append(obj.key)
        elif low is None:
            low = obj.seq
    return Deletion(deleted, low)
