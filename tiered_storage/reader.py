"""Cold reads: offsets whose only copy is in the object store, read back through the cache.

:class:`RemoteSegmentReader` implements :class:`partitions.remote.RemoteLogReader`; the app
factory wires it into the partition worker, which asks it for the offsets between a
partition's log start and its local start and continues into local data itself.

How one read goes:

1. The partition's copy-finished catalog rows (mirrored in :class:`~tiered_storage.state.
   RemoteIndex`) say which segment holds the offset. Only copy-finished rows are read:
   a copy that has not finished may be partial.
2. The segment's two indexes (``.index`` and ``.timeindex``, the formats of
   :mod:`partitions.log.index`) are fetched once, parsed, and kept in the cache; the offset
   index gives the byte position to start from (at most an index interval before the batch
   holding the offset).
3. The ``.log`` object is read in aligned *chunks* of ``chunk_bytes``: chunk ``n`` is the
   ranged GET of bytes ``[n * chunk_bytes, (n + 1) * chunk_bytes)``. A read fetches only the
   chunks its bytes fall in, all at once, and each chunk is kept in the cache, so the next
   read of the same range costs no request. Concurrent reads of one chunk share one GET.
4. Batches come back whole, exactly as stored (the binary path hands them to clients), or
   decoded and CRC-checked (the JSON path), within the same bounds as local reads; a read
   goes on into the next remote segment while its bounds allow.
5. **Read-ahead**: a read that continues where an earlier read of the partition left off
   (a consumer reading on, a group member fetching again) starts fetching the next
   ``read_ahead_chunks`` chunks after where it ended, across segment boundaries, while the
   consumer works through what it got. Read-ahead in flight is bounded (at most half the
   cache's worth of chunks over all partitions).

A local store (``file://``, :attr:`~tiered_storage.objects.ObjectStore.local`) is read
directly instead of steps 3 and 5: its files are in the kernel's page cache already (which
also reads ahead), so each read reads exactly its byte range, a binary read spanning
segments reads them into one buffer in one call, and only indexes are cached
(:class:`_DirectView`, :meth:`RemoteSegmentReader._read_batches_direct`).

Nothing here holds a lock across a fetch: any number of partitions, and any number of reads
of one partition, wait on the store at the same time.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import logging
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from partitions.batch import (
    BATCH_HEADER,
    FORMAT_VERSION,
    BatchBytes,
    BatchHeader,
    Record,
    WalkStop,
    checksum_ok,
    iter_records,
    read_header,
    walk_batches,
)
from partitions.catalog import RemoteSegmentRecord
from partitions.errors import CorruptLogError, EventBusError, PartitionClosedError
from partitions.log.index import OFFSET_INDEX_ENTRY, TIME_INDEX_ENTRY
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX
from partitions.remote import RemoteBatches, RemoteLogReader, RemoteRecords
from partitions.worker import PartitionKey
from tiered_storage.cache import ReadCache
from tiered_storage.layout import segment_key, topic_prefix
from tiered_storage.objects import ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# The smallest chunk a read fetches, whatever the cache size.
MIN_CHUNK_BYTES = 4096
# Partitions whose recent read positions are remembered (to spot sequential readers), and
# positions remembered per partition (several consumers may read one partition).
_STREAM_PARTITIONS = 4096
_STREAMS_PER_PARTITION = 8
# A batch header's smallest honest length field (see partitions.log.segment).
_MIN_BATCH_LENGTH = BATCH_HEADER.size - struct.calcsize(">QI")
_HEADER = BATCH_HEADER.size


class RemoteSegmentMissingError(CorruptLogError):
    """A copy-finished segment's object is not in the store, though its offsets are still
    above the log start: the store lost it, or something other than this server deleted it.
    (A segment that retention removed during a read answers 416 instead.)"""

    code = "remote_segment_missing"


class RemoteSegmentDamagedError(CorruptLogError):
    """A remote segment's bytes are not what its catalog row and its own headers say."""

    code = "remote_segment_damaged"


