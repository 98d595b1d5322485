"""Reads of one partition: from an offset, a timestamp or the log start, whole records or
stored batches, waiting at the end for data (a long-poll) when asked to.

A long-poll gives its slot in the fair scheduler back while it waits
(:mod:`partitions.waiting`), and every waiting read is released at once at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.broker.views import TopicViews
from partitions.catalog import PartitionRecord
from partitions.errors import PartitionNotFoundError, TopicNotFoundError
from partitions.log.values import BatchRead, ReadResult
from partitions.partition_key import PartitionKey
from partitions.waiting import waiting
from partitions.worker import PartitionWorker


@dataclass(frozen=True, slots=True)
class ReadAnswer:
    partition: PartitionRecord
    # Where the read started: the offset asked for, or the one a timestamp or the log
    # start resolved to.
    offset: int
    result: ReadResult | BatchRead


class Reader:
    def __init__(
        self,
        views: TopicViews,
        worker: PartitionWorker,
        refresh: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._views = views
        self._worker = worker
        # Reads the topic again from the catalog (a partition sealed by another process).
        self._refresh = refresh
        # Set at shutdown: waiting reads answer at once.
        self.stopping = asyncio.Event()
        self.waiting = 0

    async def read(
        self,
        tenant: str,
        name: str,
        partition_id: int,
        *,
        offset: int | None,
        timestamp_ms: int | None,
        max_records: int,
        max_bytes: int,
        wait_ms: int,
        raw: bool = False,
    ) -> ReadAnswer:
        """Records from one partition, decoded, or with ``raw`` as whole stored batches."""
        view = await self._views.view(tenant, name)
        partition = view.partitions.get(partition_id)
        if partition is None:
            raise PartitionNotFoundError(
                f"topic {name!r} has no partition {partition_id}", partition=partition_id
            )
        key = view.key(partition_id)
        if offset is None:
            stats = await self._worker.stats(key)
            if timestamp_ms is not None:
                found = await self._worker.offset_for_timestamp(key, timestamp_ms)
                offset = stats.end_offset if found is None else found
            else:
                offset = stats.start_offset
        if wait_ms > 0:
            stats = await self._worker.stats(key)
            # Only an offset exactly at the end waits; past it, the read answers 416 at once.
            if offset == stats.end_offset and not stats.sealed:
                await self._long_poll(key, offset, wait_ms / 1000)
        result: ReadResult | BatchRead
        if raw:
            result = await self._worker.read_batches(key, offset, max_bytes=max_bytes)
        else:
            result = await self._worker.read(
                key, offset, max_records=max_records, max_bytes=max_bytes
            )
        # A split may have sealed the partition during the wait: answer with what is now.
        current = self._views.get(tenant, name) or view
        record = current.partitions.get(partition_id, partition)
        if result.sealed and record.active:
            # Sealed by another process: its news may be on the way; read the catalog.
            with contextlib.suppress(TopicNotFoundError):
                await self._refresh(tenant, name)
            current = self._views.get(tenant, name) or current
            record = current.partitions.get(partition_id, record)
        return ReadAnswer(record, offset, result)

    async def wait_for_any(
        self, tenant: str, name: str, positions: Mapping[int, int], timeout_s: float
    ) -> None:
        """Wait until one of the partitions has a record at its position (a stream following
        several), for shutdown, or for the timeout, whichever is first."""
        view = await self._views.view(tenant, name)
        keys = [(view.key(pid), offset) for pid, offset in positions.items()]
        waits = [
            asyncio.ensure_future(self._worker.wait_for_data(key, offset, timeout_s))
            for key, offset in keys
        ]
        stop = asyncio.ensure_future(self.stopping.wait())
        self.waiting += 1
        try:
            async with waiting():
                await asyncio.wait(
                    {*waits, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            self.waiting -= 1
            for task in (*waits, stop):
                task.cancel()
            await asyncio.gather(*waits, stop, return_exceptions=True)

    async def _long_poll(self, key: PartitionKey, offset: int, timeout_s: float) -> None:
        """Wait for data at ``offset``, for shutdown, or for the timeout, whichever is first."""
        self.waiting += 1
        data = asyncio.ensure_future(self._worker.wait_for_data(key, offset, timeout_s))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            async with waiting():
                await asyncio.wait({data, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            for task in (data, stop):
                task.cancel()
            await asyncio.gather(data, stop, return_exceptions=True)
