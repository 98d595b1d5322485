"""Produce: routing records to partitions, one batch per partition, appended once durable.

A keyed record goes to the active partition whose hash range holds ``xxh3_64(key)``;
keyless records of one request go together to the next active partition in turn (among
those the topology says cost no hop). Every batch is encoded before any is appended, so a
record too large fails the request before anything is written. Records come as
:class:`~partitions.incoming.IncomingRecords`: a producer's binary batch whose records all
go to one partition is appended as it came, and one whose records go to several is cut
into one batch per partition, never decoded. If a batch meets a
partition sealed since the view was made, only its records are routed again, with the
topic's view read afresh; a split or merge under way holds the request at the topic's
gate instead, which is never an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from autoscaler.measure import LoadMeters
from gateway.broker.topology import Topology
from gateway.broker.views import TopicView, TopicViews
from partitions.batch import BatchBytes
from partitions.errors import PartitionSealedError, PartitionUnavailableError, WorkerLostError
from partitions.incoming import IncomingRecords
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker

# Producer tags for the records at some request indexes: (indexes, tag) per batch to write.
TagPieces = list[tuple[list[int], bytes]]
Tagger = Callable[[Sequence[int]], TagPieces]
# Answers (partition, offset) per request index; None until its record is written.
Placed = list[tuple[int, int] | None]
# Awaited with the indexes about to be appended, before any is (quotas: it may refuse).
Admit = Callable[[Sequence[int]], Awaitable[None]]
# The batches to append to one partition, in order, each with the request indexes it holds.
Pieces = list[tuple[list[int], BatchBytes]]

# How often one produce request may meet a partition sealed under it (by another process)
# and route again before it gives up; waiting out a split or merge here is not counted.
MAX_SEALED_REROUTES = 8


class Producer:
    """Appends a request's records (those at some indexes of it) to their partitions."""

    def __init__(
        self,
        views: TopicViews,
        worker: PartitionWorker,
        meters: LoadMeters,
        topology: Topology,
        clock_ms: Callable[[], int],
    ) -> None:
        self._views = views
        self._worker = worker
        self._meters = meters
        self._topology = topology
        self._clock_ms = clock_ms

    async def produce(
        self,
        tenant: str,
        name: str,
        records: IncomingRecords,
        *,
        appended: list[int] | None = None,
        admit: Admit | None = None,
    ) -> list[tuple[int, int]]:
        """Append every record; answers (partition, offset) per record in request order."""
        placed: Placed = [None] * len(records)
        if admit is not None:
            await admit(range(len(records)))
        try:
            await self.append(tenant, name, records, list(range(len(records))), placed, None)
        finally:
            if appended is not None:
                appended.extend(i for i, where in enumerate(placed) if where is not None)
        return [where for where in placed if where is not None]

    async def append(
        self,
        tenant: str,
        name: str,
        records: IncomingRecords,
        todo: list[int],
        placed: Placed,
        tagger: Tagger | None,
        *,
        lost: set[int] | None = None,
    ) -> None:
        """Append the records at ``todo``, filling ``placed``; partitions whose worker died
        before answering an append go into ``lost``."""
        reroutes = 0
        while True:
            view = self._views.get(tenant, name) or await self._views.view(tenant, name)
            gate = view.gate
            if not gate.open.is_set():
                # A split or merge is reshaping the topic; route with what it leaves. However
                # many changes pass meanwhile, waiting here is never an error.
                await gate.open.wait()
                continue
            gate.in_flight += 1
            gate.idle.clear()
            try:
                todo = await self._append_once(view, records, todo, placed, tagger, lost)
            finally:
                gate.in_flight -= 1
                if gate.in_flight == 0:
                    gate.idle.set()
            if not todo:
                return
            reroutes += 1
            if reroutes > MAX_SEALED_REROUTES:
                raise PartitionUnavailableError(
                    f"topic {name!r} kept changing shape while producing; retry", topic=name
                )
            # Routed to a partition whose log is sealed: refresh the view from the catalog.
            await self._views.reload_if_current(tenant, name, view)

    async def _append_once(
        self,
        view: TopicView,
        records: IncomingRecords,
        todo: list[int],
        placed: Placed,
        tagger: Tagger | None,
        lost: set[int] | None,
    ) -> list[int]:
        """Append the records at ``todo`` with this view; answers the indexes whose
        partition turned out to be sealed (they were not written)."""
        groups: dict[int, list[int]] = {}
        if len(view.active_ids) == 1:
            # One partition takes every record, keyed or not: nothing to hash.
            groups[view.active_ids[0]] = todo
        else:
            keyless: int | None = None
            for index in todo:
                key = records.key(index)
                if key is None:
                    if keyless is None:
                        ids = self._topology.keyless_targets(view)
                        keyless = ids[next(view.keyless) % len(ids)]
                    pid = keyless
                else:
                    pid = view.route(key)
                groups.setdefault(pid, []).append(index)
        now = self._clock_ms()
        max_record_bytes = int(view.record.config["max_record_bytes"])
        batches: dict[int, Pieces] = {}
        for pid, indexes in groups.items():
            tagged = tagger(indexes) if tagger is not None else [(indexes, b"")]
            batches[pid] = [
                (
                    piece,
                    records.encode(
                        piece, now_ms=now, max_record_bytes=max_record_bytes, producer_tag=tag
                    ),
                )
                for piece, tag in tagged
            ]
        if len(batches) == 1:
            # One partition (every single-record produce): no task to run it alongside others.
            [(pid, pieces)] = batches.items()
            sealed = await self._append_pieces(view.key(pid), pieces, placed, records, view, lost)
            return sorted(sealed)
        results = await asyncio.gather(
            *(
                self._append_pieces(view.key(pid), batches[pid], placed, records, view, lost)
                for pid in batches
            ),
            return_exceptions=True,
        )
        again: list[int] = []
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                again.extend(result)
        if failure is not None:
            raise failure
        return sorted(again)

    async def _append_pieces(
        self,
        key: PartitionKey,
        batches: Pieces,
        placed: Placed,
        records: IncomingRecords,
        view: TopicView,
        lost: set[int] | None,
    ) -> list[int]:
        """Append one partition's batches in order; answers the indexes not written because
        the partition is sealed."""
        for n, (indexes, batch) in enumerate(batches):
            try:
                result = await self._worker.append(key, batch)
            except PartitionSealedError:
                return [i for rest, _ in batches[n:] for i in rest]
            except WorkerLostError:
                if lost is not None:
                    lost.add(key.partition_id)
                raise
            self._meters.record(key, view.record.config, len(batch), records, indexes)
            for position, index in enumerate(indexes):
                placed[index] = (key.partition_id, result.base_offset + position)
        return []
