"""The coordinator lease and partition leases, in the ``leases`` table (where each item
lives is in :mod:`.keys`), built on the node sessions of :mod:`.nodes`: how a session is
kept alive, self-fences, is judged dead by an observer's own clock and is fenced on the
exact counter seen is said there.

**Coordinator** (:class:`CoordinatorLease`): one row, held by one node session and
renewed with the same counter rule; a contender takes it over only after watching its
counter unchanged for L on its own clock, conditioned on that counter. Two nodes may
believe for a moment that they coordinate (the old one has not noticed yet); that corrupts
nothing, because every decision a coordinator makes is a conditional write on what it
read, and of two conflicting ones DynamoDB applies at most one.

**Partition leases**: owner node, session, ``epoch``, state (``active``, ``recovering``,
``moving``) and ``sources``, the sessions whose write-ahead logs a new owner replays.
:func:`grant` is one transaction: a check that the grantee's node row is alive with that
session, a check that the old owner's session is *not* alive (fenced, left or replaced),
and the lease moved on (``epoch + 1``, ``recovering``, the old session appended to
``sources``) on the condition of the old owner, session and epoch; a first grant instead
needs the lease not to exist. :func:`hand_over` is a planned move: the owner's own
transaction, with its own session checked alive, so nobody waits L. :func:`mark_active`
ends recovery. :func:`epoch_check` is the check that every owner-side catalog write about
a partition carries (seal, add a remote segment, advance the start offset), so a stale
owner's write fails.

**The invariant**: a partition changes owner only by its owner's own hand-over, or after
the owner's whole session is fenced. The grant transaction enforces it itself, whatever the
caller believes: it is refused while the old owner's session is alive.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import LeaseFence
from partitions.catalog_dynamodb.client import (
    ConditionFailed,
    Dynamo,
    TransactionRefused,
    item,
    values,
)
from partitions.catalog_dynamodb.nodes import (
    Clock,
    Session,
    Timing,
    expression,
    node_alive,
    node_not_alive,
)
from partitions.catalog_dynamodb.tables import LEASES_BY_OWNER
from partitions.errors import (
    CatalogUnavailableError,
    LeaseConflictError,
    LeaseLostError,
    NodeNotAliveError,
    OwnerStillAliveError,
    SessionFencedError,
)

log = logging.getLogger(__name__)


# --- the coordinator lease -----------------------------------------------------------------


class CoordinatorLease:
    """One node session's claim on the coordinator row. Call :meth:`tick` every H: it
    renews the lease when held, and otherwise acquires it if the row is free or its
    holder's counter has stayed unchanged for L on this clock. ``held`` says whether to
    act as coordinator now (until ``t0 + L - M`` of the last renewal)."""

    def __init__(self, db: Dynamo, session: Session, *, timing: Timing, clock: Clock) -> None:
        self.db = db
        self.session = session
        self.timing = timing
        self.clock = clock
        self.valid_until = -math.inf
        self._mine = False
        self._seen: tuple[str, int, float] | None = None

    @property
    def held(self) -> bool:
        return self._mine and self.clock() < self.valid_until

    async def _landed(self) -> bool:
        now = await self.db.get("read coordinator", "leases", keys.coordinator())
        return now is not None and now["session"] == self.session.session_id

    async def tick(self) -> bool:
        """Renew or try to acquire; answers ``held``."""
        if self._mine:
            await self._renew()
            return self.held
        found = await self.db.get("read coordinator", "leases", keys.coordinator())
        now = self.clock()
        if found is None:
            claim: dict[str, Any] = {
                "Put": {
                    "TableName": self.db.table("leases"),
                    "Item": {
                        **keys.coordinator(),
                        **item(
                            node=self.session.node_id, session=self.session.session_id, counter=0
                        ),
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        elif found["session"] == self.session.session_id:
            self._mine = True  # ours already (a claim whose answer was lost)
            await self._renew()
            return self.held
        else:
            seen = (str(found["session"]), int(found["counter"]))
            if self._seen is None or self._seen[:2] != seen:
                self._seen = (*seen, now)
                return False
            if now - self._seen[2] < self.timing.lease_s:
                return False
            claim = {
                "Update": {
                    "TableName": self.db.table("leases"),
                    "Key": keys.coordinator(),
                    **expression(
                        UpdateExpression="SET #node = :node, #session = :mine, #counter = :next",
                        ConditionExpression="#session = :holder AND #counter = :c",
                    ),
                    "ExpressionAttributeValues": values(
                        node=self.session.node_id,
                        mine=self.session.session_id,
                        next=seen[1] + 1,
                        holder=seen[0],
                        c=seen[1],
                    ),
                }
            }
        actions = [node_alive(self.db, self.session.node_id, self.session.session_id), claim]
        t0 = self.clock()
        try:
            await self.db.transact("claim coordinator", actions, landed=self._landed)
        except TransactionRefused:
            return False
        self._mine = True
        self.valid_until = self.timing.valid_until(t0)
        log.info("node %s is the coordinator", self.session.node_id)
        return self.held

    async def _renew(self) -> None:
        t0 = self.clock()
        try:
            await self.db.write(
                "renew coordinator",
                "update_item",
                landed=None,  # a counter that moves twice is still moving
                TableName=self.db.table("leases"),
                Key=keys.coordinator(),
                **expression(
                    UpdateExpression="SET #counter = #counter + :one",
                    ConditionExpression="#session = :mine",
                ),
                ExpressionAttributeValues=values(one=1, mine=self.session.session_id),
            )
        except ConditionFailed:
            log.warning("node %s lost the coordinator lease", self.session.node_id)
            self._mine = False
            self.valid_until = -math.inf
            return
        except CatalogUnavailableError as exc:
            log.info("coordinator lease not renewed: %s", exc)
            return
        self.valid_until = max(self.valid_until, self.timing.valid_until(t0))

    async def release(self) -> None:
        """Give the lease up (a planned stop): another node may take it at once."""
        self._mine = False
        self.valid_until = -math.inf

        async def gone() -> bool:
            return not await self._landed()

        with contextlib.suppress(ConditionFailed):
            await self.db.write(
                "release coordinator",
                "delete_item",
                landed=gone,
                TableName=self.db.table("leases"),
                Key=keys.coordinator(),
                **expression(ConditionExpression="#session = :mine"),
                ExpressionAttributeValues=values(mine=self.session.session_id),
            )


# --- partition leases ----------------------------------------------------------------------


class LeaseState(enum.StrEnum):
    ACTIVE = "active"  # the owner serves it
    RECOVERING = "recovering"  # the owner replays its sources before serving
    MOVING = "moving"  # the owner froze it to hand it over


@dataclass(frozen=True, slots=True, order=True)
class PartitionRef:
    tenant: str
    incarnation: str
    partition: int

    def key(self) -> dict[str, Any]:
        return keys.partition_lease(self.tenant, self.incarnation, self.partition)


@dataclass(frozen=True, slots=True)
class Source:
    """A session whose write-ahead log holds records of the partition not yet uploaded."""

    node_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class Lease:
    partition: PartitionRef
    owner: str
    session_id: str
    epoch: int
    state: LeaseState
    sources: tuple[Source, ...] = field(default=())


def _lease(partition: PartitionRef, row: Mapping[str, Any]) -> Lease:
    return Lease(
        partition=partition,
        owner=str(row["owner"]),
        session_id=str(row["session"]),
        epoch=int(row["epoch"]),
        state=LeaseState(row["state"]),
        sources=tuple(Source(str(s["node"]), str(s["session"])) for s in row.get("sources", [])),
    )


def _ref(row: Mapping[str, Any]) -> PartitionRef:
    """The partition a lease item is about (each carries its tenant, incarnation and id)."""
    return PartitionRef(str(row["tenant"]), str(row["incarnation"]), int(row["pid"]))


async def read_lease(db: Dynamo, partition: PartitionRef) -> Lease | None:
    found = await db.get("read lease", "leases", partition.key())
    return None if found is None else _lease(partition, found)


async def list_leases(db: Dynamo, tenant: str, incarnation: str) -> list[Lease]:
    """The leases of one incarnation's partitions, by partition id."""
    rows = await db.query(
        "list leases",
        "leases",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.leases_pk(tenant, incarnation)),
    )
    return [_lease(PartitionRef(tenant, incarnation, int(r["pid"])), r) for r in rows]


