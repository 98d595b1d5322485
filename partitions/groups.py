"""Consumer-group coordination: members, assignment in lineage order, positions, commits.

A group consumes one topic. Members join by fetching; their sessions live in this process
(a restart ends them) while committed offsets live in the catalog. The rules:

- **Eligible** partitions are active or sealed-but-not-drained, and all their parents are
  drained for this group. A sealed partition is *drained* when the group's committed offset
  is at least its end offset, or when retention moved its log start past its end. So a
  child is handed out only after every parent is fully consumed, and every key's records
  come in order across splits and merges.
- Eligible partitions are spread evenly over live members, sealed ones first. A partition
  moves away from a live member only at that member's next fetch; from an expired or
  departed member it is free at once, and waiting fetches of the others wake to take it.
  Every change of ownership or membership bumps the generation.
- A member reads from its own position in each partition, starting at the committed offset
  when it takes the partition over. With ``auto_commit`` a fetch first commits what the
  member's previous fetch delivered: records are committed only after the member came back
  for more, so delivery is at least once. A commit for a partition the member does not own
  in the current generation is refused and changes nothing.
- Such an automatic commit takes effect in the group at once (assignment, drained parents,
  describe) and is written to the catalog behind the fetch, in the background, those of
  up to 0.2 s in one write: a fetch does not wait for a catalog transaction. A commit by
  hand, a leave, a seek, a group's deletion and the server's shutdown first wait for what
  is still being written. A crash can lose only automatic commits not yet written, whose
  records are then delivered again: still at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from partitions.batch import BatchBytes, Record, trim_batches
from partitions.catalog import Catalog, PartitionRecord
from partitions.errors import (
    ConflictError,
    GroupNotFoundError,
    InvalidInputError,
    InvalidOffsetError,
    StaleGenerationError,
    TopicNotFoundError,
)
from partitions.log.values import BatchRead, ReadResult
from partitions.waiting import waiting
from partitions.worker import PartitionKey, PartitionWorker

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 30_000
EARLIEST = "earliest"
LATEST = "latest"
# How often expired members are looked for, so that their partitions move promptly.
SWEEP_INTERVAL_S = 0.25
# Tries at writing a group's automatic commits before they are given up (logged).
COMMIT_WRITE_ATTEMPTS = 5
# How long automatic commits gather between two writes of a group's.
COMMIT_WRITE_PAUSE_S = 0.2


class UnknownMemberError(ConflictError):
    """The member id is not (or no longer) in the group: its session expired or it left."""

    code = "unknown_member"


class PartitionNotAssignedError(ConflictError):
    code = "partition_not_assigned"


class GroupHasMembersError(ConflictError):
    code = "group_has_members"


class InvalidSeekError(InvalidInputError):
    code = "invalid_seek"


@dataclass(frozen=True, slots=True)
class TopicShape:
    """What the coordinator needs to know of the topic right now."""

    tenant: str
    name: str
    incarnation: str
    partitions: Mapping[int, PartitionRecord]

    def key(self, partition_id: int) -> PartitionKey:
        return PartitionKey(self.tenant, self.incarnation, partition_id)


@dataclass(slots=True)
class Member:
    member_id: str
    session_timeout_ms: int
    last_seen_ms: int
    auto_commit: bool
    # Next offset to hand out, per partition this member owns.
    positions: dict[int, int] = field(default_factory=dict)
    # Positions reached by the last fetch, committed by the next one under auto_commit.
    delivered: dict[int, int] = field(default_factory=dict)
    # Fetches in progress: a member waiting in a long-poll is alive.
    busy: int = 0


@dataclass(slots=True)
class Group:
    tenant: str
    incarnation: str
    name: str
    committed: dict[int, int] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    owner: dict[int, str] = field(default_factory=dict)
    generation: int = 0
    # The highest partition id of the topic seen: a fetch whose shape has a lower one
    # began before a split or merge and answers early, so that its member sees the change.
    newest_partition: int = -1
    loaded: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Automatic commits in effect here but not yet in the catalog, and the task writing them.
    unwritten: dict[int, int] = field(default_factory=dict)
    writer: asyncio.Task[None] | None = None
    # Set to have the writer write what is left now rather than after its pause.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def assignment(self, member_id: str) -> list[int]:
        return sorted(p for p, owner in self.owner.items() if owner == member_id)


@dataclass(frozen=True, slots=True)
class RawChunk:
    """Whole stored batches of one partition; the records below ``from_offset`` were
    delivered before and are not part of this fetch."""

    partition: int
    from_offset: int
    data: BatchBytes


@dataclass(slots=True)
class Fetched:
    """What one fetch delivers: decoded records, or with ``raw`` whole stored batches."""

    records: list[tuple[int, Record]] = field(default_factory=list)
    chunks: list[RawChunk] = field(default_factory=list)
    count: int = 0
    size: int = 0

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class FetchResult:
    member_id: str
    generation: int
    assignment: list[int]
    fetched: Fetched

    @property
    def records(self) -> list[tuple[int, Record]]:
        return self.fetched.records


class GroupCoordinator:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._catalog = catalog
        self._worker = worker
        self._clock_ms = clock_ms
        self._groups: dict[tuple[str, str, str], Group] = {}
        self.stopping = asyncio.Event()

    # --- background: expire sessions --------------------------------------------------

    async def sweep_forever(self) -> None:
        """Expire members whose session ran out, and wake the others to take over."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = self._clock_ms()
            for group in list(self._groups.values()):
                if any(_expired(m, now) for m in group.members.values()):
                    async with group.lock:
                        if self._expire(group, now):
                            group.notify()

    def topic_reshaped(self, tenant: str, incarnation: str, newest_partition: int) -> None:
        """A split or merge created ``newest_partition``: waiting fetches of the topic's
        groups answer, and their members come back with the new shape."""
        for (t, i, _name), group in self._groups.items():
            if (t, i) == (tenant, incarnation):
                group.newest_partition = max(group.newest_partition, newest_partition)
                group.notify()

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        for key in [k for k in self._groups if k[0] == tenant and k[1] == incarnation]:
            self._groups.pop(key).notify()

    # --- state -------------------------------------------------------------------------

    def _joined_group(self, shape: TopicShape, name: str, member_id: str) -> Group:
        """The group of a request naming a member: members live only in memory, so a group
        that is not there has no members, and no state is made for it (requests naming
        groups nobody joined cannot grow memory)."""
        group = self._groups.get((shape.tenant, shape.incarnation, name))
        if group is None:
            raise _unknown_member(member_id, name)
        return group

    def _group(self, shape: TopicShape, name: str) -> Group:
        key = (shape.tenant, shape.incarnation, name)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(shape.tenant, shape.incarnation, name)
        return group

    async def _load(self, group: Group, shape: TopicShape) -> bool:
        """Read committed offsets from the catalog once; answers whether the group exists."""
        if group.loaded:
            return True
        try:
            stored = await self._catalog.get_group(shape.tenant, shape.name, group.name)
        except GroupNotFoundError:
            return False
        group.committed = dict(stored.offsets)
        group.loaded = True
        return True

    async def _start_new_group(self, group: Group, shape: TopicShape, reset: str) -> None:
        """A group's first fetch: start at the ends (latest) or the beginnings (earliest)."""
        offsets: dict[int, int] = {}
        if reset == LATEST:
            for pid, partition in shape.partitions.items():
                if partition.end_offset is not None:
                    offsets[pid] = partition.end_offset  # sealed: drained from the start
                else:
                    offsets[pid] = (await self._worker.stats(shape.key(pid))).end_offset
        stored = await self._catalog.commit_offsets(shape.tenant, shape.name, group.name, offsets)
        group.committed = dict(stored.offsets)
        group.loaded = True

    def _expire(self, group: Group, now: int) -> bool:
        gone = [mid for mid, m in group.members.items() if _expired(m, now)]
        for member_id in gone:
            log.info("group %s: member %s expired", group.name, member_id)
            self._remove(group, member_id)
        return bool(gone)

    def _remove(self, group: Group, member_id: str) -> None:
        group.members.pop(member_id, None)
        for pid in [p for p, owner in group.owner.items() if owner == member_id]:
            del group.owner[pid]
        group.generation += 1

    async def _drained(self, group: Group, shape: TopicShape, partition: PartitionRecord) -> bool:
        if partition.end_offset is None:
            return False
        if group.committed.get(partition.partition_id, -1) >= partition.end_offset:
            return True
        stats = await self._worker.stats(shape.key(partition.partition_id))
        return stats.start_offset >= partition.end_offset

    async def _eligible(self, group: Group, shape: TopicShape) -> list[int]:
        """Eligible partitions, sealed ones first (they block their children)."""
        drained = {
            pid for pid, p in shape.partitions.items() if await self._drained(group, shape, p)
        }
        eligible = [
            pid
            for pid, p in shape.partitions.items()
            if pid not in drained and all(parent in drained for parent in p.parents)
        ]
        return sorted(eligible, key=lambda pid: (shape.partitions[pid].active, pid))

    async def _rebalance_for(self, group: Group, shape: TopicShape, member: Member) -> None:
        """Move partitions to or from ``member`` only; others change at their own fetch."""
        group.newest_partition = max(group.newest_partition, max(shape.partitions, default=-1))
        eligible = await self._eligible(group, shape)
        before = dict(group.owner)
        for pid in [p for p in group.owner if p in shape.partitions and p not in eligible]:
            # Drained: nobody needs it any more. A partition this shape does not know is
            # newer than it (a fetch that started before a split): it stays with its owner.
            del group.owner[pid]
        members = sorted(group.members)
        base, extra = divmod(len(eligible), len(members))
        quota = base + (1 if members.index(member.member_id) < extra else 0)
        # Siblings (children of one split) go to different members where they can, so that
        # a split spreads the reading too.
        mine = [p for p in eligible if group.owner.get(p) == member.member_id]
        if len(mine) > quota:
            kept: list[int] = []
            while len(kept) < quota:  # sealed ones first: they hold their children back
                pid = min(
                    mine,
                    key=lambda p: (
                        shape.partitions[p].active,
                        _siblings_held(shape, kept, p),
                        mine.index(p),
                    ),
                )
                mine.remove(pid)
                kept.append(pid)
            for pid in mine:
                del group.owner[pid]
            mine = kept
        free = [p for p in eligible if p not in group.owner]
        while len(mine) < quota and free:
            pid = min(free, key=lambda p: (_siblings_held(shape, mine, p), free.index(p)))
            free.remove(pid)
            group.owner[pid] = member.member_id
            mine.append(pid)
        for pid in list(member.positions):
            if group.owner.get(pid) != member.member_id:
                del member.positions[pid]
                member.delivered.pop(pid, None)
        for pid in mine:
            if pid not in member.positions:
                member.positions[pid] = group.committed.get(pid, 0)
        if group.owner != before:
            group.generation += 1
            group.notify()

    # --- fetch -------------------------------------------------------------------------

    async def fetch(
        self,
        shape: TopicShape,
        name: str,
        *,
        member_id: str | None,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        auto_commit: bool | None,
        session_timeout_ms: int | None,
        auto_offset_reset: str,
        raw: bool = False,
    ) -> FetchResult:
        """Join (``member_id=None``) or continue, and fetch from the member's partitions.

        ``auto_commit`` and ``session_timeout_ms`` stay as the member last set them when
        a fetch leaves them out (defaults: true, 30 s).
        """
        if member_id is None:
            group = self._group(shape, name)
        else:
            group = self._joined_group(shape, name, member_id)
        async with group.lock:
            now = self._clock_ms()
            self._expire(group, now)
            if member_id is None:
                # Only a joining fetch makes a new group: a refused one changes nothing.
                if not await self._load(group, shape):
                    await self._start_new_group(group, shape, auto_offset_reset)
                member = Member(
                    uuid.uuid4().hex,
                    DEFAULT_SESSION_TIMEOUT_MS
                    if session_timeout_ms is None
                    else session_timeout_ms,
                    now,
                    True if auto_commit is None else auto_commit,
                )
                group.members[member.member_id] = member
                group.generation += 1
                group.notify()
            else:
                found = group.members.get(member_id)
                if found is None:
                    raise _unknown_member(member_id, name)
                member = found
                member.last_seen_ms = now
                if session_timeout_ms is not None:
                    member.session_timeout_ms = session_timeout_ms
                if auto_commit is not None:
                    member.auto_commit = auto_commit
            if member.auto_commit and member.delivered:
                self._commit_behind(group, shape, member)
            await self._rebalance_for(group, shape, member)
            member.busy += 1
        try:
            records = await self._read_or_wait(
                group, shape, member, max_records, max_bytes, wait_ms, raw
            )
        finally:
            member.busy -= 1
            member.last_seen_ms = self._clock_ms()
        return FetchResult(
            member.member_id, group.generation, group.assignment(member.member_id), records
        )

    async def _read_or_wait(
        self,
        group: Group,
        shape: TopicShape,
        member: Member,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        raw: bool,
    ) -> Fetched:
        deadline = asyncio.get_running_loop().time() + wait_ms / 1000
        while True:
            records = await self._read(group, shape, member, max_records, max_bytes, raw)
            remaining = deadline - asyncio.get_running_loop().time()
            if records or remaining <= 0 or self.stopping.is_set():
                return records
            if max(shape.partitions, default=-1) < group.newest_partition:
                return records  # the topic changed shape since this fetch began
            if await self._holds_finished_parent(group, shape, member):
                # The member's next fetch lets go of a parent it read to the end (committing
                # it first under auto_commit), which frees the children: answer now rather
                # than hold them back for the rest of the wait.
                return records
            if not await self._wait(group, shape, member, remaining):
                return records
            async with group.lock:
                if member.member_id not in group.members:
                    return records
                await self._rebalance_for(group, shape, member)

    async def _read(
        self,
        group: Group,
        shape: TopicShape,
        member: Member,
        max_records: int,
        max_bytes: int,
        raw: bool,
    ) -> Fetched:
        out = Fetched()
        owned = [
            pid
            for pid in sorted(member.positions, key=lambda p: (_is_active(shape, p), p))
            # A partition this shape does not know is newer than it (a split meanwhile).
            if group.owner.get(pid) == member.member_id and pid in shape.partitions
        ]
        positions: dict[int, int] = {}
        # The member moves only once every read succeeded: a fetch that fails part-way
        # delivered nothing, so its next fetch must neither skip nor commit what it read.
        moved: dict[int, int] = {}
        delivered: dict[int, int] = {}
        cold: list[int] = []
        for pid in owned:
            stats = await self._worker.stats(shape.key(pid))
            position = max(member.positions[pid], stats.start_offset)
            if position >= stats.end_offset:
                moved[pid] = position
                continue
            positions[pid] = position
            if position < stats.local_start_offset:
                cold.append(pid)
        # Partitions whose next records are only in object storage are read all at once,
        # each with an equal share of the fetch's bounds: every read waits on the store, so
        # one partition's wait must not add to the next one's. They come first; the hot
        # partitions share what is left, in order.
        early: dict[int, ReadResult | BatchRead] = {}
        if len(cold) > 1:
            share_records = max(1, max_records // len(cold))
            share_bytes = max(1, max_bytes // len(cold))
            results = await asyncio.gather(
                *(
                    self._read_one(shape, pid, positions[pid], share_records, share_bytes, raw)
                    for pid in cold
                ),
                return_exceptions=True,
            )
            for pid, outcome in zip(cold, results, strict=True):
                if isinstance(outcome, BaseException):
                    raise outcome
                early[pid] = outcome
        for pid in [*early, *(p for p in positions if p not in early)]:
            if out.count >= max_records or (out and out.size >= max_bytes):
                break
            position = positions[pid]
            result = early.get(pid)
            if result is None:
                room = max_bytes - out.size or 1
                result = await self._read_one(
                    shape, pid, position, max_records - out.count, room, raw
                )
            if isinstance(result, BatchRead):
                data, next_offset = trim_batches(result.data, position, max_records - out.count)
                if data:
                    out.chunks.append(RawChunk(pid, position, data))
                    out.size += len(data)
            else:
                records = result.records[: max_records - out.count]
                for record in records:
                    out.records.append((pid, record))
                    out.size += record.payload_bytes
                next_offset = records[-1].offset + 1 if records else position
            out.count += next_offset - position
            moved[pid] = delivered[pid] = next_offset
        member.positions.update(moved)
        member.delivered.update(delivered)
        return out

    async def _read_one(
        self,
        shape: TopicShape,
        pid: int,
        position: int,
        max_records: int,
        max_bytes: int,
        raw: bool,
    ) -> ReadResult | BatchRead:
        key = shape.key(pid)
        if raw:
            return await self._worker.read_batches(key, position, max_bytes=max_bytes)
        return await self._worker.read(key, position, max_records=max_records, max_bytes=max_bytes)

    async def _holds_finished_parent(self, group: Group, shape: TopicShape, member: Member) -> bool:
        """Whether the member owns a sealed partition it read to the end that is committed
        to its end, or will be at its next fetch (auto_commit)."""
        for pid, position in member.positions.items():
            if group.owner.get(pid) != member.member_id:
                continue
            stats = await self._worker.stats(shape.key(pid))
            if not stats.sealed or position < stats.end_offset:
                continue
            end = stats.end_offset
            if group.committed.get(pid, -1) >= end or stats.start_offset >= end:
                return True  # drained
            if member.auto_commit and member.delivered.get(pid, -1) >= end:
                return True
        return False

    async def _wait(self, group: Group, shape: TopicShape, member: Member, limit_s: float) -> bool:
        """Wait for data in any owned partition, a change in the group, or shutdown.

        Answers False when the wait timed out with nothing new."""
        waits = []
        for p, position in member.positions.items():
            key = shape.key(p)
            stats = await self._worker.stats(key)
            if stats.sealed and position >= stats.end_offset:
                continue  # read to its end: nothing can come (waiting on it would spin)
            waits.append(asyncio.ensure_future(self._worker.wait_for_data(key, position, limit_s)))
        changed = asyncio.ensure_future(group.changed.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        everything = [*waits, changed, stopping]
        try:
            async with waiting():
                done, _ = await asyncio.wait(
                    everything, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
        return bool(done) and stopping not in done

    # --- commit, leave -----------------------------------------------------------------

    def _delivered_offsets(self, group: Group, member: Member) -> dict[int, int]:
        offsets = {
            pid: offset
            for pid, offset in member.delivered.items()
            if group.owner.get(pid) == member.member_id and offset > group.committed.get(pid, -1)
        }
        member.delivered.clear()
        return offsets

    async def _commit_delivered(self, group: Group, shape: TopicShape, member: Member) -> None:
        """Commit what the member's last fetch delivered, and wait until it is written."""
        await self.written(group)
        offsets = self._delivered_offsets(group, member)
        if offsets:
            stored = await self._catalog.commit_offsets(
                shape.tenant, shape.name, group.name, offsets
            )
            group.committed = dict(stored.offsets)

    def _commit_behind(self, group: Group, shape: TopicShape, member: Member) -> None:
        """An automatic commit: in effect now, written to the catalog in the background
        (see the module's docstring). Called with the group's lock held."""
        offsets = self._delivered_offsets(group, member)
        if not offsets:
            return
        group.committed.update(offsets)
        group.unwritten.update(offsets)
        if group.writer is None or group.writer.done():
            group.writer = asyncio.get_running_loop().create_task(
                self._write_commits(group, shape.tenant, shape.name),
                name=f"group-commits-{group.name}",
            )

    async def _write_commits(self, group: Group, tenant: str, topic: str) -> None:
        """Write a group's automatic commits until none is left, each write taking every
        one made since the last; a write that keeps failing is given up (logged): its
        records would be delivered again after a restart."""
        try:
            await self._write_all_commits(group, tenant, topic)
        finally:
            # Whatever is left when the writer ends is given up with it (a deleted topic or
            # group, a catalog that kept failing): kept, a later writer would put it over a
            # seek or a commit by hand made meanwhile.
            group.unwritten = {}
            group.hurry.clear()

    async def _write_all_commits(self, group: Group, tenant: str, topic: str) -> None:
        failures = 0
        key = (tenant, group.incarnation, group.name)
        while group.unwritten and self._groups.get(key) is group:  # not a forgotten topic's
            offsets, group.unwritten = group.unwritten, {}
            try:
                await self._catalog.commit_offsets(tenant, topic, group.name, offsets)
            except (GroupNotFoundError, TopicNotFoundError):
                return  # deleted meanwhile: nothing to keep
            except Exception:  # noqa: BLE001 - whatever the catalog raised: retried, then logged
                failures += 1
                if failures > COMMIT_WRITE_ATTEMPTS:
                    log.exception(
                        "group %s: could not write its automatic commits; after a restart "
                        "it resumes from its last written commit",
                        group.name,
                    )
                    return
                for pid, offset in offsets.items():  # newer commits win
                    group.unwritten.setdefault(pid, offset)
                await asyncio.sleep(0.05 * 2**failures)
                continue
            failures = 0
            if not group.hurry.is_set():
                # A member fetching continuously commits at every fetch: let them gather,
                # so that the catalog takes a few writes a second rather than one a fetch.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(group.hurry.wait(), COMMIT_WRITE_PAUSE_S)

    async def written(self, group: Group) -> None:
        """Wait until the group's automatic commits are in the catalog."""
        while group.writer is not None and not group.writer.done():
            group.hurry.set()
            await asyncio.shield(group.writer)

    async def write_all(self) -> None:
        """Wait until every group's automatic commits are in the catalog (shutdown)."""
        for group in list(self._groups.values()):
            with contextlib.suppress(Exception):
                await self.written(group)

    async def commit(
        self,
        shape: TopicShape,
        name: str,
        *,
        member_id: str,
        generation: int,
        offsets: Mapping[int, int],
    ) -> dict[int, int]:
        group = self._joined_group(shape, name, member_id)
        async with group.lock:
            await self._load(group, shape)
            if member_id not in group.members:
                raise _unknown_member(member_id, name)
            if generation != group.generation:
                raise StaleGenerationError(
                    f"generation {generation} is stale; the group is at {group.generation}",
                    generation=group.generation,
                )
            for pid, offset in offsets.items():
                if group.owner.get(pid) != member_id:
                    raise PartitionNotAssignedError(
                        f"partition {pid} is not assigned to member {member_id} in generation "
                        f"{generation}",
                        partition=pid,
                    )
                stats = await self._worker.stats(shape.key(pid))
                if not 0 <= offset <= stats.end_offset:
                    raise InvalidOffsetError(
                        f"offset {offset} for partition {pid} is past its end {stats.end_offset}",
                        partition=pid,
                    )
            await self.written(group)  # after the automatic ones it may overwrite
            stored = await self._catalog.commit_offsets(
                shape.tenant, shape.name, name, dict(offsets)
            )
            group.committed = dict(stored.offsets)
            group.members[member_id].last_seen_ms = self._clock_ms()
            group.notify()  # a drained parent may free its children
            return group.committed

    async def leave(
        self, shape: TopicShape, name: str, member_id: str, *, commit: bool = True
    ) -> None:
        """Leave the group; with auto_commit, first commit what the last fetch delivered
        (as a consumer's close does), so that nothing it consumed is delivered again.

        ``commit=False`` commits nothing: for a member that committed by hand what it
        handled, which may be less than its last fetch delivered."""
        group = self._joined_group(shape, name, member_id)
        async with group.lock:
            member = group.members.get(member_id)
            if member is None:
                raise _unknown_member(member_id, name)
            if commit and member.auto_commit and member.delivered:
                await self._commit_delivered(group, shape, member)
            self._remove(group, member_id)
            group.notify()

    # --- describe, delete, seek ----------------------------------------------------------

    async def describe(self, shape: TopicShape, name: str) -> dict[str, Any]:
        missing = GroupNotFoundError(f"no group {name!r} on topic {shape.name!r}", group=name)
        if (shape.tenant, shape.incarnation, name) not in self._groups:
            # Look before making the group's state, so that lookups cannot grow memory. A
            # group in memory is never dropped here: a first fetch may be joining it.
            try:
                await self._catalog.get_group(shape.tenant, shape.name, name)
            except GroupNotFoundError:
                raise missing from None
        group = self._group(shape, name)
        async with group.lock:
            if not await self._load(group, shape) and not group.members:
                raise missing
            self._expire(group, self._clock_ms())
            partitions = []
            total_lag = 0
            for pid, partition in sorted(shape.partitions.items()):
                stats = await self._worker.stats(shape.key(pid))
                end = partition.end_offset if partition.end_offset is not None else stats.end_offset
                committed = group.committed.get(pid)
                lag = max(0, end - max(committed or 0, stats.start_offset))
                total_lag += lag
                partitions.append(
                    {
                        "partition": pid,
                        "state": partition.state.value,
                        "committed": committed,
                        "end_offset": end,
                        "lag": lag,
                        "member_id": group.owner.get(pid),
                        "drained": await self._drained(group, shape, partition),
                    }
                )
            return {
                "group": name,
                "generation": group.generation,
                "members": [
                    {
                        "member_id": m.member_id,
                        "assignment": group.assignment(m.member_id),
                        "session_timeout_ms": m.session_timeout_ms,
                        "last_seen_ms": m.last_seen_ms,
                    }
                    for m in group.members.values()
                ],
                "partitions": partitions,
                "lag": total_lag,
            }

    async def delete(self, shape: TopicShape, name: str) -> None:
        group = self._group(shape, name)
        async with group.lock:
            self._expire(group, self._clock_ms())
            if group.members:
                raise GroupHasMembersError(
                    f"group {name!r} has {len(group.members)} live members; they must leave "
                    "or expire first",
                    members=len(group.members),
                )
            await self.written(group)  # a write after the delete would bring it back
            self._groups.pop((shape.tenant, shape.incarnation, name), None)
            await self._catalog.delete_group(shape.tenant, shape.name, name)

    async def seek(self, shape: TopicShape, name: str, target: Any) -> dict[int, int]:
        """Reset committed offsets: "earliest", "latest", {"timestamp_ms": T} or
        {"offsets": [{"partition", "offset"}]}. Only while the group has no live members."""
        if (shape.tenant, shape.incarnation, name) not in self._groups:
            # Refuse a bad target before making the group's state: the group may not exist.
            await self._seek_offsets(shape, target)
        group = self._group(shape, name)
        async with group.lock:
            self._expire(group, self._clock_ms())
            if group.members:
                raise GroupHasMembersError(
                    f"group {name!r} has live members; seek when it has none",
                    members=len(group.members),
                )
            await self.written(group)
            offsets = await self._seek_offsets(shape, target)
            stored = await self._catalog.commit_offsets(shape.tenant, shape.name, name, offsets)
            group.committed = dict(stored.offsets)
            group.loaded = True
            group.generation += 1
            return group.committed

    async def _seek_offsets(self, shape: TopicShape, target: Any) -> dict[int, int]:
        offsets: dict[int, int] = {}
        ends = {}
        for pid, partition in shape.partitions.items():
            stats = await self._worker.stats(shape.key(pid))
            end = partition.end_offset if partition.end_offset is not None else stats.end_offset
            ends[pid] = (stats.start_offset, end)
        if target == EARLIEST:
            return {pid: start for pid, (start, _end) in ends.items()}
        if target == LATEST:
            return {pid: end for pid, (_start, end) in ends.items()}
        if isinstance(target, dict) and "timestamp_ms" in target:
            ts = target["timestamp_ms"]
            if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
                raise InvalidSeekError("timestamp_ms is a non-negative integer")
            for pid, (_start, end) in ends.items():
                found = await self._worker.offset_for_timestamp(shape.key(pid), ts)
                offsets[pid] = end if found is None else found
            return offsets
        if isinstance(target, dict) and isinstance(target.get("offsets"), list):
            for item in target["offsets"]:
                wanted = item if isinstance(item, dict) else {}
                part, offset = wanted.get("partition"), wanted.get("offset")
                if not _is_int(part) or part not in ends or not _is_int(offset):
                    raise InvalidSeekError(f"not a partition offset: {item!r}")
                pid = part
                start, end = ends[pid]
                if not start <= offset <= end:
                    raise InvalidSeekError(
                        f"offset {offset} is outside partition {pid}'s range [{start}, {end}]"
                    )
                offsets[pid] = offset
            return offsets
        raise InvalidSeekError(
            'seek to "earliest", "latest", {"timestamp_ms": T} or {"offsets": [...]}'
        )


def _unknown_member(member_id: str, name: str) -> UnknownMemberError:
    return UnknownMemberError(
        f"member {member_id} is not in group {name!r} (its session ended); "
        "fetch without member_id to join again",
        member_id=member_id,
    )


def _is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_active(shape: TopicShape, pid: int) -> bool:
    partition = shape.partitions.get(pid)
    return partition is None or partition.active


def _siblings_held(shape: TopicShape, mine: list[int], pid: int) -> int:
    """How many partitions in ``mine`` share a parent with ``pid``."""
    parents = set(shape.partitions[pid].parents)
    if not parents:
        return 0
    return sum(1 for p in mine if parents.intersection(shape.partitions[p].parents))


def _expired(member: Member, now: int) -> bool:
    return not member.busy and now - member.last_seen_ms > member.session_timeout_ms
