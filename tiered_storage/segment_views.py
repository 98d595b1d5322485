"""The bytes of one remote segment's log that one read has loaded, addressed by position.

A read walks a segment batch by batch through a view: it asks the view to load a range
(:meth:`ensure`), then reads headers and batches from it (:meth:`header`, :meth:`view`),
which are views into the loaded bytes, not copies, whenever one buffer holds them. Two
kinds, by store:

- :class:`CachedChunkView` for a remote store (S3): the aligned chunks the range falls in,
  shared through the read cache with every other read.
- :class:`DirectView` for a local store (``file://``): exactly the ranges asked for, read
  for this read only, since the kernel's page cache keeps the files already.
"""

from __future__ import annotations

import asyncio

from partitions.batch import BATCH_HEADER, BatchHeader, read_header
from tiered_storage.remote_segments import RemoteSegment, RemoteSegmentDamagedError, checked_header
from tiered_storage.segment_fetcher import SegmentFetcher

_HEADER = BATCH_HEADER.size
# The least a DirectView reads at once: a few index intervals, many small batches.
_DIRECT_MIN_LOAD = 256 * 1024


class CachedChunkView:
    """The chunks of one segment's log that one read has loaded, addressed by byte position."""

    __slots__ = ("_chunk_bytes", "_chunks", "_fetcher", "seg")

    def __init__(self, fetcher: SegmentFetcher, seg: RemoteSegment) -> None:
        self._fetcher = fetcher
        self.seg = seg
        self._chunk_bytes = fetcher.chunk_bytes
        self._chunks: dict[int, bytes] = {}

    async def ensure(self, start: int, end: int) -> None:
        """Load every chunk that bytes ``[start, end)`` fall in (at once, concurrently)."""
        end = min(end, self.seg.size)
        if start >= end:
            return
        size = self._chunk_bytes
        missing = [n for n in range(start // size, (end - 1) // size + 1) if n not in self._chunks]
        if len(missing) == 1:
            self._chunks[missing[0]] = await self._fetcher.chunk(self.seg, missing[0])
        elif missing:
            loaded = await asyncio.gather(*(self._fetcher.chunk(self.seg, n) for n in missing))
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
        return checked_header(seg, header, position, expected_offset)

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


class DirectView:
    """The bytes of one segment's log that one read has loaded from a local store
    (:attr:`~tiered_storage.objects.ObjectStore.local`, ``file://``): the ranges the read
    asks for (at least ``_DIRECT_MIN_LOAD`` bytes at a time, so that walking small batches
    one by one costs one read per that many bytes, not one per batch), kept for this read
    only.

    The kernel's page cache already keeps recently read files, so keeping them again in
    the read cache would double their memory and add a copy of every byte; and a local
    read waits for no network, so read-ahead has nothing to hide. A batch within one
    loaded range is a view into it, without a copy.
    """

    __slots__ = ("_fetcher", "_last", "_last_end", "_last_start", "_ranges", "seg")

    def __init__(self, fetcher: SegmentFetcher, seg: RemoteSegment) -> None:
        self._fetcher = fetcher
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
        self._loaded(start, await self._fetcher.read_direct([(self.seg, start, stop)]))

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
        return checked_header(seg, header, position, expected_offset)

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


SegmentView = CachedChunkView | DirectView
