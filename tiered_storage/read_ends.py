"""Where recent cold reads of each partition stopped, to know sequential readers.

A read that starts where an earlier read of its partition stopped continues a sequential
reader (a consumer reading on with ``next_offset``, a group member fetching again): it
enters its segment at the remembered position without an index look-up, and it starts
read-ahead. A few positions are kept per partition, since several consumers may read one,
for the partitions read most recently.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from partitions.partition_key import PartitionKey

# Partitions whose recent read positions are remembered, and positions remembered per
# partition.
_PARTITIONS = 4096
_ENDS_PER_PARTITION = 8


@dataclass(frozen=True, slots=True)
class ReadEnd:
    """Where a read of a partition stopped: the next offset, and the byte position in the
    segment of the batch holding it (with that batch's base offset), so that the read that
    continues from there needs no index lookup."""

    next_offset: int
    segment_base: int
    position: int
    batch_base: int


class RecentReadEnds:
    """The ends of the last reads of the partitions read most recently."""

    def __init__(self) -> None:
        self._ends: OrderedDict[PartitionKey, deque[ReadEnd]] = OrderedDict()

    def of(self, key: PartitionKey) -> tuple[ReadEnd, ...]:
        """The ends kept for a partition, oldest first (read-only: for looking at them)."""
        ends = self._ends.get(key)
        return () if ends is None else tuple(ends)

    def take(self, key: PartitionKey, offset: int) -> ReadEnd | None:
        """Where an earlier read of this partition stopped, if a read at ``offset``
        continues from there (that end is forgotten: the read moves it)."""
        ends = self._ends.get(key)
        if ends is None:
            return None
        for end in ends:
            if end.next_offset == offset:
                ends.remove(end)
                return end
        return None

    def remember(
        self,
        key: PartitionKey,
        next_offset: int,
        segment_base: int | None,
        position: int,
        batch_base: int,
    ) -> None:
        """A read of the partition stopped at ``next_offset``, in the batch at ``position``
        of the segment at ``segment_base`` (None: it read no remote segment, and only the
        partition counts as read recently)."""
        ends = self._ends.get(key)
        if ends is None:
            ends = self._ends[key] = deque(maxlen=_ENDS_PER_PARTITION)
            if len(self._ends) > _PARTITIONS:
                self._ends.popitem(last=False)
        else:
            self._ends.move_to_end(key)
        if segment_base is not None and all(e.next_offset != next_offset for e in ends):
            ends.append(ReadEnd(next_offset, segment_base, position, batch_base))

    def forget_topic(self, tenant: str, incarnation: str) -> None:
        for key in [k for k in self._ends if (k.tenant, k.incarnation) == (tenant, incarnation)]:
            del self._ends[key]
