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
  for more, so delivery is at least once. A commit is accepted for the partitions the
  member owns now, whatever generation it last saw (the cooperative rule); one naming a
  partition it does not own is refused and changes nothing.
- Such an automatic commit takes effect in the group at once (assignment, drained parents,
  describe) and is written to the catalog behind the fetch, in the background, those of
  up to 0.2 s in one write: a fetch does not wait for a catalog transaction. A commit by
  hand, a leave, a seek, a group's deletion and the server's shutdown first wait for what
  is still being written. A crash can lose only automatic commits not yet written, whose
  records are then delivered again: still at least once.

:class:`GroupCoordinator` is the one entry point; it is composed of one part per concern,
each in its module: the groups held in memory (:mod:`partitions.group_table`), assignment
(:mod:`partitions.group_assignment`), fetching (:mod:`partitions.group_fetch`), every kind
of commit (:mod:`partitions.group_commits`), and list, describe, delete and seek
(:mod:`partitions.group_admin`). The value types and errors are in
:mod:`partitions.group_model`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from partitions.catalog import Catalog
from partitions.group_admin import GroupAdmin
from partitions.group_assignment import LineageAssignor
from partitions.group_commits import GroupCommits
from partitions.group_fetch import GroupFetcher
from partitions.group_model import Group, TopicShape, unknown_member
from partitions.group_table import GroupTable
from partitions.worker import PartitionWorker

# How often expired members are looked for, so that their partitions move promptly.
SWEEP_INTERVAL_S = 0.25


class GroupCoordinator:
    """The consumer groups of this process: every request of a group is served here."""

    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._clock_ms = clock_ms
        self._groups = GroupTable(catalog, worker)
        self.stopping = asyncio.Event()
        assignor = LineageAssignor(worker)
        self._commits = GroupCommits(catalog, worker, self._groups, clock_ms=clock_ms)
        self._fetcher = GroupFetcher(
            worker,
            self._groups,
            assignor,
            self._commits,
            stopping=self.stopping,
            clock_ms=clock_ms,
        )
        self._admin = GroupAdmin(
            catalog, worker, self._groups, assignor, self._commits, clock_ms=clock_ms
        )
        # The coordinator's operations are its parts' own (their docstrings say the rest):
        # join or continue and fetch; commit by hand, or what a stream's client saw;
        # list a topic's groups; describe, delete and seek a group; wait until a group's, or
        # every group's, automatic commits are in the catalog.
        self.fetch = self._fetcher.fetch
        self.commit = self._commits.commit
        self.commit_seen = self._commits.commit_seen
        self.list = self._admin.list
        self.describe = self._admin.describe
        self.delete = self._admin.delete
        self.seek = self._admin.seek
        self.written = self._commits.written
        self.write_all = self._commits.write_all

    @property
    def groups_in_memory(self) -> int:
        """How many groups this process holds state for (members, positions, a lock)."""
        return len(self._groups)

    def group(self, tenant: str, incarnation: str, name: str) -> Group | None:
        """The state held for a group, if any. For looking at: the coordinator alone
        changes it, under the group's lock."""
        return self._groups.get(tenant, incarnation, name)

    # --- background: expire sessions --------------------------------------------------

    async def sweep_forever(self) -> None:
        """Expire members whose session ran out, and wake the others to take over."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = self._clock_ms()
            for group in self._groups.all():
                if any(m.expired(now) for m in group.members.values()):
                    async with group.lock:
                        if group.expire_members(now):
                            group.notify()

    def topic_reshaped(self, tenant: str, incarnation: str, newest_partition: int) -> None:
        """A split or merge created ``newest_partition``: waiting fetches of the topic's
        groups answer, and their members come back with the new shape."""
        for group in self._groups.of_topic(tenant, incarnation):
            group.newest_partition = max(group.newest_partition, newest_partition)
            group.notify()

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        self._groups.forget_topic(tenant, incarnation)

    # --- members -------------------------------------------------------------------------

    async def leave(
        self, shape: TopicShape, name: str, member_id: str, *, commit: bool = True
    ) -> None:
        """Leave the group; with auto_commit, first commit what the last fetch delivered
        (as a consumer's close does), so that nothing it consumed is delivered again.

        ``commit=False`` commits nothing: for a member that committed by hand what it
        handled, which may be less than its last fetch delivered."""
        group = self._groups.joined(shape, name, member_id)
        async with group.lock:
            member = group.members.get(member_id)
            if member is None:
                raise unknown_member(member_id, name, group.generation)
            if commit and member.auto_commit and member.delivered:
                await self._commits.commit_delivered(group, shape, member)
            group.remove_member(member_id)
            group.notify()
