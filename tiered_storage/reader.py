"""Cold reads: offsets whose only copy is in the object store, read back through the cache.

:class:`RemoteSegmentReader` implements :class:`partitions.remote.RemoteLogReader`; the app
factory wires it into the partition worker, which asks it for the offsets between a
partition's log start and its local start and continues into local data itself.

How one read goes:

1. The partition's copy-finished catalog rows (mirrored in :class:`~tiered_storage.state.
   RemoteIndex`) say which segment holds the offset (:mod:`tiered_storage.remote_segments`).
   Only copy-finished rows are read: a copy that has not finished may be partial.
2. The segment's two indexes (``.index`` and ``.timeindex``, the formats of
   :mod:`partitions.segment`) are fetched once, parsed (:mod:`tiered_storage.segment_index`),
   and kept in the cache; the offset index gives the byte position to start from (at most
   an index interval before the batch holding the offset).
3. The ``.log`` object is read in aligned *chunks* of ``chunk_bytes``: chunk ``n`` is the
   ranged GET of bytes ``[n * chunk_bytes, (n + 1) * chunk_bytes)``. A read fetches only the
   chunks its bytes fall in, all at once, and each chunk is kept in the cache, so the next
   read of the same range costs no request. Concurrent reads of one chunk share one GET
   (:mod:`tiered_storage.segment_fetcher`, :mod:`tiered_storage.segment_views`).
4. Batches come back whole, exactly as stored (the binary path hands them to clients), or
   decoded and CRC-checked (the JSON path), within the same bounds as local reads; a read
   goes on into the next remote segment while its bounds allow.
5. **Read-ahead**: a read that continues where an earlier read of the partition left off
   (a consumer reading on, a group member fetching again; :mod:`tiered_storage.read_ends`)
   starts fetching the next ``read_ahead_chunks`` chunks after where it ended, across
   segment boundaries, while the consumer works through what it got. Read-ahead in flight
   is bounded (at most half the cache's worth of chunks over all partitions).

A local store (``file://``, :attr:`~tiered_storage.objects.ObjectStore.local`) is read
directly instead of steps 3 and 5: its files are in the kernel's page cache already (which
also reads ahead), so each read reads exactly its byte range, a binary read spanning
segments reads them into one buffer in one call, and only indexes are cached
(:class:`~tiered_storage.segment_views.DirectView`,
:meth:`RemoteSegmentReader._read_batches_direct`).

Nothing here holds a lock across a fetch: any number of partitions, and any number of reads
of one partition, wait on the store at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from partitions.batch import (
    BATCH_HEADER,
    BatchBytes,
    Record,
    WalkStop,
    checksum_ok,
    iter_records,
    read_header,
    walk_batches,
)
from partitions.catalog import RemoteSegmentRecord
from partitions.errors import PartitionClosedError
from partitions.partition_key import PartitionKey
from partitions.remote import RemoteBatches, RemoteLogReader, RemoteRecords
from tiered_storage.cache import ReadCache
from tiered_storage.objects import ObjectStore
from tiered_storage.read_counters import ColdReadCounters
from tiered_storage.read_ends import ReadEnd, RecentReadEnds
from tiered_storage.read_settings import ColdReadSettings
from tiered_storage.remote_segments import (
    RemoteSegment,
    RemoteSegmentDamagedError,
    RemoteSegmentMissingError,
    SegmentRun,
    checked_header,
    plan_ranges,
    run_from,
)
from tiered_storage.segment_fetcher import SegmentFetcher
from tiered_storage.segment_views import CachedChunkView, DirectView, SegmentView

log = logging.getLogger(__name__)

_HEADER = BATCH_HEADER.size


class RemoteSegmentReader:
    """:class:`partitions.remote.RemoteLogReader` over an object store, with a read cache.

    ``rows`` answers a partition's copy-finished remote segments by base offset, and
    ``reload`` reads them from the catalog again (both are
    :class:`~tiered_storage.state.RemoteIndex`'s).
    """

    def __init__(
        self,
        store: ObjectStore,
        rows: Callable[[PartitionKey], Awaitable[list[RemoteSegmentRecord]]],
        reload: Callable[[PartitionKey], Awaitable[None]],
        settings: ColdReadSettings | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings or ColdReadSettings()
        self.chunk_bytes = self.settings.effective_chunk_bytes
        self.cache = ReadCache(self.settings.cache_bytes)
        self.counters = ColdReadCounters()
        # A local store's files are read directly, not through the read cache (DirectView).
        self._direct = store.local
        self._rows = rows
        self._reload = reload
        self._clock = clock
        self._fetcher = SegmentFetcher(
            store,
            self.cache,
            self.counters,
            chunk_bytes=self.chunk_bytes,
            # Read-ahead never has more chunks in flight than half the cache holds.
            read_ahead_limit=max(1, self.settings.cache_bytes // self.chunk_bytes // 2),
            clock=clock,
        )
        self._read_ends = RecentReadEnds()

    @property
    def read_ends(self) -> RecentReadEnds:
        """Where recent reads of each partition stopped: a read that starts at one of them
        continues a sequential reader."""
        return self._read_ends

    async def close(self) -> None:
        """Stop every fetch in flight (reads waiting on one fail with partition_closed)."""
        await self._fetcher.close()

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        """Drop a deleted topic's cached chunks and indexes."""
        self._fetcher.forget_topic(tenant, incarnation)
        self._read_ends.forget_topic(tenant, incarnation)

    # --- the RemoteLogReader Protocol -----------------------------------------------------

    async def read(
        self,
        key: PartitionKey,
        offset: int,
        *,
        max_records: int,
        max_bytes: int,
        end_offset: int,
    ) -> RemoteRecords:
        started = self._clock()
        resume = self._read_ends.take(key, offset)
        segments = await self._segments_from(key, offset, end_offset)
        records: list[Record] = []
        size = 0
        seg: RemoteSegment | None = None
        position = expected = 0
        full = False
        for n, seg in enumerate(segments):
            view = self._view(seg)
            position, expected = (
                await self._locate(view, offset, resume) if n == 0 else (0, seg.base_offset)
            )
            while position < seg.size and not full:
                header = await view.header(position, expected)
                end = position + header.total_size
                if header.next_offset > offset:
                    await view.ensure(position, end)
                    batch = view.view(position, end)
                    if not checksum_ok(batch, 0, header):
                        raise RemoteSegmentDamagedError(
                            f"{seg.log_key}: the batch at byte {position} fails its CRC"
                        )
                    for record in iter_records(batch, 0, min_offset=offset):
                        payload = record.payload_bytes
                        if records and size + payload > max_bytes:
                            full = True
                            break
                        records.append(record)
                        size += payload
                        if len(records) >= max_records:
                            full = True
                            break
                if full and records[-1].offset < header.last_offset:
                    break  # the batch is only partly read: the next read starts in it
                position, expected = end, header.next_offset
            if full:
                break
        next_offset = records[-1].offset + 1 if records else offset
        self._done(key, resume, next_offset, segments, seg, position, expected, end_offset, started)
        return RemoteRecords(records, next_offset)

    async def read_batches(
        self, key: PartitionKey, offset: int, *, max_bytes: int, end_offset: int
    ) -> RemoteBatches:
        started = self._clock()
        resume = self._read_ends.take(key, offset)
        segments = await self._segments_from(key, offset, end_offset)
        if self._direct:
            return await self._read_batches_direct(
                key, offset, max_bytes, end_offset, started, resume, segments
            )
        pieces: list[BatchBytes] = []
        total = 0
        first: int | None = None
        next_offset = offset
        seg: RemoteSegment | None = None
        position = expected = 0
        full = False
        for n, seg in enumerate(segments):
            view = self._view(seg)
            position, expected = (
                await self._locate(view, offset, resume) if n == 0 else (0, seg.base_offset)
            )
            start = position
            # Everything the byte budget allows is fetched at once.
            await view.ensure(position, position + max(max_bytes - total, _HEADER))
            while position < seg.size:
                # The batches wholly in one loaded buffer, in one pass without awaiting...
                buf, base = view.loaded_at(position)
                walk = walk_batches(
                    buf,
                    position - base,
                    len(buf),
                    max_bytes - total,
                    first=not total,
                    expected=expected,
                )
                if walk.position > position - base:
                    if first is None:
                        first = expected
                    total += walk.position - (position - base)
                    position = base + walk.position
                    expected = next_offset = walk.next_offset
                if walk.stop is WalkStop.BUDGET:
                    full = True
                    break
                if position >= seg.size:
                    break
                # ...then one that lies across buffers, or a header to check with its reason.
                header = await view.header(position, expected)
                if total and total + header.total_size > max_bytes:
                    full = True
                    break
                await view.ensure(position, position + header.total_size)
                if first is None:
                    first = header.base_offset
                position += header.total_size
                total += header.total_size
                expected = next_offset = header.next_offset
            if position > start:
                pieces.append(view.view(start, position))
            if full or total >= max_bytes:
                break
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._done(key, resume, next_offset, segments, seg, position, expected, end_offset, started)
        return RemoteBatches(data, offset if first is None else first, next_offset)

    async def _read_batches_direct(
        self,
        key: PartitionKey,
        offset: int,
        max_bytes: int,
        end_offset: int,
        started: float,
        resume: ReadEnd | None,
        segments: SegmentRun,
    ) -> RemoteBatches:
        """:meth:`read_batches` from a local store: the byte ranges of every segment the
        budget reaches, read into one buffer in one call, then the batches in each taken in
        one pass. A read that crosses segments is one buffer already: no copy joins its
        pieces, and the answer is a view of the batches that fit."""
        first_seg = next(iter(segments), None)
        if first_seg is None:  # nothing remote from ``offset`` below ``end_offset``
            self._done(key, resume, offset, segments, None, 0, 0, end_offset, started)
            return RemoteBatches(b"", offset, offset)
        if (
            resume is not None
            and (resume.segment_base, resume.batch_base) == (first_seg.base_offset, offset)
            and resume.position < first_seg.size
        ):
            # Where the previous read stopped, at a batch boundary: the walk below checks
            # that a batch for ``offset`` is there.
            position, expected, trusted = resume.position, offset, True
        else:
            view = DirectView(self._fetcher, first_seg)
            position, expected = await self._locate(view, offset, resume)
            trusted = False
        plan = plan_ranges(first_seg, position, segments.after(first_seg), max_bytes)
        if not plan:
            raise RemoteSegmentDamagedError(
                f"{first_seg.log_key}: offset {offset} is not in the segment"
            )
        buffer = await self._fetcher.read_direct(plan)
        total = 0
        first: int | None = None
        next_offset = offset
        base = 0  # where the segment's range starts in the buffer
        done = plan[0]
        for seg, start, stop in plan:
            done = (seg, start, stop)
            if seg is not plan[0][0]:
                expected = seg.base_offset
            walk = walk_batches(
                buffer,
                base,
                base + stop - start,
                max_bytes - total,
                first=not total,
                expected=expected,
            )
            taken = walk.position - base
            position = start + taken
            if taken:
                first = expected if first is None else first
                total += taken
                expected = next_offset = walk.next_offset
            short = position < stop and position + _HEADER > stop and not total
            if walk.stop is WalkStop.BAD or short:
                if trusted and not total:
                    # Not where the previous read said: find the offset through the index.
                    return await self._read_batches_direct(
                        key, offset, max_bytes, end_offset, started, None, segments
                    )
                if short:
                    raise RemoteSegmentDamagedError(
                        f"{seg.log_key}: {stop - position} bytes at {position} are less "
                        "than a batch header"
                    )
                checked_header(seg, read_header(buffer, walk.position), position, expected)
                raise RemoteSegmentDamagedError(f"{seg.log_key}: no batch at byte {position}")
            if walk.stop is WalkStop.BUDGET or (position < stop and total):
                break  # the next batch does not fit in the budget
            if position < stop:
                # The first batch runs past the range: larger than the budget, it comes
                # alone and whole (or runs past its segment's end, which is damage).
                header = checked_header(seg, read_header(buffer, walk.position), position, expected)
                buffer = await self._fetcher.fetch_range(
                    seg, position, position + header.total_size
                )
                total, first = len(buffer), header.base_offset
                expected = next_offset = header.next_offset
                position += header.total_size
                break
            base += stop - start
        answer: BatchBytes = (
            buffer
            if total == len(buffer) and isinstance(buffer, bytes)
            else memoryview(buffer)[:total]
        )
        self._done(
            key, resume, next_offset, segments, done[0], position, expected, end_offset, started
        )
        return RemoteBatches(answer, offset if first is None else first, next_offset)

    async def offset_for_timestamp(
        self, key: PartitionKey, timestamp_ms: int, *, start_offset: int, end_offset: int
    ) -> int | None:
        started = self._clock()
        try:
            for seg in await self._segments_from(key, start_offset, end_offset):
                if seg.max_timestamp_ms < timestamp_ms:
                    continue
                found = await self._find_timestamp(seg, timestamp_ms, start_offset)
                if found is not None:
                    return found
            return None
        finally:
            self._observe(started)

    # --- finding segments and batches ------------------------------------------------------

    async def _segments_from(self, key: PartitionKey, offset: int, end_offset: int) -> SegmentRun:
        """The remote segments from the one holding ``offset`` up to ``end_offset``, as long
        as they follow each other without a gap."""
        if self._fetcher.closed:
            raise PartitionClosedError("the server is shutting down")
        if offset >= end_offset:
            return SegmentRun(key, [], 0, end_offset)
        for attempt in range(2):
            run = run_from(key, await self._rows(key), offset, end_offset)
            if run is not None:
                return run
            if attempt == 0:
                await self._reload(key)  # another process may have changed the rows
        raise RemoteSegmentMissingError(
            f"no finished copy of offset {offset} of partition {key.partition_id} is in "
            "object storage",
            offset=offset,
        )

    async def _locate(
        self, view: SegmentView, offset: int, resume: ReadEnd | None = None
    ) -> tuple[int, int]:
        """(position, base offset) of the batch holding ``offset``: the segment's start,
        where an earlier read stopped, or from the segment's offset index."""
        seg = view.seg
        if offset == seg.base_offset:
            return 0, offset
        if resume is not None and resume.segment_base == seg.base_offset:
            with contextlib.suppress(RemoteSegmentDamagedError):
                return await self._scan_to(view, resume.position, resume.batch_base, offset)
        index = await self._fetcher.index(seg)
        position, expected = index.locate(seg.base_offset, offset)
        try:
            return await self._scan_to(view, position, expected, offset)
        except RemoteSegmentDamagedError:
            if position == 0:
                raise
            # An index entry that does not point at its batch: scan from the start.
            log.warning("%s: its index disagrees with the log; scanning", seg.log_key)
            return await self._scan_to(view, 0, seg.base_offset, offset)

    @staticmethod
    async def _scan_to(
        view: SegmentView, position: int, expected: int, offset: int
    ) -> tuple[int, int]:
        seg = view.seg
        while position < seg.size:
            header = await view.header(position, expected)
            if header.next_offset > offset:
                return position, expected
            position += header.total_size
            expected = header.next_offset
        raise RemoteSegmentDamagedError(f"{seg.log_key}: offset {offset} is not in the segment")

    async def _find_timestamp(
        self, seg: RemoteSegment, timestamp_ms: int, min_offset: int
    ) -> int | None:
        index = await self._fetcher.index(seg)
        view = self._view(seg)
        position, expected = index.timestamp_position(seg.base_offset, timestamp_ms)
        while position < seg.size:
            header = await view.header(position, expected)
            end = position + header.total_size
            if header.max_timestamp >= timestamp_ms and header.next_offset > min_offset:
                await view.ensure(position, end)
                for record in iter_records(view.view(position, end), 0, min_offset=min_offset):
                    if record.timestamp_ms >= timestamp_ms:
                        return record.offset
            position, expected = end, header.next_offset
        return None

    def _view(self, seg: RemoteSegment) -> SegmentView:
        return (
            DirectView(self._fetcher, seg) if self._direct else CachedChunkView(self._fetcher, seg)
        )

    # --- sequential readers ----------------------------------------------------------------

    def _done(
        self,
        key: PartitionKey,
        resume: ReadEnd | None,
        next_offset: int,
        segments: SegmentRun,
        seg: RemoteSegment | None,
        position: int,
        batch_base: int,
        end_offset: int,
        started: float,
    ) -> None:
        """Remember where the read stopped, start the read-ahead of a sequential reader (one
        that continued where an earlier read stopped), and count the read."""
        self._read_ends.remember(
            key, next_offset, None if seg is None else seg.base_offset, position, batch_base
        )
        if resume is not None and seg is not None and next_offset < end_offset:
            if not self._direct:
                self._read_ahead(segments.after(seg), seg, position)
        self._observe(started)

    def _read_ahead(
        self, following: Iterator[RemoteSegment], seg: RemoteSegment, position: int
    ) -> None:
        """Make sure the ``read_ahead_chunks`` chunks from ``position`` on (into the next
        segments too) are cached or being fetched. (A reader enters the next segment at its
        start, which needs no index.)"""
        wanted = self.settings.read_ahead_chunks
        size = self.chunk_bytes
        current: RemoteSegment | None = seg
        while wanted > 0 and current is not None:
            number = -(-position // size)  # the first chunk that starts at or after it
            while wanted > 0 and number * size < current.size:
                self._fetcher.prefetch_chunk(current, number)
                wanted -= 1
                number += 1
            current, position = next(following, None), 0

    def _observe(self, started: float) -> None:
        self.counters.reads += 1
        self.counters.read_seconds.observe(self._clock() - started)


def _conforms(reader: RemoteSegmentReader) -> RemoteLogReader:
    """Lets mypy prove that the reader implements the whole Protocol."""
    return reader
