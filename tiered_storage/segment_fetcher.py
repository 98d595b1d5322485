"""Fetching remote segments' bytes and indexes, through the read cache.

A chunk or an index that a read needs is taken from the cache, else from the fetch already
on its way for it (one GET however many reads wait on it), else fetched by a new task that
puts it into the cache. Read-ahead starts such tasks without waiting on them, within a
bound. A local store's log bytes are read straight into the reader's buffer instead, never
cached (see :class:`~tiered_storage.segment_views.DirectView`).

Nothing here holds a lock across a fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any

from partitions.errors import EventBusError, PartitionClosedError
from tiered_storage.cache import ReadCache
from tiered_storage.layout import topic_prefix
from tiered_storage.objects import ObjectNotFoundError, ObjectStore
from tiered_storage.read_counters import ColdReadCounters
from tiered_storage.remote_segments import (
    ReadPlan,
    RemoteSegment,
    RemoteSegmentDamagedError,
    RemoteSegmentMissingError,
)
from tiered_storage.segment_index import RemoteSegmentIndex


class SegmentFetcher:
    """The fetches of one :class:`~tiered_storage.reader.RemoteSegmentReader`: chunks of
    ``chunk_bytes`` and parsed indexes through ``cache``, counted in ``counters``, with at
    most ``read_ahead_limit`` chunks fetched ahead at once."""

    def __init__(
        self,
        store: ObjectStore,
        cache: ReadCache,
        counters: ColdReadCounters,
        *,
        chunk_bytes: int,
        read_ahead_limit: int,
        clock: Callable[[], float],
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.closed = False
        self._store = store
        self._cache = cache
        self._counters = counters
        self._clock = clock
        self._fetching: dict[Hashable, asyncio.Task[Any]] = {}
        self._ahead: set[Hashable] = set()
        self._ahead_limit = read_ahead_limit
        # Topic prefixes of deleted incarnations (one short entry per deletion this process
        # ran): a fetch that returns after its topic was forgotten caches nothing.
        self._forgotten: set[str] = set()

    async def close(self) -> None:
        """Stop every fetch in flight (reads waiting on one fail with partition_closed)."""
        self.closed = True
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        """Drop a deleted topic's cached chunks and indexes; its fetches still on their way
        will cache nothing."""
        prefix = topic_prefix(tenant, incarnation)
        self._forgotten.add(prefix)
        self._cache.discard_where(lambda k: isinstance(k, tuple) and str(k[0]).startswith(prefix))

    # --- straight from the store -----------------------------------------------------------

    async def read_direct(self, plan: ReadPlan) -> bytes | bytearray:
        """:meth:`_fetch_ranges` for a read of a local store, which no fetch task counts:
        its failures are counted here."""
        try:
            return await self._fetch_ranges(plan)
        except EventBusError:
            self._counters.fetch_failures += 1
            raise

    async def _fetch_ranges(self, plan: ReadPlan) -> bytes | bytearray:
        """The ranges ``(segment, start, end)`` of segments' logs, back to back in one
        buffer, straight from the store."""
        if len(plan) == 1:
            return await self.fetch_range(*plan[0])
        if self.closed:
            raise PartitionClosedError("the server is shutting down")
        begun = self._clock()
        try:
            data = await self._store.get_ranges([(s.log_key, a, b) for s, a, b in plan])
        except ObjectNotFoundError as exc:
            missing = exc.details.get("key")
            raise RemoteSegmentMissingError(
                f"{missing} is not in the object store", key=missing
            ) from None
        self._count_fetch(len(data), begun)
        want = sum(b - a for _, a, b in plan)
        if len(data) != want:
            raise RemoteSegmentDamagedError(
                f"{', '.join(s.log_key for s, _, _ in plan)}: {want} bytes asked for, "
                f"{len(data)} answered; the catalog rows say the objects hold them"
            )
        return data

    async def fetch_range(self, seg: RemoteSegment, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a segment's log, straight from the store."""
        if self.closed:
            raise PartitionClosedError("the server is shutting down")
        data = await self._get(seg.log_key, start, end)
        if len(data) != end - start:
            raise RemoteSegmentDamagedError(
                f"{seg.log_key}: bytes [{start}, {end}) answered {len(data)} bytes; its "
                f"catalog row says the object has {seg.size}"
            )
        return data

    # --- through the cache -----------------------------------------------------------------

    async def index(self, seg: RemoteSegment) -> RemoteSegmentIndex:
        index: RemoteSegmentIndex = await self._cached(
            (seg.log_key, "index"), partial(self._fetch_index, seg)
        )
        return index

    async def chunk(self, seg: RemoteSegment, number: int) -> bytes:
        """Bytes ``[number * chunk_bytes, (number + 1) * chunk_bytes)`` of a segment's log
        (fewer at its end)."""
        chunk: bytes = await self._cached(
            (seg.log_key, number), partial(self._fetch_chunk, seg, number)
        )
        return chunk

    def prefetch_chunk(self, seg: RemoteSegment, number: int) -> None:
        """Start fetching a chunk for a read that will come, unless it is cached or on its
        way already, or read-ahead has its bound of chunks in flight."""
        self._prefetch((seg.log_key, number), partial(self._fetch_chunk, seg, number))

    async def _cached(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> Any:
        value = self._cache.get(cache_key)
        if value is not None:
            self._counters.hits += 1
            return value
        task = self._fetching.get(cache_key)
        if task is None:
            self._counters.misses += 1
            task = self._start_fetch(cache_key, fetch)
        else:
            self._counters.hits += 1
        # Shielded: a reader that gives up does not cancel a fetch others may wait on.
        return await asyncio.shield(task)

    def _prefetch(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> None:
        if cache_key in self._cache or cache_key in self._fetching:
            return
        if len(self._ahead) >= self._ahead_limit or self.closed:
            return
        if self._of_forgotten_topic(cache_key):
            return
        self._ahead.add(cache_key)
        self._counters.read_ahead_chunks += 1
        self._start_fetch(cache_key, fetch)

    def _start_fetch(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> asyncio.Task[Any]:
        if self.closed:
            raise PartitionClosedError("the server is shutting down")

        async def fill() -> Any:
            value, size = await fetch()
            if not self._of_forgotten_topic(cache_key):
                self._cache.put(cache_key, value, size)
            return value

        task = asyncio.get_running_loop().create_task(fill(), name=f"cold read {cache_key}")
        self._fetching[cache_key] = task
        task.add_done_callback(partial(self._fetched, cache_key))
        return task

    def _of_forgotten_topic(self, cache_key: Hashable) -> bool:
        if not isinstance(cache_key, tuple):
            return False
        tenant, _, rest = str(cache_key[0]).partition("/")
        return topic_prefix(tenant, rest.partition("/")[0]) in self._forgotten

    def _fetched(self, cache_key: Hashable, task: asyncio.Task[Any]) -> None:
        self._fetching.pop(cache_key, None)
        self._ahead.discard(cache_key)
        if not task.cancelled() and task.exception() is not None:
            self._counters.fetch_failures += 1

    async def _fetch_chunk(self, seg: RemoteSegment, number: int) -> tuple[bytes, int]:
        start = number * self.chunk_bytes
        data = await self.fetch_range(seg, start, min(start + self.chunk_bytes, seg.size))
        return data, len(data)

    async def _fetch_index(self, seg: RemoteSegment) -> tuple[RemoteSegmentIndex, int]:
        raw_index, raw_time = await asyncio.gather(
            self._get(seg.index_key), self._get(seg.time_key)
        )
        index = RemoteSegmentIndex.parse(raw_index, raw_time)
        return index, index.size_bytes

    async def _get(self, object_key: str, start: int = 0, end: int | None = None) -> bytes:
        started = self._clock()
        try:
            data = await self._store.get(object_key, start, end)
        except ObjectNotFoundError:
            raise RemoteSegmentMissingError(
                f"{object_key} is not in the object store", key=object_key
            ) from None
        self._count_fetch(len(data), started)
        return data

    def _count_fetch(self, size: int, started: float) -> None:
        self._counters.fetches += 1
        self._counters.fetched_bytes += size
        self._counters.fetch_seconds.observe(self._clock() - started)
