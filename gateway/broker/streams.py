"""Long-lived streams of the broker, as sequences of events that a front door frames and sends
(the HTTP API sends them as server-sent events, ``gateway/http/events.py``):

- :class:`PartitionFollower`: a partition's records from a position on, and once the
  partition is sealed and read to its end, its children's, so that every key's records come
  in order across splits and merges;
- :class:`GroupStream`: one member of a consumer group for the stream's lifetime, fetching
  its assignment's records;
- :class:`TopicWatch`: a topic's changes (splits, merges, seals, config) and its throughput.

Each yields :data:`IDLE` whenever a wait of at most :data:`POLL_S` found nothing, so that the
caller gets control back often enough to send a keepalive, notice that its client went away,
end at a deadline or at shutdown. A stream's position is a :class:`Cursor`, the next offset to
read in each partition it follows, which a client hands back to resume exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final, cast

from gateway.broker.service import Broker
from gateway.broker.views import TopicView
from partitions.batch import Record
from partitions.errors import (
    EventBusError,
    OffsetOutOfRangeError,
    PartitionNotFoundError,
    TopicNotFoundError,
)
from partitions.group_model import UnknownMemberError
from partitions.log.values import ReadResult

# The longest a stream waits without giving its caller control back.
POLL_S: Final = 1.0
# Records read at a time: a stream sends them one event each, so a read need not be large.
READ_RECORDS: Final = 500
READ_BYTES: Final = 1024 * 1024
# How often a topic watch looks whether its topic changed (a look is a dictionary lookup).
TOPIC_LOOK_S: Final = 0.25
# The most partitions a cursor may name (a topic split many times over still fits).
MAX_CURSOR_PARTITIONS: Final = 1024

_POSITION = re.compile(r"([0-9]{1,10})-([0-9]{1,19})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a stream is: the next offset to read in each partition it follows, written
    ``PID-OFFSET`` per partition joined by ``.`` (``3-120``, ``4-17.5-9``)."""

    positions: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, positions: Mapping[int, int]) -> Cursor:
        return cls(tuple(sorted(positions.items())))

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor ``text`` writes; ValueError when it is not one."""
        parts = text.strip().split(".")
        if len(parts) > MAX_CURSOR_PARTITIONS:
            raise ValueError(f"a cursor names at most {MAX_CURSOR_PARTITIONS} partitions")
        positions: dict[int, int] = {}
        for part in parts:
            found = _POSITION.fullmatch(part)
            if found is None:
                raise ValueError("a cursor is PARTITION-OFFSET pairs joined by '.', as '3-120'")
            partition, offset = int(found[1]), int(found[2])
            if partition in positions:
                raise ValueError(f"the cursor names partition {partition} twice")
            positions[partition] = offset
        return cls.of(positions)

    def as_dict(self) -> dict[int, int]:
        return dict(self.positions)

    def __str__(self) -> str:
        return ".".join(f"{pid}-{offset}" for pid, offset in self.positions)


class Idle:
    """Nothing came during a wait: the caller may send a keepalive, or end."""


IDLE: Final = Idle()


@dataclass(frozen=True, slots=True)
class RecordEvent:
    partition: int
    record: Record
    # Where the stream is once this record was seen.
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class SealedEvent:
    """A followed partition was sealed and read to its end; its children follow now."""

    partition: int
    end_offset: int
    children: tuple[int, ...]
    cursor: Cursor


PartitionEvent = RecordEvent | SealedEvent | Idle


class PartitionFollower:
    """A partition's records from a position on (or a cursor's partitions from theirs), then,
    with ``follow_children``, each sealed partition's children once it is read to its end.

    A child is followed once none of its parents is followed any more: the children of a
    split start when their parent is drained, and the child of a merge when both parents
    are, so a key's records come in the order they were appended. :meth:`start` checks
    the position (answering the usual errors) before anything is sent.
    """

    def __init__(
        self, broker: Broker, tenant: str, topic: str, *, follow_children: bool = True
    ) -> None:
        self._broker = broker
        self._tenant = tenant
        self._topic = topic
        self._follow_children = follow_children
        self._positions: dict[int, int] = {}

    @property
    def cursor(self) -> Cursor:
        return Cursor.of(self._positions)

    async def start(
        self,
        *,
        partition: int,
        offset: int | None = None,
        timestamp_ms: int | None = None,
        resume: Cursor | None = None,
    ) -> Cursor:
        """Where the stream starts: ``resume`` (a client's cursor), else ``offset``, the
        first record at or after ``timestamp_ms``, or the partition's start."""
        view = await self._broker.view(self._tenant, self._topic)
        wanted = resume.as_dict() if resume is not None else {partition: offset}
        for pid, given in wanted.items():
            if pid not in view.partitions:
                raise PartitionNotFoundError(
                    f"topic {self._topic!r} has no partition {pid}", partition=pid
                )
            stats = await self._broker.worker.stats(view.key(pid))
            if given is None and timestamp_ms is not None:
                found = await self._broker.worker.offset_for_timestamp(view.key(pid), timestamp_ms)
                given = stats.end_offset if found is None else found
            if given is None:
                given = stats.start_offset
            if given > stats.end_offset:
                raise OffsetOutOfRangeError(
                    f"offset {given} of partition {pid} is past its end {stats.end_offset}",
                    partition=pid,
                    offset=given,
                    end_offset=stats.end_offset,
                )
            # Below the start, retention removed the records: the stream starts at the first.
            self._positions[pid] = max(given, stats.start_offset)
        return self.cursor

    async def events(self) -> AsyncIterator[PartitionEvent]:
        """Records and seals, in order; ends when nothing is left to follow."""
        while self._positions:
            progressed = False
            # Logs sealed whose catalog news has not come yet: no data can come, so no wait.
            settling = False
            for pid in list(self._positions):
                answer = await self._broker.read(
                    self._tenant,
                    self._topic,
                    pid,
                    offset=self._positions[pid],
                    timestamp_ms=None,
                    max_records=READ_RECORDS,
                    max_bytes=READ_BYTES,
                    wait_ms=0,
                )
                result = cast(ReadResult, answer.result)  # decoded: raw was not asked for
                records = result.records
                for record in records:
                    self._positions[pid] = record.offset + 1
                    yield RecordEvent(pid, record, self.cursor)
                if records:
                    progressed = True
                    continue
                self._positions[pid] = max(self._positions[pid], result.next_offset)
                end = answer.partition.end_offset
                if answer.partition.active or end is None:
                    settling = settling or result.sealed
                    continue
                if self._positions[pid] < end:
                    continue  # sealed, but records are still to be read
                yield await self._drained(pid, end, answer.partition.children)
                progressed = True
            if not progressed and self._positions:
                if settling:
                    await asyncio.sleep(TOPIC_LOOK_S)
                else:
                    await self._broker.reader.wait_for_any(
                        self._tenant, self._topic, self._positions, POLL_S
                    )
                yield IDLE

    async def _drained(self, pid: int, end: int, children: tuple[int, ...]) -> SealedEvent:
        """Stop following ``pid``; follow its children whose parents are all drained."""
        del self._positions[pid]
        if self._follow_children and children:
            view = await self._broker.view(self._tenant, self._topic)
            for child in children:
                record = view.partitions.get(child)
                if record is None or child in self._positions:
                    continue
                if any(parent in self._positions for parent in record.parents):
                    continue  # the other parent of a merge is still being read
                stats = await self._broker.worker.stats(view.key(child))
                self._positions[child] = stats.start_offset
        return SealedEvent(pid, end, children, self.cursor)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """The stream's member and its assignment (first, then whenever they change)."""

    member_id: str
    generation: int
    assignment: tuple[int, ...]


GroupEvent = RecordEvent | MemberEvent | Idle


class GroupStream:
    """One member of a consumer group for as long as the stream lasts.

    With ``auto_commit``, what the previous fetch delivered is committed when the next one
    starts, that is once the stream has sent it (at least once); without, the client
    commits by hand. A client that resumes with a cursor (``seen``) has that cursor
    committed for the group before the member joins, so that nothing it saw is delivered
    again and nothing it did not see is skipped. :meth:`close` leaves the group.
    """

    def __init__(
        self,
        broker: Broker,
        tenant: str,
        topic: str,
        group: str,
        *,
        auto_commit: bool,
        auto_offset_reset: str,
        session_timeout_ms: int | None,
    ) -> None:
        self._broker = broker
        self._tenant = tenant
        self._topic = topic
        self._group = group
        self._auto_commit = auto_commit
        self._reset = auto_offset_reset
        self._session_timeout_ms = session_timeout_ms
        self._sent: dict[int, int] = {}
        self.member_id: str | None = None

    async def start(self, seen: Cursor | None) -> None:
        """Check the topic (the usual errors before anything is sent) and commit ``seen``."""
        shape = await self._broker.shape(self._tenant, self._topic)
        if seen is not None:
            await self._broker.groups.commit_seen(shape, self._group, seen.as_dict(), self._reset)
            self._sent = seen.as_dict()

    async def events(self) -> AsyncIterator[GroupEvent]:
        last: MemberEvent | None = None
        while True:
            shape = await self._broker.shape(self._tenant, self._topic)
            try:
                result = await self._broker.groups.fetch(
                    shape,
                    self._group,
                    member_id=self.member_id,
                    max_records=READ_RECORDS,
                    max_bytes=READ_BYTES,
                    wait_ms=int(POLL_S * 1000),
                    auto_commit=self._auto_commit,
                    session_timeout_ms=self._session_timeout_ms,
                    auto_offset_reset=self._reset,
                )
            except UnknownMemberError:
                # The session ran out (a client slower than its timeout): join again.
                self.member_id = None
                continue
            self.member_id = result.member_id
            member = MemberEvent(result.member_id, result.generation, tuple(result.assignment))
            if member != last:
                last = member
                yield member
            for pid, record in result.records:
                self._sent[pid] = record.offset + 1
                yield RecordEvent(pid, record, Cursor.of(self._sent))
            if not result.records:
                yield IDLE

    async def close(self, *, commit: bool) -> None:
        """Leave the group; with ``commit`` (and auto_commit), commit what was sent last."""
        if self.member_id is None:
            return
        with contextlib.suppress(EventBusError):
            shape = await self._broker.shape(self._tenant, self._topic)
            await self._broker.groups.leave(shape, self._group, self.member_id, commit=commit)
        self.member_id = None


@dataclass(frozen=True, slots=True)
class TopicChanged:
    """The topic as it is now (first, then after every change)."""

    view: TopicView
    change: int


@dataclass(frozen=True, slots=True)
class PartitionRate:
    partition: int
    bytes_per_s: float
    records_per_s: float
    end_offset: int


@dataclass(frozen=True, slots=True)
class Throughput:
    ts_ms: int
    partitions: tuple[PartitionRate, ...]


class TopicDeleted:
    """The topic was deleted: the watch ends."""


TopicEvent = TopicChanged | Throughput | TopicDeleted | Idle


@dataclass(frozen=True, slots=True)
class _Sample:
    at_s: float
    end_offset: int
    size_bytes: int


class TopicWatch:
    """A topic's changes, and every ``interval_s`` the throughput of its active partitions
    (records and bytes appended per second since the last tick)."""

    def __init__(self, broker: Broker, tenant: str, topic: str, *, interval_s: float) -> None:
        self._broker = broker
        self._tenant = tenant
        self._topic = topic
        self._interval_s = interval_s
        self._samples: dict[int, _Sample] = {}

    async def start(self) -> TopicView:
        """The topic now (404 for an unknown one, before anything is sent)."""
        return await self._broker.view(self._tenant, self._topic)

    async def events(self) -> AsyncIterator[TopicEvent]:
        loop = asyncio.get_running_loop()
        view = await self._broker.view(self._tenant, self._topic)
        incarnation = view.record.incarnation
        shown = _signature(view)
        yield TopicChanged(view, change_count(view))
        await self._throughput(view)  # the first sample: rates start at the next tick
        next_tick = loop.time() + self._interval_s
        while True:
            await asyncio.sleep(max(0.0, min(TOPIC_LOOK_S, next_tick - loop.time())))
            current = self._broker.views.get(self._tenant, self._topic)
            if current is None:
                try:
                    current = await self._broker.view(self._tenant, self._topic)
                except TopicNotFoundError:
                    yield TopicDeleted()
                    return
            if current.record.incarnation != incarnation:
                yield TopicDeleted()  # deleted, and a topic of the same name made since
                return
            if _signature(current) != shown:
                shown = _signature(current)
                yield TopicChanged(current, change_count(current))
            if loop.time() >= next_tick:
                next_tick += self._interval_s
                yield await self._throughput(current)
            else:
                yield IDLE

    async def _throughput(self, view: TopicView) -> Throughput:
        now = asyncio.get_running_loop().time()
        rates = []
        for pid, partition in sorted(view.partitions.items()):
            if not partition.active:
                self._samples.pop(pid, None)
                continue
            stats = await self._broker.worker.stats(view.key(pid))
            sample = _Sample(now, stats.end_offset, stats.size_bytes)
            before = self._samples.get(pid, sample)
            self._samples[pid] = sample
            elapsed = now - before.at_s
            records = bytes_ = 0.0
            if elapsed > 0:
                records = (sample.end_offset - before.end_offset) / elapsed
                # Retention shrinks a log: a rate is never below zero.
                bytes_ = max(0, sample.size_bytes - before.size_bytes) / elapsed
            rates.append(PartitionRate(pid, round(bytes_, 1), round(records, 1), stats.end_offset))
        return Throughput(self._broker.now_ms(), tuple(rates))


def change_count(view: TopicView) -> int:
    """A number that every change of the topic raises: the versions of its catalog rows
    (a config change raises the topic's, a split or merge its parents' and adds rows)."""
    return view.record.version + sum(p.version for p in view.partitions.values())


def _signature(view: TopicView) -> tuple[object, ...]:
    """What a change of the topic changes: its rows' versions, config and partitions."""
    return (
        change_count(view),
        tuple(sorted(view.record.config.items())),
        tuple((pid, p.state, p.end_offset) for pid, p in sorted(view.partitions.items())),
    )
