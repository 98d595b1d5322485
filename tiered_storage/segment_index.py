"""A remote segment's two indexes, parsed: where to start reading for an offset or a
timestamp.

The objects are the segment's ``.index`` and ``.timeindex`` files, byte for byte as the log
wrote them (their layouts are at the top of :mod:`partitions.segment`). They are parsed
once per segment and kept in the read cache.
"""

from __future__ import annotations

import array
import bisect

from partitions.log.index import OFFSET_INDEX_ENTRY, TIME_INDEX_ENTRY


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
