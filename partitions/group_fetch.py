"""A consumer-group fetch: join or continue, commit behind, rebalance, then read the
member's partitions from its positions, or wait for data, a change in the group, or
shutdown.

A member reads from its own position in each partition it owns, starting at the committed
offset when it takes the partition over; it moves only once every read of the fetch
succeeded. Partitions whose next records are only in object storage are read all at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from partitions.batch import trim_batches
from partitions.group_assignment import LineageAssignor
from partitions.group_commits import GroupCommits
from partitions.group_model import (
    DEFAULT_SESSION_TIMEOUT_MS,
    Fetched,
    FetchResult,
    Group,
    Member,
    RawChunk,
    TopicShape,
    unknown_member,
)
from partitions.group_table import GroupTable
from partitions.log.values import BatchRead, ReadResult
from partitions.waiting import waiting
from partitions.worker import PartitionWorker


class GroupFetcher:
    """The fetches of the groups in ``groups``; ``stopping`` set releases waiting ones."""

    def __init__(
        self,
        worker: PartitionWorker,
        groups: GroupTable,
        assignor: LineageAssignor,
        commits: GroupCommits,
        *,
        stopping: asyncio.Event,
        clock_ms: Callable[[], int],
    ) -> None:
        self._worker = worker
        self._groups = groups
        self._assignor = assignor
        self._commits = commits
        self._stopping = stopping
        self._clock_ms = clock_ms

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
            group = self._groups.group(shape, name)
        else:
            group = self._groups.joined(shape, name, member_id)
        async with group.lock:
            now = self._clock_ms()
            group.expire_members(now)
            if member_id is None:
                # Only a joining fetch makes a new group: a refused one changes nothing.
                if not await self._groups.load(group, shape):
                    await self._groups.start_new(group, shape, auto_offset_reset)
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
                    raise unknown_member(member_id, name, group.generation)
                member = found
                member.last_seen_ms = now
                if session_timeout_ms is not None:
                    member.session_timeout_ms = session_timeout_ms
                if auto_commit is not None:
                    member.auto_commit = auto_commit
            if member.auto_commit and member.delivered:
                self._commits.commit_behind(group, shape, member)
            await self._assignor.rebalance_for(group, shape, member)
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
            if records or remaining <= 0 or self._stopping.is_set():
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
                await self._assignor.rebalance_for(group, shape, member)

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
        stopping = asyncio.ensure_future(self._stopping.wait())
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


def _is_active(shape: TopicShape, pid: int) -> bool:
    partition = shape.partitions.get(pid)
    return partition is None or partition.active
