"""The partition worker interface, and its in-process implementation.

The gateway reaches partitions only through :class:`PartitionWorker`: append, read, wait
for data, seal, stats, and opening and dropping partitions. :class:`LocalPartitionWorker`
keeps the logs in this process; a remote implementation (worker processes, other machines)
implements the same Protocol.

**Durability.** The worker takes a :class:`~partitions.durability.Durability`. With
:class:`~partitions.durability.LocalDurability` (single-machine mode) an append is answered
at its local fsync, as always. With one that waits for more (cluster mode's write-ahead log
in object storage), the logs are opened *gated*: each append is fsync'd, then made durable
beyond this machine and only then visible and answered
(:mod:`partitions.durable_appends`). Reads below a partition's local start run from object
storage on into local disk (:mod:`partitions.tiered_reads`).

Partition directories live under ``{data_dir}/topics/{tenant}/{incarnation}/{partition}``.
Tenant names are validated before they get here, incarnations are UUIDs the catalog made,
and partition ids are integers, so no path can leave its tenant's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from partitions.batch import BatchBytes
from partitions.durability import Durability, LocalDurability
from partitions.durable_appends import (
    DEFAULT_DURABILITY_BACKLOG_BYTES,
    DurableAppends,
    EpochOf,
    durable_end,
    no_epochs,
)
from partitions.errors import (
    OffsetNotLocalError,
    PartitionUnavailableError,
)
from partitions.fileio import FileOps
from partitions.log.partition_log import PartitionLog
from partitions.log.values import (
    AppendResult,
    BatchRead,
    LogConfig,
    LogStats,
    ReadResult,
    SegmentFiles,
    SegmentInfo,
)
from partitions.partition_key import PartitionKey
from partitions.remote import RemoteLogReader
from partitions.tiered_reads import read_batches_tiered, read_tiered, remote_call

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerTotals:
    partitions_open: int = 0
    appends: int = 0
    group_commits: int = 0
    wait_wakeups: int = 0

    def add(self, stats: LogStats) -> None:
        self.appends += stats.appends
        self.group_commits += stats.group_commits
        self.wait_wakeups += stats.wait_wakeups


class PartitionWorker(Protocol):
    async def open_partition(self, key: PartitionKey, config: LogConfig) -> None: ...

    async def append(self, key: PartitionKey, batch: BatchBytes) -> AppendResult: ...

    async def read(
        self, key: PartitionKey, offset: int, *, max_records: int, max_bytes: int
    ) -> ReadResult: ...

    async def read_batches(
        self, key: PartitionKey, offset: int, *, max_bytes: int
    ) -> BatchRead: ...

    async def offset_for_timestamp(self, key: PartitionKey, timestamp_ms: int) -> int | None: ...

    async def wait_for_data(self, key: PartitionKey, offset: int, timeout_s: float) -> bool: ...

    async def producer_tags(self, key: PartitionKey, since_ms: int) -> list[tuple[int, bytes]]:
        """(base offset, producer tag) of the tagged batches written since ``since_ms``."""
        ...

    async def seal(self, key: PartitionKey) -> int:
        """Seal the log (a split or merge sealed the partition); ends a freeze."""
        ...

    async def freeze(self, key: PartitionKey) -> int:
        """Hold new appends to the partition, wait until those in flight are durable, and
        answer its durable end (what a split or merge records as the parent's end).

        Held appends go on at :meth:`thaw`, or fail with ``partition_sealed`` at
        :meth:`seal` (and are routed to the children). One freeze at a time: another
        waits for the first to end.
        """
        ...

    async def thaw(self, key: PartitionKey) -> None:
        """End a freeze whose split or merge did not happen: held appends go on."""
        ...

    async def stats(self, key: PartitionKey) -> LogStats: ...

    async def enforce_retention(
        self,
        key: PartitionKey,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_offset: int | None = None,
    ) -> list[SegmentInfo]: ...

    async def drop_topic(self, tenant: str, incarnation: str) -> None:
        """Close a topic incarnation's partitions and delete their data."""
        ...

    async def drop_tenant(self, tenant: str) -> None:
        """Remove what is left of a deleted tenant once its topics are dropped."""
        ...

    async def drop_tenants_except(self, known: Collection[str]) -> None:
        """At start: remove what is left of tenants not in ``known`` (a tenant deletion cut
        short after its topics were dropped)."""
        ...

    # --- for tiered storage, which runs where the partition's files are ---------------------

    def partition_keys(self) -> list[PartitionKey]:
        """The partitions open here."""
        ...

    def segments(self, key: PartitionKey) -> list[SegmentInfo]:
        """The partition's local segments, oldest first (no timestamps; no I/O)."""
        ...

    async def segment_details(self, key: PartitionKey) -> list[SegmentInfo]:
        """The local segments with their first and largest record timestamps."""
        ...

    def segment_files(self, key: PartitionKey, base_offset: int) -> SegmentFiles: ...

    async def advance_start(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        """Raise the log start (total retention) and delete the local segments below it."""
        ...

    async def delete_local_below(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        """Delete local segments below ``offset`` but keep the log start (local retention)."""
        ...

    def totals(self) -> WorkerTotals: ...

    async def close(self) -> None: ...


class LocalPartitionWorker:
    """:class:`PartitionWorker` with every log in this process."""

    def __init__(
        self,
        data_dir: Path,
        *,
        on_roll: Callable[[PartitionKey], None] | None = None,
        remote: RemoteLogReader | None = None,
        ops: FileOps | None = None,
        durability: Durability | None = None,
        epochs: EpochOf = no_epochs,
        max_durability_backlog_bytes: int = DEFAULT_DURABILITY_BACKLOG_BYTES,
    ) -> None:
        """``on_roll`` hears of every segment that stops taking appends (tiered storage
        uploads it); ``remote`` reads offsets whose data is only in object storage; the
        logs do their file calls through ``ops`` (tests pass one that fails or holds).
        ``durability`` is what an append waits for after its fsync (default: nothing more,
        :class:`LocalDurability`), ``epochs`` the lease epoch each partition's entries
        carry, and past ``max_durability_backlog_bytes`` waiting in ``durability``, appends
        are refused with ``storage_backpressure``."""
        self.root = data_dir / "topics"
        self.durability: Durability = durability or LocalDurability()
        self._durable = DurableAppends(
            self.durability, epochs=epochs, max_backlog_bytes=max_durability_backlog_bytes
        )
        self._gated = self._durable.gated
        self.on_roll = on_roll
        self.remote = remote
        self._ops = ops
        self._logs: dict[PartitionKey, PartitionLog] = {}
        self._opening: dict[PartitionKey, asyncio.Future[PartitionLog]] = {}
        # Frozen partitions (see freeze), each with the event that releases its appends.
        self._frozen: dict[PartitionKey, asyncio.Event] = {}
        # Appends in flight per partition, and the event a freeze waits on for them.
        self._in_flight: dict[PartitionKey, int] = {}
        self._idle: dict[PartitionKey, asyncio.Event] = {}
        # Bytes appended per open partition since it opened: its owner's load, for placement.
        self.appended_bytes: dict[PartitionKey, int] = {}
        # Counters of logs already closed, so that totals never go down.
        self._retired = WorkerTotals()

    def directory(self, key: PartitionKey) -> Path:
        return self.root / key.tenant / key.incarnation / str(key.partition_id)

    def topic_directory(self, tenant: str, incarnation: str) -> Path:
        return self.root / tenant / incarnation

    @property
    def open_count(self) -> int:
        return len(self._logs)

    def log(self, key: PartitionKey) -> PartitionLog:
        found = self._logs.get(key)
        if found is None:
            # The catalog knows it (callers check), but its log could not be opened here.
            raise PartitionUnavailableError(
                f"partition {key.partition_id} is not open here", partition=key.partition_id
            )
        return found

    async def open_partition(self, key: PartitionKey, config: LogConfig) -> None:
        if key in self._logs:
            return
        pending = self._opening.get(key)
        if pending is not None:
            await pending
            return
        future: asyncio.Future[PartitionLog] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            log = await PartitionLog.open(
                self.directory(key),
                config,
                on_roll=lambda: self._rolled(key),
                ops=self._ops,
                gated=self._gated,
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the caller gets the error itself
            raise
        finally:
            self._opening.pop(key, None)
        self._logs[key] = log
        future.set_result(log)

    def _rolled(self, key: PartitionKey) -> None:
        if self.on_roll is not None:
            self.on_roll(key)

    async def append(self, key: PartitionKey, batch: BatchBytes) -> AppendResult:
        while (frozen := self._frozen.get(key)) is not None:
            await frozen.wait()
        log = self.log(key)
        if self._gated:
            self._durable.check_backlog()
        # Counted at once, so that a freeze from here on waits for this append.
        in_flight = self._in_flight
        in_flight[key] = in_flight.get(key, 0) + 1
        if self._gated:
            return await self._durable.run(self._append_durably(key, log, batch))
        try:
            result = await log.append(batch)
        finally:
            self._append_done(key)
        appended = self.appended_bytes
        appended[key] = appended.get(key, 0) + len(batch)
        return result

    def _append_done(self, key: PartitionKey) -> None:
        in_flight = self._in_flight
        left = in_flight[key] - 1
        if left:
            in_flight[key] = left
        else:
            del in_flight[key]
            idle = self._idle.pop(key, None)
            if idle is not None:
                idle.set()

    async def _append_durably(
        self, key: PartitionKey, log: PartitionLog, batch: BatchBytes
    ) -> AppendResult:
        """Append, make the stored batch durable beyond this machine, then show it (the
        caller counted it in flight)."""
        try:
            result = await log.append(batch)
            await self._durable.make_visible(key, log, batch, result)
        finally:
            self._append_done(key)
        appended = self.appended_bytes
        appended[key] = appended.get(key, 0) + len(batch)
        return result

    async def read(
        self, key: PartitionKey, offset: int, *, max_records: int, max_bytes: int
    ) -> ReadResult:
        log = self.log(key)
        try:
            return await log.read(offset, max_records=max_records, max_bytes=max_bytes)
        except OffsetNotLocalError:
            if self.remote is None:
                raise
            return await read_tiered(self.remote, key, log, offset, max_records, max_bytes)

    async def read_batches(self, key: PartitionKey, offset: int, *, max_bytes: int) -> BatchRead:
        log = self.log(key)
        try:
            return await log.read_batches(offset, max_bytes=max_bytes)
        except OffsetNotLocalError:
            if self.remote is None:
                raise
            return await read_batches_tiered(self.remote, key, log, offset, max_bytes)

    async def offset_for_timestamp(self, key: PartitionKey, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is at least ``timestamp_ms``, searching
        the offsets only object storage holds first (producer timestamps need not rise, so
        an old record may qualify when no local one does). Remote segments whose largest
        timestamp is older are skipped without fetching anything."""
        log = self.log(key)
        while True:
            start, local = log.start_offset, log.local_start_offset
            if self.remote is not None and start < local:
                found = await remote_call(
                    log,
                    start,
                    self.remote.offset_for_timestamp(
                        key, timestamp_ms, start_offset=start, end_offset=local
                    ),
                )
                if found is not None:
                    return found
            try:
                return await log.offset_for_timestamp(timestamp_ms)
            except OffsetNotLocalError:
                if self.remote is None:
                    raise
                if log.local_start_offset == local:
                    return local  # the first local record is the first match
                # Local retention moved the local start meanwhile: search again.

    # --- reads that start below the local start ----------------------------------------------

    async def wait_for_data(self, key: PartitionKey, offset: int, timeout_s: float) -> bool:
        return await self.log(key).wait_for_data(offset, timeout_s)

    async def producer_tags(self, key: PartitionKey, since_ms: int) -> list[tuple[int, bytes]]:
        return await self.log(key).producer_tags(since_ms)

    async def seal(self, key: PartitionKey) -> int:
        try:
            return await self.log(key).seal()
        finally:
            await self.thaw(key)

    async def freeze(self, key: PartitionKey) -> int:
        while (frozen := self._frozen.get(key)) is not None:
            await frozen.wait()
        log = self.log(key)
        self._frozen[key] = asyncio.Event()
        try:
            if self._in_flight.get(key):
                await self._idle.setdefault(key, asyncio.Event()).wait()
            return durable_end(key, log)
        except BaseException:
            await self.thaw(key)
            raise

    async def thaw(self, key: PartitionKey) -> None:
        released = self._frozen.pop(key, None)
        if released is not None:
            released.set()

    async def stats(self, key: PartitionKey) -> LogStats:
        return self.log(key).stats()

    async def enforce_retention(
        self,
        key: PartitionKey,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_offset: int | None = None,
    ) -> list[SegmentInfo]:
        return await self.log(key).enforce_retention(
            retention_ms=retention_ms, retention_bytes=retention_bytes, max_offset=max_offset
        )

    def partition_keys(self) -> list[PartitionKey]:
        return list(self._logs)

    def segments(self, key: PartitionKey) -> list[SegmentInfo]:
        return self.log(key).segments()

    async def segment_details(self, key: PartitionKey) -> list[SegmentInfo]:
        return await self.log(key).segment_details()

    def segment_files(self, key: PartitionKey, base_offset: int) -> SegmentFiles:
        return SegmentFiles.of(self.directory(key), base_offset)

    async def advance_start(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        return await self.log(key).advance_start(offset)

    async def delete_local_below(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        return await self.log(key).delete_local_below(offset)

    def totals(self) -> WorkerTotals:
        """Counters summed over every log this worker has had open."""
        totals = dataclasses.replace(self._retired)
        for log in self._logs.values():
            totals.add(log.stats())
        totals.partitions_open = len(self._logs)
        return totals

    async def release_topic(self, tenant: str, incarnation: str) -> None:
        """Close a topic incarnation's partitions open here, leaving their files (another
        process of the server removes them)."""
        keys = [k for k in self._logs if k.tenant == tenant and k.incarnation == incarnation]
        logs = [self._logs.pop(k) for k in keys]
        for key in keys:
            self.appended_bytes.pop(key, None)
            await self.thaw(key)
        for log in logs:
            self._retired.add(log.stats())
        await asyncio.gather(*(log.close() for log in logs))

    async def drop_topic(self, tenant: str, incarnation: str) -> None:
        await self.release_topic(tenant, incarnation)
        directory = self.topic_directory(tenant, incarnation)
        # Errors propagate: the catalog keeps the incarnation, and the next start retries.
        await asyncio.to_thread(_remove_tree, directory)

    async def drop_tenant(self, tenant: str) -> None:
        # Only an empty directory goes: anything still in it belongs to a topic whose
        # deletion is not finished, and is removed by that deletion.
        with contextlib.suppress(OSError):
            await asyncio.to_thread((self.root / tenant).rmdir)

    async def drop_tenants_except(self, known: Collection[str]) -> None:
        def tenant_dirs() -> list[str]:
            try:
                return [p.name for p in self.root.iterdir() if p.is_dir()]
            except FileNotFoundError:
                return []

        for name in await asyncio.to_thread(tenant_dirs):
            if name not in known:
                await self.drop_tenant(name)

    async def close(self) -> None:
        """Take no more appends, let the durability write what is pending (its last
        flush), then close the logs."""
        # Appends taken before now end here (answered, or failed by the closed durability).
        await self._durable.close()
        logs, self._logs = list(self._logs.values()), {}
        for key in list(self._frozen):
            await self.thaw(key)
        await asyncio.gather(*(log.close() for log in logs))


def _remove_tree(directory: Path) -> None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        return


def _conforms(worker: LocalPartitionWorker) -> PartitionWorker:
    """Lets mypy prove that the local worker implements the whole Protocol."""
    return worker
