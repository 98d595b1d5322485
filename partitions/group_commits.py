"""Every way a member's position becomes a group's committed offset.

- **Automatic** (``auto_commit``): a fetch first commits what the member's previous fetch
  delivered. It takes effect in the group at once (assignment, drained parents, describe)
  and is written to the catalog behind the fetch, in the background, those of up to
  ``COMMIT_WRITE_PAUSE_S`` in one write: a fetch does not wait for a catalog transaction.
- **By hand**: fenced by ownership now (cooperative: whatever generation the member last
  saw), written before it answers.
- **On leaving** with ``auto_commit``: what the last fetch delivered, written before the
  member is gone.

A commit by hand, a leave, a seek, a group's deletion and the server's shutdown first wait
for the automatic commits still being written (:meth:`GroupCommits.written`), so that an
older automatic commit never lands over them. A crash can lose only automatic commits not
yet written, whose records are then delivered again: still at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from partitions.catalog import Catalog
from partitions.errors import (
    EventBusError,
    GroupNotFoundError,
    InvalidOffsetError,
    TopicNotFoundError,
)
from partitions.group_model import (
    Group,
    Member,
    PartitionNotAssignedError,
    TopicShape,
    unknown_member,
)
from partitions.group_table import GroupTable
from partitions.worker import PartitionWorker

log = logging.getLogger(__name__)

# Tries at writing a group's automatic commits before they are given up (logged).
COMMIT_WRITE_ATTEMPTS = 5
# How long automatic commits gather between two writes of a group's.
COMMIT_WRITE_PAUSE_S = 0.2


class GroupCommits:
    """The commits of the groups in ``groups``, written to ``catalog``."""

    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        groups: GroupTable,
        *,
        clock_ms: Callable[[], int],
    ) -> None:
        self._catalog = catalog
        self._worker = worker
        self._groups = groups
        self._clock_ms = clock_ms

    def _delivered_offsets(self, group: Group, member: Member) -> dict[int, int]:
        offsets = {
            pid: offset
            for pid, offset in member.delivered.items()
            if group.owner.get(pid) == member.member_id and offset > group.committed.get(pid, -1)
        }
        member.delivered.clear()
        return offsets

    async def commit_delivered(self, group: Group, shape: TopicShape, member: Member) -> None:
        """Commit what the member's last fetch delivered, and wait until it is written."""
        await self.written(group)
        offsets = self._delivered_offsets(group, member)
        if offsets:
            stored = await self._catalog.commit_offsets(
                shape.tenant, shape.name, group.name, offsets
            )
            group.committed = dict(stored.offsets)

    def commit_behind(self, group: Group, shape: TopicShape, member: Member) -> None:
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
        # Only while the group is still held: not once its topic or itself was forgotten.
        while group.unwritten and self._groups.get(tenant, group.incarnation, group.name) is group:
            offsets, group.unwritten = group.unwritten, {}
            try:
                await self._catalog.commit_offsets(tenant, topic, group.name, offsets)
            except (GroupNotFoundError, TopicNotFoundError):
                return  # deleted meanwhile: nothing to keep
            except Exception as exc:  # noqa: BLE001 - whatever the catalog raised: retried, logged
                failures += 1
                if failures > COMMIT_WRITE_ATTEMPTS:
                    # A full disk is no bug: its traceback would say nothing.
                    log.warning(
                        "group %s: could not write its automatic commits (%s); after a "
                        "restart it resumes from its last written commit",
                        group.name,
                        exc,
                        exc_info=None if isinstance(exc, EventBusError) else exc,
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
        for group in self._groups.all():
            with contextlib.suppress(Exception):
                await self.written(group)

    async def commit_seen(
        self, shape: TopicShape, name: str, offsets: Mapping[int, int], reset: str
    ) -> None:
        """Commit exactly what a client saw, for the group (a group stream's client that
        comes back with its cursor): higher or lower than committed, so that nothing it
        saw is delivered again and nothing it did not see is skipped. A group that does not
        exist is made (starting where ``reset`` says), partitions the topic does not have
        are left out, and a member that owns one of them now goes on from its own
        position; the partitions nobody owns start from the offsets committed here."""
        group = self._groups.group(shape, name)
        async with group.lock:
            if not await self._groups.load(group, shape):
                await self._groups.start_new(group, shape, reset)
            known = {pid: offset for pid, offset in offsets.items() if pid in shape.partitions}
            for pid, offset in known.items():
                stats = await self._worker.stats(shape.key(pid))
                if not 0 <= offset <= stats.end_offset:
                    raise InvalidOffsetError(
                        f"offset {offset} for partition {pid} is past its end {stats.end_offset}",
                        partition=pid,
                    )
            if not known:
                return
            await self.written(group)  # after the automatic ones it may overwrite
            stored = await self._catalog.commit_offsets(shape.tenant, shape.name, name, known)
            group.committed = dict(stored.offsets)
            group.notify()

    async def commit(
        self,
        shape: TopicShape,
        name: str,
        *,
        member_id: str,
        offsets: Mapping[int, int],
        generation: int | None = None,
    ) -> dict[int, int]:
        """Commit next-to-read offsets of partitions the member owns now, by hand.

        Cooperative, as Kafka's incremental rebalance (KIP-429, KIP-848): a live member's
        commit of partitions it owns now is accepted whatever generation it last saw (a
        rebalance moves only some partitions, and a member keeps the others). A commit
        naming a partition the member no longer owns answers 409
        ``partition_not_assigned``, and one from a member that left or expired 409
        ``unknown_member``, both with the member's current assignment and the group's
        generation; neither changes anything, so a slow member can never overwrite the
        progress of a partition's new owner. ``generation`` is what the member last saw;
        it fences nothing.
        """
        group = self._groups.joined(shape, name, member_id)
        async with group.lock:
            await self._groups.load(group, shape)
            now = self._clock_ms()
            if group.expire_members(now):  # the sweeper may not have come by yet
                group.notify()
            if member_id not in group.members:
                raise unknown_member(member_id, name, group.generation)
            revoked = sorted(pid for pid in offsets if group.owner.get(pid) != member_id)
            if revoked:
                raise PartitionNotAssignedError(
                    f"partitions {revoked} are not assigned to member {member_id} now "
                    f"(generation {group.generation}): drop their work",
                    partitions=revoked,
                    assignment=group.assignment(member_id),
                    generation=group.generation,
                )
            for pid, offset in offsets.items():
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
            group.members[member_id].last_seen_ms = now
            group.notify()  # a drained parent may free its children
            return group.committed
