"""The coordinator's takeover loop: while this node holds the coordinator lease, judge the
other nodes, fence the dead, and give the partitions of every session that is over to live
nodes.

One :meth:`Coordinator.step` (every H, from :meth:`Coordinator.run`):

1. :meth:`~.leases.CoordinatorLease.tick`; not held, nothing else happens.
2. :meth:`~.nodes.NodeWatch.poll` the node rows and fence every node judged dead, on the
   exact counter seen.
3. Find the leases of sessions that are over: a node row fenced or left, or alive with
   another session than the lease's (the node restarted). The leases are found through the
   index ``by_owner`` and read again from the table (:func:`~.leases.leases_of`), so what a
   grant expects is the lease as it is. A node whose leases were all found in order is not
   asked again for ``recheck_s``, until its row changes.
4. Give each such lease to a live node by placement (:func:`place`), with
   :func:`~.leases.grant`, expecting the lease as read. A grant refused because the lease
   moved meanwhile, its old owner turned out alive, or the grantee died is not an error:
   the next step reads again and decides again.

Nothing here is remembered across coordinators except what the tables say: a coordinator
that died mid-takeover leaves sessions that are over and still hold leases, and the next
one finds them at its first step, without waiting L (their rows are already fenced).
Every decision is a conditional write on what was read, so two coordinators acting at the
same moment (the old one has not noticed it lost the lease) grant each partition once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_dynamodb.leases import CoordinatorLease, Lease, grant, leases_of
from partitions.catalog_dynamodb.nodes import (
    ALIVE,
    FENCED,
    Clock,
    NodeView,
    NodeWatch,
    Session,
    Sleep,
    Timing,
)
from partitions.errors import (
    CatalogUnavailableError,
    LeaseConflictError,
    NodeNotAliveError,
    OwnerStillAliveError,
)

log = logging.getLogger(__name__)

# What a node row's ``load`` says, as its heartbeats write it: how many partitions the node
# owns, and the bytes per second it takes in over them.
LOAD_PARTITIONS = "partitions"
LOAD_BYTES = "bytes_per_s"


@dataclass(frozen=True, slots=True)
class Grant:
    """One partition given to another node by a step."""

    lease: Lease  # as it is after the grant
    previous: Lease  # as it was read


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did, for logs and tests."""

    coordinating: bool
    fenced: tuple[NodeView, ...] = ()
    granted: tuple[Grant, ...] = ()
    # Leases of sessions that are over, left for a later step (refused, no live node).
    waiting: int = 0


@dataclass(slots=True)
class _Candidate:
    view: NodeView
    cost: float


def place(
    orphans: Sequence[Lease],
    live: Sequence[NodeView],
    nodes: Mapping[str, NodeView],
) -> dict[Lease, str]:
    """Choose a live node for each of ``orphans``: every time the least loaded, counting
    what was placed before it, so the partitions of one dead node are spread rather than
    piled on one. A node's load is its partition count plus its bytes per second in units
    of the cluster's mean bytes per second per partition (the rows of ``nodes``); an
    orphan weighs one partition plus the mean rate of its old owner's partitions in the
    same unit. Ties go to the lower node id. Answers nothing without a live node."""
    if not live:
        return {}
    rows = list(nodes.values())
    total_parts = sum(_load(v, LOAD_PARTITIONS) for v in rows)
    total_bytes = sum(_load(v, LOAD_BYTES) for v in rows)
    unit = total_bytes / total_parts if total_parts > 0 and total_bytes > 0 else math.inf

    def weight(lease: Lease) -> float:
        owner = nodes.get(lease.owner)
        if owner is None:
            return 1.0
        per_partition = _load(owner, LOAD_BYTES) / max(1, _load(owner, LOAD_PARTITIONS))
        return 1.0 + per_partition / unit

    candidates = [
        _Candidate(v, _load(v, LOAD_PARTITIONS) + _load(v, LOAD_BYTES) / unit) for v in live
    ]
    chosen = {}
    for lease in sorted(orphans, key=lambda lease: lease.partition):
        best = min(candidates, key=lambda c: (c.cost, c.view.node_id))
        chosen[lease] = best.view.node_id
        best.cost += weight(lease)
    return chosen


def _load(view: NodeView, name: str) -> float:
    value = view.load.get(name, 0)
    return max(0.0, float(value))