async def leases_of(db: Dynamo, node_id: str, session_id: str | None = None) -> list[Lease]:
    """The partition leases held by ``node_id`` (by its session ``session_id`` only, if
    given), found through the index ``by_owner`` and each read again from the table: the
    index is eventually consistent, so a lease that has moved meanwhile is left out, and
    what is answered is the lease as it is now (what a grant's ``expect`` needs). By
    partition."""
    condition = "#owner = :owner"
    given: dict[str, Any] = {"owner": node_id}
    if session_id is not None:
        condition += " AND #session = :session"
        given["session"] = session_id
    found = await db.query(
        "find leases by owner",
        "leases",
        index=LEASES_BY_OWNER,
        **expression(KeyConditionExpression=condition),
        ExpressionAttributeValues=values(**given),
    )
    refs = {_ref(row) for row in found}
    rows = await db.batch_get("read leases", "leases", [ref.key() for ref in refs])
    out = []
    for row in rows:
        lease = _lease(_ref(row), row)
        if lease.owner == node_id and session_id in (None, lease.session_id):
            out.append(lease)
    return sorted(out, key=lambda lease: lease.partition)


def epoch_check(db: Dynamo, partition: PartitionRef, session_id: str, epoch: int) -> dict[str, Any]:
    """A transaction's check that ``session_id`` still owns ``partition`` at ``epoch``:
    carried by every owner-side catalog write about the partition."""
    return {
        "ConditionCheck": {
            "TableName": db.table("leases"),
            "Key": partition.key(),
            **expression(ConditionExpression="#session = :session AND #epoch = :epoch"),
            "ExpressionAttributeValues": values(session=session_id, epoch=epoch),
        }
    }


