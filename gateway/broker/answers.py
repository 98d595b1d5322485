"""Idempotent produce: a request with an ``Idempotency-Key`` writes its records once.

A request answered in the last ten minutes gets the same answer and appends nothing; one
still running is waited for; one that wrote only some of its records (a crash or a failure
part-way) appends only the rest. The answers live in an in-memory table
(:class:`~partitions.idempotency.AnswerTable`); the key and the request's indexes travel in
the producer tag of every batch, so the table is rebuilt from the partitions after a start,
and an append whose outcome is unknown (its worker died) is looked up in them before
anything is written again. With several processes, a key's answers are kept by one of them
(the topology's ``answer_home``): this process writes the records and tells it where they
went.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

from gateway.broker.produce import Admit, Placed, Producer
from gateway.broker.topology import AnswerHome, Topology
from gateway.broker.views import TopicView, TopicViews
from partitions.errors import PartitionUnavailableError
from partitions.idempotency import (
    ANSWER_TTL_MS,
    AnswerTable,
    ProducerTag,
    decode_tag,
    encode_tags,
)
from partitions.idempotency import Entry as IdempotencyEntry
from partitions.incoming import IncomingRecords
from partitions.worker import PartitionWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    key: str
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class AnswerClaim:
    """An attempt at an idempotent request, at the process that keeps its answers."""

    tenant: str
    incarnation: str
    key: str
    entry: IdempotencyEntry
    # Set while the attempt runs (None: the request is answered already).
    busy: asyncio.Future[None] | None


class IdempotentProducer:
    """Produce with an idempotency key, over a :class:`~gateway.broker.produce.Producer`."""

    def __init__(
        self,
        views: TopicViews,
        worker: PartitionWorker,
        producer: Producer,
        topology: Topology,
        clock_ms: Callable[[], int],
    ) -> None:
        self._views = views
        self._worker = worker
        self._producer = producer
        self._topology = topology
        self._clock_ms = clock_ms
        self.table = AnswerTable()
        # Retries answered from the table without appending.
        self.replays = 0

    async def produce(
        self,
        tenant: str,
        name: str,
        records: IncomingRecords,
        idempotency: IdempotentRequest,
        *,
        appended: list[int] | None = None,
        admit: Admit | None = None,
    ) -> list[tuple[int, int]]:
        """As :meth:`Producer.produce`, once per key; a replay does not call ``admit``."""
        view = await self._views.view(tenant, name)
        incarnation = view.record.incarnation
        home = self._topology.answer_home(tenant, name, idempotency.key)
        if home is not None:
            return await self._produce_with_home(
                home, tenant, name, incarnation, records, idempotency, appended, admit
            )
        claim = await self.claim(
            tenant, view, idempotency.key, idempotency.request_hash, len(records)
        )
        entry = claim.entry
        if claim.busy is None:
            return entry.answer()
        answer: Placed = [None] * len(records)
        lost: set[int] = set()
        try:
            missing = entry.missing()
            if admit is not None:
                await admit(missing)
            tagger = partial(
                encode_tags,
                idempotency.key,
                entry.request_hash,
                entry.accepted_ms,
                entry.total_records,
            )
            await self._producer.append(tenant, name, records, missing, answer, tagger, lost=lost)
        finally:
            placed = [(i, where) for i, where in enumerate(answer) if where]
            if appended is not None:
                appended.extend(i for i, _ in placed)
            self.settle(claim, placed, lost)
        if len(placed) == len(records):
            # This attempt wrote every record (the usual first attempt): that is the answer.
            return [where for _, where in placed]
        return entry.answer()

    async def claim(
        self, tenant: str, view: TopicView, key: str, request_hash: bytes, total: int
    ) -> AnswerClaim:
        """The answer entry of an idempotent request, as an attempt needs it: complete (the
        request was answered: nothing to write), or with the records still missing and
        marked busy for this attempt, which ends with :meth:`settle`. An attempt
        already running is waited for; appends whose outcome was unknown are looked up."""
        incarnation = view.record.incarnation
        await self._rebuild(tenant, view)
        while True:
            entry = self.table.claim(
                tenant, incarnation, key, request_hash, total, now_ms=self._clock_ms()
            )
            if entry.busy is not None:
                await asyncio.shield(entry.busy)
                continue
            if entry.unsure:
                await self._settle_unsure(tenant, view, key, entry)
                continue
            if entry.complete:
                self.replays += 1
                return AnswerClaim(tenant, incarnation, key, entry, None)
            busy = entry.busy = asyncio.get_running_loop().create_future()
            return AnswerClaim(tenant, incarnation, key, entry, busy)

    def settle(
        self,
        claim: AnswerClaim,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> None:
        """End an attempt: record where its records went. Appends whose worker died before
        answering may or may not be written: the next attempt looks in those partitions
        before writing anything."""
        entry, busy = claim.entry, claim.busy
        entry.add_placed(placed)
        if lost:
            entry.unsure = entry.unsure | frozenset(lost)
        entry.busy = None
        if busy is not None and not busy.done():
            busy.set_result(None)
        if not placed and not entry.written and not entry.unsure:
            # Nothing was written (the attempt failed before any append): the key stays
            # free for a corrected request.
            self.table.discard(claim.tenant, claim.incarnation, claim.key, entry)
        else:
            self.table.settle(claim.tenant, claim.incarnation, claim.key, entry)

    async def _produce_with_home(
        self,
        home: AnswerHome,
        tenant: str,
        name: str,
        incarnation: str,
        records: IncomingRecords,
        idempotency: IdempotentRequest,
        appended: list[int] | None,
        admit: Admit | None,
    ) -> list[tuple[int, int]]:
        """An idempotent produce whose answers another worker process keeps: it says what
        to write (nothing, for an answered request), this process writes it, then tells it
        where the records went."""
        ticket = await home.claim(
            tenant, name, incarnation, idempotency.key, idempotency.request_hash, len(records)
        )
        if ticket.answer is not None:
            return ticket.answer  # counted as a replay by the home, which answered it
        answer: Placed = [None] * len(records)
        lost: set[int] = set()
        try:
            if admit is not None:
                await admit(ticket.missing)
            tagger = partial(
                encode_tags,
                idempotency.key,
                ticket.request_hash,
                ticket.accepted_ms,
                ticket.total_records,
            )
            await self._producer.append(
                tenant, name, records, ticket.missing, answer, tagger, lost=lost
            )
        finally:
            placed = [(i, where) for i, where in enumerate(answer) if where]
            if appended is not None:
                appended.extend(i for i, _ in placed)
            final = await home.settle(ticket, placed, lost)
        if final is None:
            raise PartitionUnavailableError("the request was not completed; retry")
        return final

    async def _settle_unsure(
        self, tenant: str, view: TopicView, key: str, entry: IdempotencyEntry
    ) -> None:
        """Find which of an attempt's appends with unknown outcome were written: the
        partitions' producer tags of this request say so."""
        busy = entry.busy = asyncio.get_running_loop().create_future()
        try:
            # Segments are chosen by modification time, which is the real clock's.
            since = min(entry.accepted_ms, time.time_ns() // 1_000_000) - 60_000
            for pid in sorted(entry.unsure):
                for base_offset, raw in await self._worker.producer_tags(view.key(pid), since):
                    try:
                        tag = decode_tag(raw)
                    except ValueError:
                        continue
                    if tag.key == key and tag.request_hash == entry.request_hash:
                        entry.add_found(pid, base_offset, tag.indexes)
            entry.unsure = frozenset()
        finally:
            entry.busy = None
            busy.set_result(None)

    async def _rebuild(self, tenant: str, view: TopicView) -> None:
        """Load the topic's recent producer tags into the answer table, once per start."""
        incarnation = view.record.incarnation
        pending = self.table.rebuild_future(tenant, incarnation)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future = self.table.start_rebuild(tenant, incarnation)
        try:
            now = self._clock_ms()
            # Segments are chosen by modification time, which is the real clock's.
            since = min(now, time.time_ns() // 1_000_000) - ANSWER_TTL_MS - 60_000
            # Into the table only once every partition was read: a rebuild that fails
            # part-way leaves nothing behind for the next one to add to.
            found: list[tuple[int, int, ProducerTag]] = []
            for pid in sorted(view.partitions):
                for base_offset, raw in await self._worker.producer_tags(view.key(pid), since):
                    try:
                        tag = decode_tag(raw)
                    except ValueError:
                        log.warning("partition %s: unreadable producer tag at %d", pid, base_offset)
                        continue
                    if tag.accepted_ms + ANSWER_TTL_MS > now:
                        found.append((pid, base_offset, tag))
            for pid, base_offset, tag in found:
                self.table.add_tag(tenant, incarnation, pid, base_offset, tag)
        except BaseException as exc:
            self.table.forget_rebuild(tenant, incarnation)
            future.set_exception(exc)
            future.exception()  # retrieved: the caller gets the error itself
            raise
        future.set_result(None)
