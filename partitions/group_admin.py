"""Operations on a group as a whole, not by one of its members: list a topic's groups,
describe one (committed offsets, lag, members), delete it, and seek it (reset its committed
offsets). Deleting and seeking need a group without live members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from partitions.catalog import Catalog
from partitions.errors import GroupNotFoundError, OffsetOutOfRangeError, PartitionNotFoundError
from partitions.group_assignment import LineageAssignor
from partitions.group_commits import GroupCommits
from partitions.group_model import (
    EARLIEST,
    LATEST,
    GroupHasMembersError,
    InvalidSeekError,
    TopicShape,
)
from partitions.group_table import GroupTable
from partitions.worker import PartitionWorker


class GroupAdmin:
    """Describe, delete and seek the groups in ``groups``."""

    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        groups: GroupTable,
        assignor: LineageAssignor,
        commits: GroupCommits,
        *,
        clock_ms: Callable[[], int],
    ) -> None:
        self._catalog = catalog
        self._worker = worker
        self._groups = groups
        self._assignor = assignor
        self._commits = commits
        self._clock_ms = clock_ms

    async def describe(self, shape: TopicShape, name: str) -> dict[str, Any]:
        missing = GroupNotFoundError(f"no group {name!r} on topic {shape.name!r}", group=name)
        if not self._groups.holds(shape, name):
            # Look before making the group's state, so that lookups cannot grow memory. A
            # group in memory is never dropped here: a first fetch may be joining it.
            try:
                await self._catalog.get_group(shape.tenant, shape.name, name)
            except GroupNotFoundError:
                raise missing from None
        group = self._groups.group(shape, name)
        async with group.lock:
            if not await self._groups.load(group, shape) and not group.members:
                raise missing
            group.expire_members(self._clock_ms())
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
                        "drained": await self._assignor.drained(group, shape, partition),
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

    async def list(self, shape: TopicShape) -> list[dict[str, Any]]:
        """Every group of the topic by name, with its committed offsets and total lag as the
        catalog holds them. Automatic commits reach the catalog within a moment, and members
        live only in the group's home: describe one group for those."""
        records = await self._catalog.list_groups(shape.tenant, shape.name)
        if not records:
            return []
        ranges = await self._ranges(shape)
        listed = []
        for record in sorted(records, key=lambda r: r.group):
            lag = sum(
                max(0, end - max(record.offsets.get(pid, 0), start))
                for pid, (start, end) in ranges.items()
            )
            listed.append(
                {
                    "group": record.group,
                    "committed": [
                        {"partition": pid, "offset": offset}
                        for pid, offset in sorted(record.offsets.items())
                    ],
                    "lag": lag,
                }
            )
        return listed

    async def delete(self, shape: TopicShape, name: str) -> None:
        group = self._groups.group(shape, name)
        async with group.lock:
            group.expire_members(self._clock_ms())
            if group.members:
                raise GroupHasMembersError(
                    f"group {name!r} has {len(group.members)} live members; they must leave "
                    "or expire first",
                    members=len(group.members),
                )
            await self._commits.written(group)  # a write after the delete would bring it back
            self._groups.drop(shape, name)
            await self._catalog.delete_group(shape.tenant, shape.name, name)

    async def seek(self, shape: TopicShape, name: str, target: Any) -> dict[int, int]:
        """Reset committed offsets: "earliest", "latest", {"timestamp_ms": T} or
        {"offsets": [{"partition", "offset"}]}. Only while the group has no live members."""
        if not self._groups.holds(shape, name):
            # Refuse a bad target before making the group's state: the group may not exist.
            await self._seek_offsets(shape, target)
        group = self._groups.group(shape, name)
        async with group.lock:
            group.expire_members(self._clock_ms())
            if group.members:
                raise GroupHasMembersError(
                    f"group {name!r} has live members; seek when it has none",
                    members=len(group.members),
                )
            await self._commits.written(group)
            offsets = await self._seek_offsets(shape, target)
            stored = await self._catalog.commit_offsets(shape.tenant, shape.name, name, offsets)
            group.committed = dict(stored.offsets)
            group.loaded = True
            group.generation += 1
            return group.committed

    async def _ranges(self, shape: TopicShape) -> dict[int, tuple[int, int]]:
        """Each partition's readable range now: its start, and its end (final once sealed)."""
        ranges = {}
        for pid, partition in shape.partitions.items():
            stats = await self._worker.stats(shape.key(pid))
            end = partition.end_offset if partition.end_offset is not None else stats.end_offset
            ranges[pid] = (stats.start_offset, end)
        return ranges

    async def _seek_offsets(self, shape: TopicShape, target: Any) -> dict[int, int]:
        offsets: dict[int, int] = {}
        ends = await self._ranges(shape)
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
                if not _is_int(part) or not _is_int(offset):
                    raise InvalidSeekError(f"not a partition offset: {item!r}")
                if part not in ends:
                    # Well formed, and the topic's state decides: not a 400.
                    raise PartitionNotFoundError(
                        f"topic {shape.name!r} has no partition {part}", partition=part
                    )
                start, end = ends[part]
                if not start <= offset <= end:
                    raise OffsetOutOfRangeError(
                        f"offset {offset} is outside partition {part}'s range [{start}, {end}]",
                        partition=part,
                        start_offset=start,
                        high_watermark=end,
                    )
                offsets[part] = offset
            return offsets
        raise InvalidSeekError(
            'seek to "earliest", "latest", {"timestamp_ms": T} or {"offsets": [...]}'
        )


def _is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)