def fence_check(
    db: Dynamo, tenant: str, incarnation: str, partition_id: int, fence: LeaseFence
) -> dict[str, Any]:
    """:func:`epoch_check` of the lease a catalog write about a partition carries."""
    return epoch_check(
        db, PartitionRef(tenant, incarnation, partition_id), fence.session_id, fence.epoch
    )


def lease_lost(partition_id: int) -> LeaseLostError:
    """What a refused :func:`fence_check` means to the writer (no session or epoch in it:
    the message may reach a client)."""
    return LeaseLostError(
        f"this node no longer owns partition {partition_id}; nothing was changed",
        partition=partition_id,
    )


# A transaction's check, and the error its refusal means.
Check = tuple[dict[str, Any], Exception]


async def _lease_move(
    db: Dynamo,
    what: str,
    partition: PartitionRef,
    checks: list[Check],
    change: dict[str, Any],
) -> Lease:
    """Run ``checks`` then ``change`` (which writes ``op``) as one transaction; answers
    the lease after it. A refused transaction raises the typed error of its first failed
    action; a refused ``change`` is a :class:`LeaseConflictError`."""
    op = uuid.uuid4().hex

    async def landed() -> bool:
        found = await db.get("read back lease", "leases", partition.key())
        return found is not None and found.get("op") == op

    change = _with_op(change, op)
    try:
        await db.transact(what, [*(c for c, _ in checks), change], landed=landed)
    except TransactionRefused as refused:
        if refused.failed(len(checks)):
            current = await read_lease(db, partition)
            raise LeaseConflictError(
                f"the lease of {partition} is not as read",
                current=None
                if current is None
                else {"owner": current.owner, "epoch": current.epoch, "state": current.state},
            ) from None
        for index, (_, error) in enumerate(checks):
            if refused.failed(index):
                raise error from None
        raise
    lease = await read_lease(db, partition)
    if lease is None:  # removed right after (the partition's topic was purged)
        raise LeaseConflictError(f"the lease of {partition} is gone", current=None)
    return lease


def _with_op(change: dict[str, Any], op: str) -> dict[str, Any]:
    if "Put" in change:
        put = dict(change["Put"])
        put["Item"] = {**put["Item"], **item(op=op)}
        return {"Put": put}
    update = dict(change["Update"])
    update["UpdateExpression"] += ", #op = :op"
    update["ExpressionAttributeNames"] = {**update.get("ExpressionAttributeNames", {}), "#op": "op"}
    update["ExpressionAttributeValues"] = {**update["ExpressionAttributeValues"], **values(op=op)}
    return {"Update": update}


