"""Retention with tiered storage: total retention over remote and local data, then local
retention over what stays on disk (KIP-405's meaning).

A topic's segments, per partition, are the union of its copy-finished remote segments and
its local ones, each counted once.

- **Total retention** (``retention_ms``, ``retention_bytes``) decides the log start of each
  partition: segments whose newest record is older than ``retention_ms`` go, from the head;
  then, while the topic (all partitions, remote and local) holds more than
  ``retention_bytes``, the oldest head segment across its partitions goes if what is left
  still holds at least ``retention_bytes``. The active segment never goes. Expired data goes
  whether or not it was uploaded: it is past what the topic keeps.
  The order is KIP-405's: the catalog's log start advances first, then the log's (which
  deletes the local segments below it), then each remote segment below it goes
  delete-started, has its objects deleted, and its row removed.
- **Local retention** (``local_retention_ms``, ``local_retention_bytes``; ``null`` means "as
  the total retention") then deletes local segments from the head of each partition while
  they are outside it, but only segments whose remote copy is finished: a segment that is
  not safely uploaded is never deleted by local retention, whatever the bounds say.
  ``local_retention_bytes`` bounds the topic's local bytes, like ``retention_bytes`` the
  whole topic's. The log start does not move: reads below the local start are reads of
  tiered data.

A pass works on one incarnation of the topic and names it in every catalog call: if the
topic is deleted and created again while the pass runs, the catalog refuses the old
incarnation and the pass stops, never touching the new topic's partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from partitions.catalog import Catalog, RemoteSegmentRecord, RemoteSegmentState
from partitions.errors import RemoteSegmentNotFoundError, RemoteSegmentStateError
from partitions.log.values import LogStats, SegmentInfo
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker
from tiered_storage.objects import ObjectStore, ObjectStoreError
from tiered_storage.state import RemoteIndex, TieringCounters, delete_remote_segment
from tiered_storage.uploader import SegmentUploader

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Unit:
    """One segment of a partition, wherever it is."""

    base: int
    next: int
    size: int
    max_ts: int | None
    active: bool
    local: bool
    copied: bool  # a copy-finished remote copy exists


@dataclass(slots=True)
class _Partition:
    key: PartitionKey
    start: int
    stats: LogStats
    units: list[_Unit]


def _units(details: Sequence[SegmentInfo], rows: Mapping[int, RemoteSegmentRecord]) -> list[_Unit]:
    finished = {
        base: row for base, row in rows.items() if row.state is RemoteSegmentState.COPY_FINISHED
    }
    by_base = {
        base: _Unit(
            base, row.last_offset + 1, row.size_bytes, row.max_timestamp_ms, False, False, True
        )
        for base, row in finished.items()
    }
    for d in details:
        row = finished.get(d.base_offset)
        copied = row is not None and row.last_offset + 1 == d.next_offset
        by_base[d.base_offset] = _Unit(
            d.base_offset, d.next_offset, d.size_bytes, d.max_timestamp_ms, d.active, True, copied
        )
    return [by_base[base] for base in sorted(by_base)]


def _head(units: Sequence[_Unit], after: int, *, copied_only: bool) -> _Unit | None:
    """The first segment holding offsets at or after ``after`` that may go, or None."""
    for unit in units:
        if unit.next <= after:
            continue
        if unit.active or (copied_only and not unit.copied):
            return None
        return unit
    return None


def _cut(
    parts: Mapping[int, Sequence[_Unit]],
    starts: dict[int, int],
    retention_ms: int | None,
    retention_bytes: int | None,
    now_ms: int,
    *,
    copied_only: bool,
) -> dict[int, int]:
    """Where each partition's head must be cut for the given bounds (never lower than
    ``starts``): by age per partition, then by bytes over the whole topic, oldest first."""
    cuts = dict(starts)
    if retention_ms is not None:
        cutoff = now_ms - retention_ms
        for pid, units in parts.items():
            while (unit := _head(units, cuts[pid], copied_only=copied_only)) is not None:
                if unit.max_ts is not None and unit.max_ts >= cutoff:
                    break
                cuts[pid] = unit.next
    if retention_bytes is not None:
        total = sum(u.size for pid, units in parts.items() for u in units if u.next > cuts[pid])
        while total > retention_bytes:
            heads = [
                (unit.max_ts if unit.max_ts is not None else -1, pid, unit)
                for pid, units in parts.items()
                if (unit := _head(units, cuts[pid], copied_only=copied_only)) is not None
            ]
            if not heads:
                break
            _, pid, unit = min(heads, key=lambda h: (h[0], h[1]))
            if total - unit.size < retention_bytes:
                break
            cuts[pid] = unit.next
            total -= unit.size
    return cuts


def _optional_int(config: Mapping[str, Any], name: str) -> int | None:
    value = config.get(name)
    return None if value is None else int(value)


class TieredRetention:
    def __init__(
        self,
        catalog: Catalog,
        worker: PartitionWorker,
        store: ObjectStore,
        index: RemoteIndex,
        uploader: SegmentUploader,
        counters: TieringCounters,
        clock_ms: Callable[[], int],
        *,
        everywhere: PartitionWorker | None = None,
    ) -> None:
        self._catalog = catalog
        self._worker = worker
        self._store = store
        self._index = index
        self._uploader = uploader
        self._counters = counters
        self._clock_ms = clock_ms
        # Where the partitions of a topic are read from: the local worker, or (several
        # worker processes) every process's, when this one owns only some of them.
        self.reader: PartitionWorker = everywhere or worker

    async def retain_topic(
        self,
        tenant: str,
        name: str,
        incarnation: str,
        config: Mapping[str, Any],
        partition_ids: Sequence[int],
        *,
        owned: Collection[int] | None = None,
    ) -> int:
        """Apply total and local retention to one topic; answers the segments removed
        (local and remote).

        With ``owned``, this process owns only those partitions: the bounds are worked out
        over the whole topic (the others read through :attr:`reader`), and only the owned
        partitions are cut here; their owners cut the others the same way.
        """
        now = self._clock_ms()
        # Every catalog call names the incarnation: if the topic is deleted and created again
        # while this pass runs, the pass fails instead of acting on the new topic.
        listed = await self._catalog.list_partitions(tenant, name, incarnation=incarnation)
        recorded = {p.partition_id: p for p in listed}
        parts: dict[int, _Partition] = {}
        for pid in sorted(partition_ids):
            key = PartitionKey(tenant, incarnation, pid)
            reader = self._worker if owned is None or pid in owned else self.reader
            stats = await reader.stats(key)
            details = await reader.segment_details(key)
            rows = await self._index.rows(key)
            known = recorded.get(pid)
            start = max(stats.start_offset, known.start_offset if known else 0)
            parts[pid] = _Partition(key, start, stats, _units(details, rows))
        units = {pid: part.units for pid, part in parts.items()}
        starts = _cut(
            units,
            {pid: part.start for pid, part in parts.items()},
            _optional_int(config, "retention_ms"),
            _optional_int(config, "retention_bytes"),
            now,
            copied_only=False,
        )
        removed = 0
        mine = parts if owned is None else {pid: p for pid, p in parts.items() if pid in owned}
        for pid, part in mine.items():
            start = starts[pid]
            known = recorded.get(pid)
            # KIP-405's order: the log start moves first, in the catalog, then in the log
            # (which deletes the local segments below it), then the remote segments go.
            if known is not None and start > known.start_offset:
                await self._catalog.advance_start_offset(
                    tenant, name, pid, start, incarnation=incarnation
                )
            # On every pass, not only when the start rises: the log raises its start in
            # memory at once, so a write of it that failed (a full disk) is only retried
            # here; and it raises before any remote copy below the start goes, so those wait
            # until the log has the start on disk.
            if start > 0:
                gone = await self._worker.advance_start(part.key, start)
                self._counters.local_segments_deleted += len(gone)
                removed += len(gone)
            removed += await self._delete_remote_below(part.key, start)
        for pid, part in parts.items():
            part.start = starts[pid]  # cut here, or by its owner the same way
        removed += await self._local_retention(parts, config, now, mine)
        return removed

    async def _delete_remote_below(self, key: PartitionKey, start: int) -> int:
        removed = 0
        rows = await self._index.rows(key)
        for base, row in sorted(rows.items()):
            below = row.last_offset < start
            if row.state is not RemoteSegmentState.DELETE_STARTED and not below:
                continue
            if row.state is RemoteSegmentState.COPY_STARTED and self._uploader.in_flight(key, base):
                continue  # deleted once its upload ends
            try:
                await delete_remote_segment(self._catalog, self._store, self._index, row)
            except ObjectStoreError as exc:
                log.warning("remote segment %d of %s not deleted yet: %s", base, key, exc)
                break  # in order: the next pass starts again from here
            except (RemoteSegmentStateError, RemoteSegmentNotFoundError) as exc:
                # Someone else (a cleanup, another process) changed or removed the row
                # meanwhile: learn its state; the next pass deletes it if still needed.
                log.info("remote segment %d of %s changed under retention: %s", base, key, exc)
                await self._index.reload(key)
                continue
            self._counters.remote_segments_deleted += 1
            removed += 1
        return removed

    async def _local_retention(
        self,
        parts: Mapping[int, _Partition],
        config: Mapping[str, Any],
        now: int,
        mine: Collection[int],
    ) -> int:
        local_ms = _optional_int(config, "local_retention_ms")
        local_bytes = _optional_int(config, "local_retention_bytes")
        if local_ms is None and local_bytes is None:
            return 0  # local retention is the total retention: nothing more to drop
        if local_ms is None:
            local_ms = _optional_int(config, "retention_ms")
        if local_bytes is None:
            local_bytes = _optional_int(config, "retention_bytes")
        local = {
            pid: [u for u in part.units if u.local and u.next > part.start]
            for pid, part in parts.items()
        }
        firsts = {pid: units[0].base if units else parts[pid].start for pid, units in local.items()}
        cuts = _cut(local, dict(firsts), local_ms, local_bytes, now, copied_only=True)
        removed = 0
        for pid, cut in cuts.items():
            if pid in mine and cut > firsts[pid]:
                gone = await self._worker.delete_local_below(parts[pid].key, cut)
                self._counters.local_segments_deleted += len(gone)
                removed += len(gone)
        return removed
