"""Idempotent produce over worker processes: an idempotency key's answers are kept by one
worker, its home (``homes.answer_home``), wherever the request's connection landed.

The worker that accepted the produce asks the home what to write (:class:`RemoteAnswerHome`,
``ANSWER_CLAIM``): nothing, for an answered request (the answer comes back), or the records
not written yet. It writes them itself, tagged as usual, and tells the home where they went
(``ANSWER_SETTLE``): two small calls, and the records never travel twice. The home
(:class:`AnswerKeeper`) holds the attempt for that connection: if the writer dies, the
request's partitions are marked unsure and the next attempt reads their producer tags first.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from gateway.broker.answers import AnswerClaim
from gateway.broker.service import Broker
from gateway.broker.topology import AnswerTicket
from gateway.processes.peers import ANSWER_CLAIM, ANSWER_SETTLE, Peers
from partitions.channel import Connection, Payload
from partitions.errors import PartitionUnavailableError


class RemoteAnswerHome:
    """The answers of keys whose home is worker ``home``, asked over the channel."""

    def __init__(self, peers: Peers, home: int) -> None:
        self._peers = peers
        self._home = home

    async def claim(
        self,
        tenant: str,
        topic: str,
        incarnation: str,
        key: str,
        request_hash: bytes,
        total: int,
    ) -> AnswerTicket:
        body = {"t": tenant, "n": topic, "i": incarnation, "k": key, "h": request_hash.hex()}
        answer: dict[str, Any] = await self._peers.ask(
            self._home, ANSWER_CLAIM, {**body, "c": total}
        )
        if answer.get("answer") is not None:
            return AnswerTicket([(int(p), int(o)) for p, o in answer["answer"]])
        return AnswerTicket(
            None,
            missing=[int(i) for i in answer["missing"]],
            request_hash=bytes.fromhex(answer["h"]),
            accepted_ms=int(answer["a"]),
            total_records=int(answer["c"]),
            token=int(answer["token"]),
        )

    async def settle(
        self,
        ticket: AnswerTicket,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> list[tuple[int, int]] | None:
        body = {
            "token": ticket.token,
            "placed": [[i, p, o] for i, (p, o) in placed],
            "lost": sorted(lost),
        }
        answer = await self._peers.ask(self._home, ANSWER_SETTLE, body)
        if answer is None:
            return None
        return [(int(p), int(o)) for p, o in answer]


class AnswerKeeper:
    """The home's side: attempts of other processes at the keys kept here."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        # Each attempt run by another process: the claim, and the topic's partitions (all
        # unsure if the process goes away).
        self._claims: dict[int, tuple[AnswerClaim, list[int]]] = {}
        self._claims_of: dict[Connection, set[int]] = {}
        self._ids = itertools.count(1)

    def register(self, peers: Peers) -> None:
        peers.server.register(ANSWER_CLAIM, self._claim)
        peers.register_json(ANSWER_SETTLE, self._settle)

    async def _claim(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        body = orjson.loads(meta)
        broker = self._broker
        tenant, topic, incarnation = str(body["t"]), str(body["n"]), str(body["i"])
        view = await broker.view(tenant, topic)
        if view.record.incarnation != incarnation:
            await broker.refresh_topic(tenant, topic)
            view = await broker.view(tenant, topic)
            if view.record.incarnation != incarnation:
                raise PartitionUnavailableError(
                    f"topic {topic!r} changed while producing; retry", topic=topic
                )
        claim = await broker.idempotent.claim(
            tenant, view, str(body["k"]), bytes.fromhex(body["h"]), int(body["c"])
        )
        entry = claim.entry
        if claim.busy is None:
            return orjson.dumps({"answer": entry.answer()}), b""
        token = next(self._ids)
        self._claims[token] = (claim, sorted(view.partitions))
        tokens = self._claims_of.get(conn)
        if tokens is None:
            tokens = self._claims_of[conn] = set()
            conn.on_close.append(lambda: self._claimer_gone(conn))
        tokens.add(token)
        answer = {
            "token": token,
            "missing": entry.missing(),
            "h": entry.request_hash.hex(),
            "a": entry.accepted_ms,
            "c": entry.total_records,
        }
        return orjson.dumps(answer), b""

    def _claimer_gone(self, conn: Connection) -> None:
        """The process writing attempts went away: what they wrote is unknown."""
        for token in self._claims_of.pop(conn, set()):
            found = self._claims.pop(token, None)
            if found is not None:
                claim, partitions = found
                self._broker.idempotent.settle(claim, [], partitions)

    async def _settle(self, body: dict[str, Any]) -> list[list[int]] | None:
        token = int(body["token"])
        for tokens in self._claims_of.values():
            tokens.discard(token)
        found = self._claims.pop(token, None)
        if found is None:
            return None  # its writer was taken for gone: the next attempt looks it up
        claim, _ = found
        placed = [(int(i), (int(p), int(o))) for i, p, o in body["placed"]]
        self._broker.idempotent.settle(claim, placed, [int(p) for p in body["lost"]])
        if not claim.entry.complete:
            return None
        return [[p, o] for p, o in claim.entry.answer()]