async def grant(
    db: Dynamo,
    partition: PartitionRef,
    *,
    node_id: str,
    session_id: str,
    expect: Lease | None,
) -> Lease:
    """Give ``partition`` to ``node_id``'s session ``session_id`` (the coordinator's
    decision), in one transaction checked against ``expect``, the lease as read.

    ``expect=None``: a first grant (a new partition), ``active`` at epoch 1 with nothing
    to replay, refused if a lease exists. Otherwise the lease moves on to ``epoch + 1``,
    ``recovering``, the old session appended to ``sources``; refused unless the lease is
    still held by ``expect``'s owner, session and epoch, and unless that session is over.
    Raises :class:`NodeNotAliveError` (the grantee), :class:`OwnerStillAliveError`,
    :class:`LeaseConflictError`."""
    if expect is not None and expect.session_id == session_id:
        raise ValueError("a partition is granted to another session than its owner's")
    checks: list[Check] = [
        (
            node_alive(db, node_id, session_id),
            NodeNotAliveError(f"node {node_id} is not alive as session {session_id}", node=node_id),
        )
    ]
    if expect is None:
        change: dict[str, Any] = {
            "Put": {
                "TableName": db.table("leases"),
                "Item": {
                    **partition.key(),
                    **item(
                        tenant=partition.tenant,
                        incarnation=partition.incarnation,
                        pid=partition.partition,
                        owner=node_id,
                        session=session_id,
                        epoch=1,
                        state=LeaseState.ACTIVE.value,
                        sources=[],
                    ),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
    else:
        if expect.owner != node_id:
            # A session of the grantee's own node is over once the grantee's is alive:
            # one check covers both (a transaction never touches one item twice).
            checks.append(
                (
                    node_not_alive(db, expect.owner, expect.session_id),
                    OwnerStillAliveError(
                        f"the owner of {partition}, node {expect.owner}, is still alive",
                        node=expect.owner,
                    ),
                )
            )
        change = _moved(db, expect, node_id, session_id)
    return await _lease_move(db, "grant partition", partition, checks, change)


def _moved(db: Dynamo, expect: Lease, node_id: str, session_id: str) -> dict[str, Any]:
    """The lease update of a grant or a hand-over from ``expect``."""
    return {
        "Update": {
            "TableName": db.table("leases"),
            "Key": expect.partition.key(),
            **expression(
                UpdateExpression=(
                    "SET #owner = :to, #session = :ts, #epoch = :next, #state = :recovering, "
                    "#sources = list_append(#sources, :old)"
                ),
                ConditionExpression="#owner = :o AND #session = :os AND #epoch = :e",
            ),
            "ExpressionAttributeValues": values(
                to=node_id,
                ts=session_id,
                next=expect.epoch + 1,
                recovering=LeaseState.RECOVERING.value,
                old=[{"node": expect.owner, "session": expect.session_id}],
                o=expect.owner,
                os=expect.session_id,
                e=expect.epoch,
            ),
        }
    }


async def hand_over(db: Dynamo, lease: Lease, *, node_id: str, session_id: str) -> Lease:
    """A planned move, by the owner itself (after freezing the partition and flushing its
    write-ahead log): one transaction checking the owner's own session alive and the
    grantee's, moving the lease on as :func:`grant` does. Nobody waits L: the owner says
    it is done."""
    if node_id == lease.owner:
        raise ValueError("a partition is handed over to another node")
    checks: list[Check] = [
        (
            node_alive(db, node_id, session_id),
            NodeNotAliveError(f"node {node_id} is not alive as session {session_id}", node=node_id),
        ),
        (
            node_alive(db, lease.owner, lease.session_id),
            SessionFencedError(
                f"node {lease.owner}'s session {lease.session_id} is no longer alive",
                node=lease.owner,
            ),
        ),
    ]
    return await _lease_move(
        db, "hand over partition", lease.partition, checks, _moved(db, lease, node_id, session_id)
    )


async def _owner_sets_state(
    db: Dynamo, what: str, lease: Lease, to: LeaseState, from_: LeaseState
) -> Lease:
    change = {
        "Update": {
            "TableName": db.table("leases"),
            "Key": lease.partition.key(),
            **expression(
                UpdateExpression="SET #state = :to",
                ConditionExpression="#session = :s AND #epoch = :e AND #state = :was",
            ),
            "ExpressionAttributeValues": values(
                to=to.value, s=lease.session_id, e=lease.epoch, was=from_.value
            ),
        }
    }
    return await _lease_move(db, what, lease.partition, [], change)


async def mark_active(db: Dynamo, lease: Lease) -> Lease:
    """The owner has replayed its sources and serves: ``recovering`` to ``active`` at the
    same epoch. The sources stay until their records are uploaded."""
    return await _owner_sets_state(
        db, "partition recovered", lease, LeaseState.ACTIVE, LeaseState.RECOVERING
    )


async def mark_moving(db: Dynamo, lease: Lease) -> Lease:
    """The owner froze the partition to hand it over: ``active`` to ``moving`` (requests
    wait or are told to retry until the new owner serves)."""
    return await _owner_sets_state(
        db, "partition moving", lease, LeaseState.MOVING, LeaseState.ACTIVE
    )