@dataclass(frozen=True, slots=True)
class ColdReadSettings:
    # Bound of the read cache (fetched chunks and parsed indexes), in bytes.
    cache_bytes: int = 256 * MIB
    # Size of one ranged GET of a segment's log (aligned; the last one of a segment is
    # shorter). Clamped to a quarter of the cache, so the cache always holds a few.
    chunk_bytes: int = 8 * MIB
    # Chunks fetched ahead of a sequential reader.
    read_ahead_chunks: int = 2

    def __post_init__(self) -> None:
        if self.cache_bytes < 1 or self.chunk_bytes < 1:
            raise ValueError("the read cache and its chunks need positive sizes")
        if self.read_ahead_chunks < 0:
            raise ValueError("read_ahead_chunks cannot be negative")

    @property
    def effective_chunk_bytes(self) -> int:
        return max(MIN_CHUNK_BYTES, min(self.chunk_bytes, self.cache_bytes // 4))


class LatencyHistogram:
    """Counts of observed durations per bucket (seconds), for a Prometheus histogram."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # the last one: above every bucket
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class ColdReadCounters:
    """Numbers for /metrics. A *hit* is a chunk or index a read needed that was cached or
    already being fetched (by read-ahead, or for another reader); a *miss* had to be
    fetched by the read itself."""

    reads: int = 0
    hits: int = 0
    misses: int = 0
    fetches: int = 0
    fetched_bytes: int = 0
    fetch_failures: int = 0
    read_ahead_chunks: int = 0
    read_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
    fetch_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


class RemoteSegmentIndex:
    """The parsed offset and time indexes of one remote segment (lockstep arrays)."""

    __slots__ = ("max_timestamps", "positions", "relative_offsets")

    def __init__(
        self,
        relative_offsets: array.array[int],
        positions: array.array[int],
        max_timestamps: array.array[int],
    ) -> None:
        self.relative_offsets = relative_offsets
        self.positions = positions
        self.max_timestamps = max_timestamps

    @classmethod
    def parse(cls, raw_index: bytes, raw_time: bytes) -> RemoteSegmentIndex:
        """Entries up to the first one that breaks the rules the log keeps (positions and
        offsets rise, timestamps never fall, both files agree); a damaged tail only makes
        lookups scan a little further."""
        count = min(
            len(raw_index) // OFFSET_INDEX_ENTRY.size, len(raw_time) // TIME_INDEX_ENTRY.size
        )
        rels, positions, stamps = array.array("I"), array.array("I"), array.array("q")
        last_rel = last_pos = -1
        last_ts = -(1 << 63)
        entries = zip(
            OFFSET_INDEX_ENTRY.iter_unpack(raw_index[: count * OFFSET_INDEX_ENTRY.size]),
            TIME_INDEX_ENTRY.iter_unpack(raw_time[: count * TIME_INDEX_ENTRY.size]),
            strict=True,
        )
        for (rel, pos), (ts, rel_t) in entries:
            if rel != rel_t or pos == 0 or pos <= last_pos or rel <= last_rel or ts < last_ts:
                break
            rels.append(rel)
            positions.append(pos)
            stamps.append(ts)
            last_rel, last_pos, last_ts = rel, pos, ts
        return cls(rels, positions, stamps)

    @property
    def size_bytes(self) -> int:
        """What the cache charges for it: its arrays and a little for the object."""
        arrays = (self.relative_offsets, self.positions, self.max_timestamps)
        return 256 + sum(len(a) * a.itemsize for a in arrays)

    def locate(self, base_offset: int, offset: int) -> tuple[int, int]:
        """(position, base offset) of the last indexed batch at or before ``offset``."""
        i = bisect.bisect_right(self.relative_offsets, offset - base_offset) - 1
        if i < 0:
            return 0, base_offset
        return self.positions[i], base_offset + self.relative_offsets[i]

    def timestamp_position(self, base_offset: int, timestamp_ms: int) -> tuple[int, int]:
        """Where to start looking for the first record at or after ``timestamp_ms``: the
        last entry whose earlier batches are all older."""
        i = bisect.bisect_left(self.max_timestamps, timestamp_ms) - 1
        if i < 0:
            return 0, base_offset
        return self.positions[i], base_offset + self.relative_offsets[i]


@dataclass(frozen=True, slots=True)
class _Segment:
    """One copy-finished remote segment, with its object keys."""

    base_offset: int
    last_offset: int
    size: int
    max_timestamp_ms: int
    log_key: str
    index_key: str
    time_key: str

    @classmethod
    def of(cls, key: PartitionKey, row: RemoteSegmentRecord) -> _Segment:
        base = row.base_offset
        return cls(
            base,
            row.last_offset,
            row.size_bytes,
            row.max_timestamp_ms,
            segment_key(key, base, LOG_SUFFIX),
            segment_key(key, base, INDEX_SUFFIX),
            segment_key(key, base, TIME_INDEX_SUFFIX),
        )

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


@dataclass(frozen=True, slots=True)
class _StreamEnd:
    """Where a read of a partition stopped: the next offset, and the byte position in the
    segment of the batch holding it (with that batch's base offset), so that the read that
    continues from there needs no index lookup."""

    next_offset: int
    segment_base: int
    position: int
    batch_base: int


class _SegmentView:
    """The chunks of one segment's log that one read has loaded, addressed by byte position."""

    __slots__ = ("_chunk_bytes", "_chunks", "_reader", "seg")

    def __init__(self, reader: RemoteSegmentReader, seg: _Segment) -> None:
        self._reader = reader
        self.seg = seg
        self._chunk_bytes = reader.chunk_bytes
        self._chunks: dict[int, bytes] = {}

    async def ensure(self, start: int, end: int) -> None:
        """Load every chunk that bytes ``[start, end)`` fall in (at once, concurrently)."""
        end = min(end, self.seg.size)
        if start >= end:
            return
        size = self._chunk_bytes
        missing = [n for n in range(start // size, (end - 1) // size + 1) if n not in self._chunks]
        if len(missing) == 1:
            self._chunks[missing[0]] = await self._reader._chunk(self.seg, missing[0])
        elif missing:
            loaded = await asyncio.gather(*(self._reader._chunk(self.seg, n) for n in missing))
            self._chunks.update(zip(missing, loaded, strict=True))

    def loaded_at(self, position: int) -> tuple[bytes, int]:
        """The loaded chunk that holds ``position`` and where it starts (nothing, if
        that chunk is not loaded)."""
        n = position // self._chunk_bytes
        chunk = self._chunks.get(n)
        return (b"", position) if chunk is None else (chunk, n * self._chunk_bytes)

    async def header(self, position: int, expected_offset: int) -> BatchHeader:
        """The checked header of the batch at ``position``, which must hold
        ``expected_offset`` first."""
        seg = self.seg
        if position + _HEADER > seg.size:
            raise RemoteSegmentDamagedError(
                f"{seg.log_key}: {seg.size - position} bytes at {position} are less than a "
                "batch header"
            )
        size = self._chunk_bytes
        n = position // size
        chunk = self._chunks.get(n)
        if chunk is not None and position + _HEADER - n * size <= len(chunk):
            header = read_header(chunk, position - n * size)
        else:
            await self.ensure(position, position + _HEADER)
            header = read_header(self.view(position, position + _HEADER))
        return _checked(seg, header, position, expected_offset)

    def view(self, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)``, loaded before: a view into one chunk when they lie in
        one, else a copy."""
        size = self._chunk_bytes
        n = start // size
        chunk = self._chunks[n]
        if end - n * size <= len(chunk):
            return memoryview(chunk)[start - n * size : end - n * size]
        return self.copy(start, end)

    def copy(self, start: int, end: int) -> bytes:
        size = self._chunk_bytes
        parts = []
        position = start
        while position < end:
            n = position // size
            chunk_start = n * size
            chunk = self._chunks[n]
            stop = min(end, chunk_start + len(chunk))
            parts.append(memoryview(chunk)[position - chunk_start : stop - chunk_start])
            position = stop
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)


def _checked(seg: _Segment, header: BatchHeader, position: int, expected: int) -> BatchHeader:
    if (
        header.version != FORMAT_VERSION
        or header.record_count < 1
        or header.batch_length < _MIN_BATCH_LENGTH + header.producer_tag_length
        or header.base_offset != expected
        or position + header.total_size > seg.size
    ):
        raise RemoteSegmentDamagedError(
            f"{seg.log_key}: no batch for offset {expected} at byte {position}"
        )
    return header


class _DirectView:
    """The bytes of one segment's log that one read has loaded from a local store
    (:attr:`ObjectStore.local`, ``file://``): the ranges the read asks for (at least
    ``_DIRECT_MIN_LOAD`` bytes at a time, so that walking small batches one by one costs one
    read per that many bytes, not one per batch), kept for this read only.

    The kernel's page cache already keeps recently read files, so keeping them again in
    the read cache would double their memory and add a copy of every byte; and a local
    read waits for no network, so read-ahead has nothing to hide. A batch within one
    loaded range is a view into it, without a copy.
    """

    __slots__ = ("_last", "_last_end", "_last_start", "_ranges", "_reader", "seg")

    def __init__(self, reader: RemoteSegmentReader, seg: _Segment) -> None:
        self._reader = reader
        self.seg = seg
        self._ranges: list[tuple[int, bytes | bytearray]] = []  # (start, bytes), in load order
        # The range loaded last, which a read walks batch by batch: looked at first.
        self._last: bytes | bytearray = b""
        self._last_start = self._last_end = 0

    def _holding(self, position: int) -> tuple[int, bytes | bytearray] | None:
        """The loaded range that holds ``position`` and runs furthest after it."""
        best: tuple[int, bytes | bytearray] | None = None
        for start, data in self._ranges:
            end = start + len(data)
            if start <= position < end and (best is None or end > best[0] + len(best[1])):
                best = (start, data)
        return best

    def loaded_at(self, position: int) -> tuple[bytes | bytearray, int]:
        """The loaded range that holds ``position`` and where it starts (nothing, if none
        does)."""
        if self._last_start <= position < self._last_end:
            return self._last, self._last_start
        found = self._holding(position)
        return (b"", position) if found is None else (found[1], found[0])

    async def ensure(self, start: int, end: int) -> None:
        """Load bytes ``[start, end)`` in one read unless one loaded range holds them all.
        The read goes on for a batch header's length, so that the header of the batch
        after them, which a read looks at to learn whether that batch fits, comes along."""
        if self._last_start <= start and end <= self._last_end:
            return
        end = min(end, self.seg.size)
        if start >= end:
            return
        found = self._holding(start)
        if found is not None and end <= found[0] + len(found[1]):
            return
        stop = min(max(end + _HEADER, start + _DIRECT_MIN_LOAD), self.seg.size)
        self._loaded(start, await self._reader._read_direct([(self.seg, start, stop)]))

    def _loaded(self, start: int, data: bytes | bytearray) -> None:
        self._ranges.append((start, data))
        self._last, self._last_start, self._last_end = data, start, start + len(data)

    async def header(self, position: int, expected_offset: int) -> BatchHeader:
        seg = self.seg
        if position + _HEADER > seg.size:
            raise RemoteSegmentDamagedError(
                f"{seg.log_key}: {seg.size - position} bytes at {position} are less than a "
                "batch header"
            )
        if self._last_start <= position and position + _HEADER <= self._last_end:
            header = read_header(self._last, position - self._last_start)
        else:
            await self.ensure(position, position + _HEADER)
            header = read_header(self.view(position, position + _HEADER))
        return _checked(seg, header, position, expected_offset)

    def view(self, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)``, loaded before: a view when one range holds them, else a
        copy."""
        if self._last_start <= start and end <= self._last_end:
            return memoryview(self._last)[start - self._last_start : end - self._last_start]
        found = self._holding(start)
        if found is not None and end <= found[0] + len(found[1]):
            return memoryview(found[1])[start - found[0] : end - found[0]]
        return self.copy(start, end)

    def copy(self, start: int, end: int) -> bytes:
        parts = []
        position = start
        while position < end:
            found = self._holding(position)
            if found is None:
                raise AssertionError(f"bytes at {position} were not loaded")
            base, data = found
            stop = min(end, base + len(data))
            parts.append(memoryview(data)[position - base : stop - base])
            position = stop
        return b"".join(parts)


_View = _SegmentView | _DirectView
# The least a _DirectView reads at once: a few index intervals, many small batches.
_DIRECT_MIN_LOAD = 256 * 1024
_Plan = list[tuple[_Segment, int, int]]


def _plan(seg: _Segment, position: int, following: Iterator[_Segment], max_bytes: int) -> _Plan:
    """The ranges ``(segment, start, end)`` that a read of ``max_bytes`` from ``position``
    in ``seg`` spans: to each segment's end, and into the ones following, while the budget
    lasts."""
    plan: _Plan = []
    room = max(max_bytes, _HEADER)
    current: _Segment | None = seg
    while current is not None and room > 0:
        if position < current.size:
            stop = min(current.size, position + room)
            plan.append((current, position, stop))
            room -= stop - position
        current, position = next(following, None), 0
    return plan


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
        self._store = store
        # A local store's files are read directly, not through the read cache (_DirectView).
        self._direct = store.local
        self._rows = rows
        self._reload = reload
        self._clock = clock
        self._fetching: dict[Hashable, asyncio.Task[Any]] = {}
        self._ahead: set[Hashable] = set()
        # Read-ahead never has more chunks in flight than half the cache holds.
        self._ahead_limit = max(1, self.settings.cache_bytes // self.chunk_bytes // 2)
        self._streams: OrderedDict[PartitionKey, deque[_StreamEnd]] = OrderedDict()
        self._closed = False
        # Topic prefixes of deleted incarnations (one short entry per deletion this process
        # ran): a fetch that returns after its topic was forgotten caches nothing.
        self._forgotten: set[str] = set()

    async def close(self) -> None:
        """Stop every fetch in flight (reads waiting on one fail with partition_closed)."""
        self._closed = True
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        """Drop a deleted topic's cached chunks and indexes."""
        prefix = topic_prefix(tenant, incarnation)
        self._forgotten.add(prefix)
        self.cache.discard_where(lambda k: isinstance(k, tuple) and str(k[0]).startswith(prefix))
        for key in [k for k in self._streams if (k.tenant, k.incarnation) == (tenant, incarnation)]:
            del self._streams[key]

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
        resume = self._continues(key, offset)
        segments = await self._segments_from(key, offset, end_offset)
        records: list[Record] = []
        size = 0
        seg: _Segment | None = None
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
        resume = self._continues(key, offset)
        segments = await self._segments_from(key, offset, end_offset)
        if self._direct:
            return await self._read_batches_direct(
                key, offset, max_bytes, end_offset, started, resume, segments
            )
        pieces: list[BatchBytes] = []
        total = 0
        first: int | None = None
        next_offset = offset
        seg: _Segment | None = None
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
        resume: _StreamEnd | None,
        segments: _SegmentRun,
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
            view = _DirectView(self, first_seg)
            position, expected = await self._locate(view, offset, resume)
            trusted = False
        plan = _plan(first_seg, position, segments.after(first_seg), max_bytes)
        if not plan:
            raise RemoteSegmentDamagedError(
                f"{first_seg.log_key}: offset {offset} is not in the segment"
            )
        buffer = await self._read_direct(plan)
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
                _checked(seg, read_header(buffer, walk.position), position, expected)
                raise RemoteSegmentDamagedError(f"{seg.log_key}: no batch at byte {position}")
            if walk.stop is WalkStop.BUDGET or (position < stop and total):
                break  # the next batch does not fit in the budget
            if position < stop:
                # The first batch runs past the range: larger than the budget, it comes
                # alone and whole (or runs past its segment's end, which is damage).
                header = _checked(seg, read_header(buffer, walk.position), position, expected)
                buffer = await self._fetch_range(seg, position, position + header.total_size)
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

    async def _segments_from(self, key: PartitionKey, offset: int, end_offset: int) -> _SegmentRun:
        """The remote segments from the one holding ``offset`` up to ``end_offset``, as long
        as they follow each other without a gap."""
        if self._closed:
            raise PartitionClosedError("the server is shutting down")
        if offset >= end_offset:
            return _SegmentRun(key, [], 0, end_offset)
        for attempt in range(2):
            rows = await self._rows(key)
            i = bisect.bisect_right(rows, offset, key=lambda r: r.base_offset) - 1
            if i >= 0 and rows[i].last_offset >= offset:
                return _SegmentRun(key, rows, i, end_offset)
            if attempt == 0:
                await self._reload(key)  # another process may have changed the rows
        raise RemoteSegmentMissingError(
            f"no finished copy of offset {offset} of partition {key.partition_id} is in "
            "object storage",
            offset=offset,
        )

    async def _locate(
        self, view: _View, offset: int, resume: _StreamEnd | None = None
    ) -> tuple[int, int]:
        """(position, base offset) of the batch holding ``offset``: the segment's start,
        where an earlier read stopped, or from the segment's offset index."""
        seg = view.seg
        if offset == seg.base_offset:
            return 0, offset
        if resume is not None and resume.segment_base == seg.base_offset:
            with contextlib.suppress(RemoteSegmentDamagedError):
                return await self._scan_to(view, resume.position, resume.batch_base, offset)
        index = await self._index(seg)
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
    async def _scan_to(view: _View, position: int, expected: int, offset: int) -> tuple[int, int]:
        seg = view.seg
        while position < seg.size:
            header = await view.header(position, expected)
            if header.next_offset > offset:
                return position, expected
            position += header.total_size
            expected = header.next_offset
        raise RemoteSegmentDamagedError(f"{seg.log_key}: offset {offset} is not in the segment")

    async def _find_timestamp(
        self, seg: _Segment, timestamp_ms: int, min_offset: int
    ) -> int | None:
        index = await self._index(seg)
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

    # --- fetching through the cache --------------------------------------------------------

    def _view(self, seg: _Segment) -> _View:
        return _DirectView(self, seg) if self._direct else _SegmentView(self, seg)

    async def _read_direct(self, plan: _Plan) -> bytes | bytearray:
        """:meth:`_fetch_ranges` for a read of a local store, which no fetch task counts:
        its failures are counted here."""
        try:
            return await self._fetch_ranges(plan)
        except EventBusError:
            self.counters.fetch_failures += 1
            raise

    async def _fetch_ranges(self, plan: _Plan) -> bytes | bytearray:
        """The ranges ``(segment, start, end)`` of segments' logs, back to back in one
        buffer, straight from the store."""
        if len(plan) == 1:
            return await self._fetch_range(*plan[0])
        if self._closed:
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

    async def _fetch_range(self, seg: _Segment, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a segment's log, straight from the store."""
        if self._closed:
            raise PartitionClosedError("the server is shutting down")
        data = await self._get(seg.log_key, start, end)
        if len(data) != end - start:
            raise RemoteSegmentDamagedError(
                f"{seg.log_key}: bytes [{start}, {end}) answered {len(data)} bytes; its "
                f"catalog row says the object has {seg.size}"
            )
        return data

    async def _index(self, seg: _Segment) -> RemoteSegmentIndex:
        index: RemoteSegmentIndex = await self._cached(
            (seg.log_key, "index"), partial(self._fetch_index, seg)
        )
        return index

    async def _chunk(self, seg: _Segment, number: int) -> bytes:
        chunk: bytes = await self._cached(
            (seg.log_key, number), partial(self._fetch_chunk, seg, number)
        )
        return chunk

    async def _cached(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> Any:
        value = self.cache.get(cache_key)
        if value is not None:
            self.counters.hits += 1
            return value
        task = self._fetching.get(cache_key)
        if task is None:
            self.counters.misses += 1
            task = self._start_fetch(cache_key, fetch)
        else:
            self.counters.hits += 1
        # Shielded: a reader that gives up does not cancel a fetch others may wait on.
        return await asyncio.shield(task)

    def _start_fetch(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> asyncio.Task[Any]:
        if self._closed:
            raise PartitionClosedError("the server is shutting down")

        async def fill() -> Any:
            value, size = await fetch()
            if not self._of_forgotten_topic(cache_key):
                self.cache.put(cache_key, value, size)
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
            self.counters.fetch_failures += 1

    async def _fetch_chunk(self, seg: _Segment, number: int) -> tuple[bytes, int]:
        start = number * self.chunk_bytes
        data = await self._fetch_range(seg, start, min(start + self.chunk_bytes, seg.size))
        return data, len(data)

    async def _fetch_index(self, seg: _Segment) -> tuple[RemoteSegmentIndex, int]:
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
        self.counters.fetches += 1
        self.counters.fetched_bytes += size
        self.counters.fetch_seconds.observe(self._clock() - started)

    # --- sequential readers ----------------------------------------------------------------

    def _continues(self, key: PartitionKey, offset: int) -> _StreamEnd | None:
        """Where an earlier read of this partition stopped, if a read at ``offset``
        continues from there (that position is forgotten: the read moves it)."""
        ends = self._streams.get(key)
        if ends is None:
            return None
        for end in ends:
            if end.next_offset == offset:
                ends.remove(end)
                return end
        return None

    def _done(
        self,
        key: PartitionKey,
        resume: _StreamEnd | None,
        next_offset: int,
        segments: _SegmentRun,
        seg: _Segment | None,
        position: int,
        batch_base: int,
        end_offset: int,
        started: float,
    ) -> None:
        """Remember where the read stopped, start the read-ahead of a sequential reader (one
        that continued where an earlier read stopped), and count the read."""
        ends = self._streams.get(key)
        if ends is None:
            ends = self._streams[key] = deque(maxlen=_STREAMS_PER_PARTITION)
            if len(self._streams) > _STREAM_PARTITIONS:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(key)
        if seg is not None and all(e.next_offset != next_offset for e in ends):
            ends.append(_StreamEnd(next_offset, seg.base_offset, position, batch_base))
        if resume is not None and seg is not None and next_offset < end_offset:
            if not self._direct:
                self._read_ahead(segments.after(seg), seg, position)
        self._observe(started)

    def _read_ahead(self, following: Iterator[_Segment], seg: _Segment, position: int) -> None:
        """Make sure the ``read_ahead_chunks`` chunks from ``position`` on (into the next
        segments too) are cached or being fetched. (A reader enters the next segment at its
        start, which needs no index.)"""
        wanted = self.settings.read_ahead_chunks
        size = self.chunk_bytes
        current: _Segment | None = seg
        while wanted > 0 and current is not None:
            number = -(-position // size)  # the first chunk that starts at or after it
            while wanted > 0 and number * size < current.size:
                self._prefetch(
                    (current.log_key, number), partial(self._fetch_chunk, current, number)
                )
                wanted -= 1
                number += 1
            current, position = next(following, None), 0

    def _prefetch(
        self, cache_key: Hashable, fetch: Callable[[], Awaitable[tuple[Any, int]]]
    ) -> None:
        if cache_key in self.cache or cache_key in self._fetching:
            return
        if len(self._ahead) >= self._ahead_limit or self._closed:
            return
        if self._of_forgotten_topic(cache_key):
            return
        self._ahead.add(cache_key)
        self.counters.read_ahead_chunks += 1
        self._start_fetch(cache_key, fetch)

    def _observe(self, started: float) -> None:
        self.counters.reads += 1
        self.counters.read_seconds.observe(self._clock() - started)


class _SegmentRun:
    """The partition's remote segments from index ``first`` of ``rows`` on, while they
    start below ``end_offset`` and follow each other without a gap: made lazily, since a
    read of small segments may cross many and most reads cross one."""

    def __init__(
        self, key: PartitionKey, rows: list[RemoteSegmentRecord], first: int, end_offset: int
    ) -> None:
        self._key = key
        self._rows = rows
        self._first = first
        self._end_offset = end_offset
        self._made: list[_Segment] = []

    def _make(self, i: int) -> _Segment | None:
        """Segment ``i`` of the run, or None past its end."""
        while len(self._made) <= i:
            j = self._first + len(self._made)
            if j >= len(self._rows):
                return None
            row = self._rows[j]
            if row.base_offset >= self._end_offset:
                return None
            if self._made and row.base_offset != self._made[-1].next_offset:
                return None
            self._made.append(_Segment.of(self._key, row))
        return self._made[i]

    def __iter__(self) -> Iterator[_Segment]:
        return self._from(0)

    def after(self, seg: _Segment) -> Iterator[_Segment]:
        """The segments that follow ``seg`` in this run."""
        return self._from(next(n for n, made in enumerate(self._made) if made is seg) + 1)

    def _from(self, i: int) -> Iterator[_Segment]:
        while (seg := self._make(i)) is not None:
            yield seg
            i += 1


def _conforms(reader: RemoteSegmentReader) -> RemoteLogReader:
    """Lets mypy prove that the reader implements the whole Protocol."""
    return reader
