"""The knobs of cold reads: the read cache's bound, the chunk a ranged GET fetches, and how
far ahead of a sequential reader chunks are fetched."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
# The smallest chunk a read fetches, whatever the cache size.
MIN_CHUNK_BYTES = 4096


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
