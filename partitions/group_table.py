"""The consumer groups held in memory, and their loading from the catalog.

Members and sessions live only here (a restart ends them); committed offsets live in the
catalog and are read when a group is first used. State is made only for a group that a
fetch joins or that exists in the catalog, so requests naming groups nobody joined cannot
grow memory.
"""

from __future__ import annotations

from partitions.catalog import Catalog
from partitions.errors import GroupNotFoundError
from partitions.group_model import LATEST, Group, TopicShape, unknown_member
from partitions.worker import PartitionWorker


class GroupTable:
    """Groups by tenant, topic incarnation and name."""

    def __init__(self, catalog: Catalog, worker: PartitionWorker) -> None:
        self._catalog = catalog
        self._worker = worker
        self._groups: dict[tuple[str, str, str], Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, tenant: str, incarnation: str, name: str) -> Group | None:
        return self._groups.get((tenant, incarnation, name))

    def holds(self, shape: TopicShape, name: str) -> bool:
        return (shape.tenant, shape.incarnation, name) in self._groups

    def all(self) -> list[Group]:
        return list(self._groups.values())

    def of_topic(self, tenant: str, incarnation: str) -> list[Group]:
        return [g for (t, i, _name), g in self._groups.items() if (t, i) == (tenant, incarnation)]

    def joined(self, shape: TopicShape, name: str, member_id: str) -> Group:
        """The group of a request naming a member: members live only in memory, so a group
        that is not there has no members, and no state is made for it (requests naming
        groups nobody joined cannot grow memory)."""
        group = self._groups.get((shape.tenant, shape.incarnation, name))
        if group is None:
            raise unknown_member(member_id, name)
        return group

    def group(self, shape: TopicShape, name: str) -> Group:
        """The group's state, made empty when none is held."""
        key = (shape.tenant, shape.incarnation, name)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(shape.tenant, shape.incarnation, name)
        return group

    def drop(self, shape: TopicShape, name: str) -> None:
        self._groups.pop((shape.tenant, shape.incarnation, name), None)

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        for key in [k for k in self._groups if k[0] == tenant and k[1] == incarnation]:
            self._groups.pop(key).notify()

    async def load(self, group: Group, shape: TopicShape) -> bool:
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

    async def start_new(self, group: Group, shape: TopicShape, reset: str) -> None:
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
