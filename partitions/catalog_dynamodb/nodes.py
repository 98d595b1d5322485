"""Node sessions, failure detection and fencing: the node rows of the ``leases`` table
(where each item lives is in :mod:`.keys`).

Time is only ever compared on one machine's own monotonic clock (injected as ``clock``,
seconds). Nothing here reads a wall clock, and no time is ever written for another machine
to compare: what crosses machines is a heartbeat *counter*.

**Sessions.** Every process start joins as a new session (a fresh id) and puts its node row,
state ``alive``, counter 0. It then heartbeats every H: add one to the counter, on the
condition that the row still holds its session and is alive. Before sending it notes its
clock ``t0``; once the heartbeat has landed, the session is valid until ``t0 + L - M``.
A refused heartbeat raises :class:`~partitions.errors.SessionFencedError`: the session is
over. If DynamoDB cannot be reached past valid-until, :class:`Liveness` **self-fences**:
``alive`` turns false and ``ended`` is set, and it never turns true again for that session
(the process rejoins as a new one). Whoever acknowledges writes checks ``alive`` first.

**A node id already alive.** A join under a node id whose row is alive with another
session does not take the row over blindly: it watches that session's counter on its own
clock, and only once it has stayed unchanged for L does it replace the row, in one put
conditioned on the exact session and counter it watched (which fences the old session:
its next heartbeat fails). If the counter moves, the id is in use by a live process and
the join raises :class:`~partitions.errors.NodeIdInUseError`. A row that is fenced or left
is replaced at once (conditioned on what was read, so two racing joins do not both win).

**Detection** (:class:`NodeWatch`, run by the coordinator): read the node rows every H and
remember, per node, when *this* observer first saw its current (session, counter), by its
own clock taken after the read answered. A node whose counter has stayed the same for L or
more is dead; one whose counter moves is never dead, whatever the clocks say. Why this is
safe: the heartbeat that wrote counter c was sent at the node's ``t0``, before the read
that first showed c answered; so the observer calls the node dead no sooner than L after
``t0``, while the node stopped acknowledging at ``t0 + L - M`` (M covers clocks running at
slightly different rates).

**Fencing**: a conditional update to ``fenced`` on the exact session *and counter* seen. A
heartbeat landing between the read and the fence makes the fence fail: no live node is
ever fenced because it was read a moment too early.

The coordinator lease and partition leases, which build on these, are in :mod:`.leases`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog_dynamodb.client import ConditionFailed, Dynamo, item, values
from partitions.errors import CatalogUnavailableError, NodeIdInUseError, SessionFencedError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

ALIVE = "alive"
FENCED = "fenced"
LEFT = "left"


@dataclass(frozen=True, slots=True)
class Timing:
    """Heartbeat every ``heartbeat_s`` (H); a counter unchanged for ``lease_s`` (L) is
    dead; a node stops acknowledging ``margin_s`` (M) before that."""

    heartbeat_s: float = 1.0
    lease_s: float = 10.0
    margin_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.margin_s < self.lease_s:
            raise ValueError("the margin is positive and shorter than the lease")
        if not 0 < self.heartbeat_s < self.lease_s - self.margin_s:
            raise ValueError("a heartbeat comes more often than lease minus margin")

    def valid_until(self, t0: float) -> float:
        """Until when a heartbeat sent at ``t0`` (the sender's clock) keeps it valid."""
        return t0 + self.lease_s - self.margin_s


def expression(**parts: str) -> dict[str, Any]:
    """Expression parameters with every ``#name`` in them declared (DynamoDB refuses
    both undeclared and unused names, and many attribute names here are reserved
    words)."""
    used = sorted(set(re.findall(r"#(\w+)", " ".join(parts.values()))))
    out: dict[str, Any] = dict(parts)
    if used:
        out["ExpressionAttributeNames"] = {f"#{name}": name for name in used}
    return out


# --- sessions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One process start of a node: what :func:`join` answers."""

    node_id: str
    session_id: str
    address: str
    # The joiner's clock: until when the join itself keeps the session valid.
    valid_until: float


# A condition: the node row holds the session ``:session`` and is alive (``:alive``).
_ALIVE_AS = "#session = :session AND #state = :alive"


async def _node_row(db: Dynamo, node_id: str) -> dict[str, Any] | None:
    return await db.get("read node", "leases", keys.node(node_id))


async def join(
    db: Dynamo,
    node_id: str,
    address: str,
    *,
    timing: Timing,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
    load: Mapping[str, int] | None = None,
) -> Session:
    """Start a new session of ``node_id`` and put its row alive. A row alive under another
    session is replaced only once its counter has stayed unchanged for L on this clock
    (see the module's rules); a live one raises :class:`NodeIdInUseError`."""
    session_id = uuid.uuid4().hex
    while True:
        found = await _node_row(db, node_id)
        if found is not None and found["state"] == ALIVE:
            await _wait_until_dead(db, node_id, found, timing=timing, clock=clock, sleep=sleep)
        row = {
            **keys.node(node_id),
            **item(
                node=node_id,
                session=session_id,
                address=address,
                state=ALIVE,
                counter=0,
                load=dict(load or {}),
            ),
        }
        if found is None:
            condition = expression(ConditionExpression="attribute_not_exists(pk)")
        else:
            # Exactly the row read (for an alive one: the counter watched), so of two
            # racing joins one wins, and a session that heartbeat meanwhile is not replaced.
            condition = {
                **expression(
                    ConditionExpression="#session = :old AND #counter = :c AND #state = :seen"
                ),
                "ExpressionAttributeValues": values(
                    old=found["session"], c=found["counter"], seen=found["state"]
                ),
            }

        async def landed() -> bool:
            now = await _node_row(db, node_id)
            return now is not None and now["session"] == session_id

        t0 = clock()
        try:
            await db.write(
                "join",
                "put_item",
                landed=landed,
                TableName=db.table("leases"),
                Item=row,
                **condition,
            )
        except ConditionFailed:
            continue  # someone else wrote the row meanwhile: read it again
        log.info("node %s joined as session %s", node_id, session_id)
        return Session(node_id, session_id, address, timing.valid_until(t0))


async def _wait_until_dead(
    db: Dynamo,
    node_id: str,
    found: dict[str, Any],
    *,
    timing: Timing,
    clock: Clock,
    sleep: Sleep,
) -> None:
    """Watch an alive row's counter until it has stayed the same for L on ``clock``;
    raise :class:`NodeIdInUseError` if it moves (the session lives)."""
    seen = (found["session"], found["counter"])
    since = clock()
    while clock() - since < timing.lease_s:
        await sleep(timing.heartbeat_s)
        now = await _node_row(db, node_id)
        if now is None or now["state"] != ALIVE:
            return  # it left or was fenced meanwhile: the caller reads it again
        if (now["session"], now["counter"]) != seen:
            raise NodeIdInUseError(
                f"node id {node_id!r} is in use by a live session ({now['session']})",
                node=node_id,
            )


async def heartbeat(
    db: Dynamo,
    session: Session,
    *,
    timing: Timing,
    clock: Clock,
    load: Mapping[str, int] | None = None,
) -> float:
    """One heartbeat: the counter plus one, on the condition that the row still holds this
    session alive. Answers until when (on ``clock``) the session is valid. A refusal raises
    :class:`SessionFencedError`. Sent again after an unknown outcome as it is: a counter
    that moves twice is still a live counter."""
    update = "SET #counter = #counter + :one"
    names: dict[str, Any] = {"one": 1, "session": session.session_id, "alive": ALIVE}
    if load is not None:
        update += ", #load = :load"
        names["load"] = dict(load)
    t0 = clock()
    try:
        await db.write(
            "heartbeat",
            "update_item",
            landed=None,
            TableName=db.table("leases"),
            Key=keys.node(session.node_id),
            **expression(
                UpdateExpression=update,
                ConditionExpression=_ALIVE_AS,
            ),
            ExpressionAttributeValues=values(**names),
        )
    except ConditionFailed:
        raise SessionFencedError(
            f"node {session.node_id}'s session {session.session_id} is no longer alive",
            node=session.node_id,
        ) from None
    return timing.valid_until(t0)


async def leave(db: Dynamo, session: Session) -> bool:
    """Mark the session ``left`` (a planned stop, after its partitions were handed over):
    its remaining leases can be granted at once. Answers whether it was still alive."""

    async def landed() -> bool:
        now = await _node_row(db, session.node_id)
        return now is None or now["session"] != session.session_id or now["state"] != ALIVE

    try:
        await db.write(
            "leave",
            "update_item",
            landed=landed,
            TableName=db.table("leases"),
            Key=keys.node(session.node_id),
            **expression(
                UpdateExpression="SET #state = :left",
                ConditionExpression=_ALIVE_AS,
            ),
            ExpressionAttributeValues=values(left=LEFT, session=session.session_id, alive=ALIVE),
        )
    except ConditionFailed:
        return False
    return True


class Ended(enum.StrEnum):
    """Why a session stopped being alive."""

    FENCED = "fenced"  # a heartbeat was refused
    LAPSED = "lapsed"  # DynamoDB not reached before valid-until: self-fenced
    LEFT = "left"  # stopped on purpose


class Liveness:
    """Keeps one session alive: a heartbeat every H (never two in flight), and the
    self-fence. ``alive`` is what the server checks before acknowledging anything; once
    false it stays false, and ``ended`` is set (``reason`` says why).

    Each heartbeat is given at most ``beat_timeout_s`` of the event loop's own time
    (default H) before it is abandoned and the next one sent; validity is decided on
    ``clock`` alone."""

    def __init__(
        self,
        db: Dynamo,
        session: Session,
        *,
        timing: Timing,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        load: Callable[[], Mapping[str, int]] | None = None,
        beat_timeout_s: float | None = None,
    ) -> None:
        self.db = db
        self.session = session
        self.timing = timing
        self.clock = clock
        self.sleep = sleep
        self.load = load
        self.beat_timeout_s = timing.heartbeat_s if beat_timeout_s is None else beat_timeout_s
        self.valid_until = session.valid_until
        self.ended = asyncio.Event()
        self.reason: Ended | None = None
        self._beat: asyncio.Task[bool] | None = None

    @property
    def alive(self) -> bool:
        return self.reason is None and self.clock() < self.valid_until

    def check(self) -> bool:
        """End the session (self-fence) if its clock has passed valid-until; answers
        ``alive``."""
        if self.reason is None and self.clock() >= self.valid_until:
            log.warning(
                "node %s session %s: the catalog was not reached in time; self-fenced",
                self.session.node_id,
                self.session.session_id,
            )
            self._end(Ended.LAPSED)
        return self.alive

    def _end(self, reason: Ended) -> None:
        if self.reason is None:
            self.reason = reason
            self.ended.set()
        if self._beat is not None and self._beat is not asyncio.current_task():
            self._beat.cancel()

    async def beat(self) -> bool:
        """One heartbeat; answers whether it landed. A refusal ends the session
        (``FENCED``); an unreachable catalog only leaves valid-until where it was."""
        if not self.check():
            return False
        try:
            async with asyncio.timeout(self.beat_timeout_s):
                until = await heartbeat(
                    self.db,
                    self.session,
                    timing=self.timing,
                    clock=self.clock,
                    load=None if self.load is None else self.load(),
                )
        except SessionFencedError:
            log.warning(
                "node %s session %s was fenced", self.session.node_id, self.session.session_id
            )
            self._end(Ended.FENCED)
            return False
        except (CatalogUnavailableError, TimeoutError) as exc:
            log.info("heartbeat of node %s did not land: %s", self.session.node_id, exc)
            return False
        if self.reason is not None:
            return False  # landed after the session ended: it stays ended
        self.valid_until = max(self.valid_until, until)
        return True

    async def run(self) -> None:
        """Heartbeat every H until the session ends (or the task is cancelled)."""
        try:
            while self.check():
                if self._beat is None or self._beat.done():
                    self._beat = asyncio.create_task(self.beat())
                await self.sleep(self.timing.heartbeat_s)
        finally:
            if self._beat is not None and not self._beat.done():
                self._beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._beat

    async def leave(self) -> None:
        """Stop on purpose: end the session here, then mark its row ``left``."""
        self._end(Ended.LEFT)
        await leave(self.db, self.session)


# --- detection and fencing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node row as one observer saw it, and since when (its own clock) it has seen this
    session with this counter."""

    node_id: str
    session_id: str
    address: str
    state: str
    counter: int
    load: Mapping[str, int]
    since: float
    dead: bool

    @property
    def live(self) -> bool:
        """Alive in the row and not judged dead by this observer."""
        return self.state == ALIVE and not self.dead


class NodeWatch:
    """The coordinator's failure detector: :meth:`poll` every H, :meth:`fence` the dead.

    A new watch knows nothing: it judges a node only after watching it for L itself."""

    def __init__(
        self, db: Dynamo, *, timing: Timing, clock: Clock, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.db = db
        self.timing = timing
        self.clock = clock
        self.sleep = sleep
        self._first_seen: dict[str, tuple[str, int, float]] = {}
        self.nodes: dict[str, NodeView] = {}

    async def poll(self) -> dict[str, NodeView]:
        """Read every node row; answers them by node id, each judged alive or dead."""
        rows = await self.db.query(
            "read nodes",
            "leases",
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues=values(pk=keys.NODES),
        )
        now = self.clock()  # after the answer: never earlier than the counter's heartbeat
        views = {}
        for row in rows:
            node_id = str(row["node"])
            session_id, counter = str(row["session"]), int(row["counter"])
            first = self._first_seen.get(node_id)
            if first is None or first[:2] != (session_id, counter):
                first = (session_id, counter, now)
                self._first_seen[node_id] = first
            since = first[2]
            views[node_id] = NodeView(
                node_id=node_id,
                session_id=session_id,
                address=str(row.get("address", "")),
                state=str(row["state"]),
                counter=counter,
                load=dict(row.get("load") or {}),
                since=since,
                dead=row["state"] == ALIVE and now - since >= self.timing.lease_s,
            )
        for gone in set(self._first_seen) - set(views):
            del self._first_seen[gone]
        self.nodes = views
        return views

    def live(self) -> list[NodeView]:
        """The nodes alive as of the last poll, by node id (for placement and homes)."""
        return sorted((v for v in self.nodes.values() if v.live), key=lambda v: v.node_id)

    def dead(self) -> list[NodeView]:
        return sorted((v for v in self.nodes.values() if v.dead), key=lambda v: v.node_id)

    async def fence(self, view: NodeView) -> bool:
        """Fence ``view``'s session on the exact counter seen; answers whether this call
        (or an earlier identical one) fenced it. ``False``: it heartbeat, left or was
        replaced meanwhile, and is not fenced."""
        return await fence(self.db, view.node_id, view.session_id, view.counter)

    async def step(self) -> list[NodeView]:
        """One poll, then fence every node judged dead; answers those fenced."""
        await self.poll()
        return [view for view in self.dead() if await self.fence(view)]

    async def run(self, on_fenced: Callable[[NodeView], Awaitable[None]] | None = None) -> None:
        """:meth:`step` every H until cancelled; an unreachable catalog skips a round."""
        while True:
            try:
                for view in await self.step():
                    log.warning("node %s (session %s) fenced", view.node_id, view.session_id)
                    if on_fenced is not None:
                        await on_fenced(view)
            except CatalogUnavailableError as exc:
                log.info("node watch skipped a round: %s", exc)
            await self.sleep(self.timing.heartbeat_s)


async def fence(db: Dynamo, node_id: str, session_id: str, counter: int) -> bool:
    """The conditional update to ``fenced`` on the exact session and counter seen."""

    async def landed() -> bool:
        now = await _node_row(db, node_id)
        return (
            now is not None
            and now["session"] == session_id
            and now["counter"] == counter
            and now["state"] == FENCED
        )

    try:
        await db.write(
            "fence node",
            "update_item",
            landed=landed,
            TableName=db.table("leases"),
            Key=keys.node(node_id),
            **expression(
                UpdateExpression="SET #state = :fenced",
                ConditionExpression="#session = :session AND #counter = :c AND #state = :alive",
            ),
            ExpressionAttributeValues=values(
                fenced=FENCED, session=session_id, c=counter, alive=ALIVE
            ),
        )
    except ConditionFailed:
        return False
    return True


def node_alive(db: Dynamo, node_id: str, session_id: str) -> dict[str, Any]:
    """A transaction's check that ``node_id``'s row is alive with ``session_id``."""
    return {
        "ConditionCheck": {
            "TableName": db.table("leases"),
            "Key": keys.node(node_id),
            **expression(ConditionExpression=_ALIVE_AS),
            "ExpressionAttributeValues": values(session=session_id, alive=ALIVE),
        }
    }


def node_not_alive(db: Dynamo, node_id: str, session_id: str) -> dict[str, Any]:
    """A transaction's check that ``session_id`` of ``node_id`` is over: fenced, left,
    replaced by a newer session, or the row gone."""
    return {
        "ConditionCheck": {
            "TableName": db.table("leases"),
            "Key": keys.node(node_id),
            **expression(
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #session <> :session OR #state <> :alive"
                )
            ),
            "ExpressionAttributeValues": values(session=session_id, alive=ALIVE),
        }
    }
