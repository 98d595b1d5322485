"""Which partitions a group may read, and which of its members reads each.

A partition is *eligible* for a group when it is not drained and every parent of it is: a
sealed partition is drained when the group's committed offset is at least its end, or when
retention moved its log start past its end. So a child is handed out only after its parents
are consumed, and every key's records come in order across splits and merges. Eligible
partitions are spread evenly over the members, sealed ones first, siblings apart.
"""

from __future__ import annotations

from partitions.catalog import PartitionRecord
from partitions.group_model import Group, Member, TopicShape
from partitions.worker import PartitionWorker


class LineageAssignor:
    """Assignment in lineage order, one member at a time (a partition moves away from a
    live member only at that member's own fetch)."""

    def __init__(self, worker: PartitionWorker) -> None:
        self._worker = worker

    async def drained(self, group: Group, shape: TopicShape, partition: PartitionRecord) -> bool:
        if partition.end_offset is None:
            return False
        if group.committed.get(partition.partition_id, -1) >= partition.end_offset:
            return True
        stats = await self._worker.stats(shape.key(partition.partition_id))
        return stats.start_offset >= partition.end_offset

    async def eligible(self, group: Group, shape: TopicShape) -> list[int]:
        """Eligible partitions, sealed ones first (they block their children)."""
        drained = {
            pid for pid, p in shape.partitions.items() if await self.drained(group, shape, p)
        }
        eligible = [
            pid
            for pid, p in shape.partitions.items()
            if pid not in drained and all(parent in drained for parent in p.parents)
        ]
        return sorted(eligible, key=lambda pid: (shape.partitions[pid].active, pid))

    async def rebalance_for(self, group: Group, shape: TopicShape, member: Member) -> None:
        """Move partitions to or from ``member`` only; others change at their own fetch."""
        group.newest_partition = max(group.newest_partition, max(shape.partitions, default=-1))
        eligible = await self.eligible(group, shape)
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


def _siblings_held(shape: TopicShape, mine: list[int], pid: int) -> int:
    """How many partitions in ``mine`` share a parent with ``pid``."""
    parents = set(shape.partitions[pid].parents)
    if not parents:
        return 0
    return sum(1 for p in mine if parents.intersection(shape.partitions[p].parents))