class Coordinator:
    """The coordinator's work for one node session: call :meth:`step` every H, or
    :meth:`run`. ``max_grants`` bounds the grants of one step (the rest wait for the next),
    so that a step stays short."""

    def __init__(
        self,
        db: Dynamo,
        session: Session,
        *,
        timing: Timing,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        max_grants: int = 100,
        recheck_s: float = 60.0,
    ) -> None:
        self.db = db
        self.session = session
        self.timing = timing
        self.clock = clock
        self.sleep = sleep
        self.max_grants = max_grants
        self.recheck_s = recheck_s
        self.lease = CoordinatorLease(db, session, timing=timing, clock=clock)
        self.watch = NodeWatch(db, timing=timing, clock=clock, sleep=sleep)
        # Node rows (node, session, state) whose leases were all in order, and when.
        self._settled: dict[tuple[str, str, str], float] = {}

    async def step(self) -> StepResult:
        """One round: hold the lease, fence the dead, grant what sessions that are over
        still hold. Raises :class:`CatalogUnavailableError` if the catalog cannot be
        reached (the round is lost; nothing half-done matters, the next one reads again)."""
        if not await self.lease.tick():
            return StepResult(coordinating=False)
        nodes = await self.watch.poll()
        fenced, over = [], set()
        for view in self.watch.dead():
            if await self.watch.fence(view):
                log.warning("node %s (session %s) fenced", view.node_id, view.session_id)
                fenced.append(view)
                over.add(view.node_id)
            elif await self._ended(view):
                over.add(view.node_id)  # fenced by another coordinator, or left, meanwhile
        orphans = await self._orphans(nodes, over)
        live = [v for v in self.watch.live() if v.node_id not in over]
        granted, waiting = await self._grant(orphans, live, nodes)
        return StepResult(
            coordinating=True, fenced=tuple(fenced), granted=tuple(granted), waiting=waiting
        )

    async def _ended(self, view: NodeView) -> bool:
        """Whether ``view``'s session, which this call could not fence, is over all the
        same (fenced or left by now). A row replaced meanwhile is not: the next poll sees
        the new session."""
        row = await self.db.get("read node", "leases", keys.node(view.node_id))
        return row is not None and row["session"] == view.session_id and row["state"] != ALIVE

    async def _orphans(self, nodes: Mapping[str, NodeView], over: set[str]) -> list[Lease]:
        """The leases held by sessions that are over, read again from the table."""
        now = self.clock()
        out = []
        for view in nodes.values():
            row_live = view.state == ALIVE and view.node_id not in over
            if view.dead and row_live:
                continue  # judged dead but not fenced: it heartbeat meanwhile
            state = FENCED if view.node_id in over else view.state
            settled = (view.node_id, view.session_id, state)
            if now - self._settled.get(settled, -math.inf) < self.recheck_s:
                continue
            held = await leases_of(self.db, view.node_id)
            current = view.session_id if row_live else None
            stale = [lease for lease in held if lease.session_id != current]
            if stale:
                out.extend(stale)
                self._settled.pop(settled, None)
            else:
                self._settled[settled] = now
        return out

    async def _grant(
        self, orphans: list[Lease], live: list[NodeView], nodes: Mapping[str, NodeView]
    ) -> tuple[list[Grant], int]:
        granted: list[Grant] = []
        waiting = len(orphans)
        refused: set[str] = set()
        for lease, node_id in place(orphans[: self.max_grants], live, nodes).items():
            if not self.lease.held:
                break  # no longer sure to coordinate: the next tick says
            if node_id in refused:
                continue
            try:
                after = await grant(
                    self.db,
                    lease.partition,
                    node_id=node_id,
                    session_id=nodes[node_id].session_id,
                    expect=lease,
                )
            except (LeaseConflictError, OwnerStillAliveError) as exc:
                log.info("grant of %s not made, read again next step: %s", lease.partition, exc)
                continue
            except NodeNotAliveError:
                log.info("node %s is no longer alive: nothing more granted to it", node_id)
                refused.add(node_id)
                continue
            log.warning(
                "partition %s granted to node %s (epoch %d), from session %s of node %s",
                lease.partition,
                node_id,
                after.epoch,
                lease.session_id,
                lease.owner,
            )
            granted.append(Grant(after, lease))
            waiting -= 1
        return granted, waiting

    async def run(self) -> None:
        """:meth:`step` every H until cancelled; a round the catalog cannot be reached in
        is skipped."""
        while True:
            try:
                await self.step()
            except CatalogUnavailableError as exc:
                log.info("coordinator skipped a round: %s", exc)
            await self.sleep(self.timing.heartbeat_s)

    async def release(self) -> None:
        """A planned stop: give the coordinator lease up, so another node takes it at
        once."""
        await self.lease.release()
