"""Rules every catalog store checks the same way, whatever it stores in: a placement's
shape, a tenant's limits on topics and active partitions (the stores count, these decide),
and what makes a split, a merge or a new log start valid."""

from __future__ import annotations

from collections.abc import Sequence

from partitions.catalog import LeaseFence, PartitionRecord, TenantCounts
from partitions.errors import (
    InvalidInputError,
    InvalidMergeError,
    InvalidOffsetError,
    InvalidSplitPointError,
    PartitionLimitError,
    PartitionNotActiveError,
    PartitionsNotAdjacentError,
    TopicLimitError,
)


def check_placement(placement: Sequence[int] | None, count: int) -> None:
    if placement is not None and (
        len(placement) != count or any(isinstance(w, bool) or w < 0 for w in placement)
    ):
        raise InvalidInputError(f"a placement names one worker (>= 0) for each of {count}")


def check_topic_limit(counts: TenantCounts, tenant: str, max_topics: int | None) -> None:
    """Refuse one more topic if the tenant has ``max_topics`` already."""
    if max_topics is not None and counts.topics >= max_topics:
        raise TopicLimitError(
            f"tenant {tenant!r} has {counts.topics} topics and may have at most {max_topics}",
            max_topics=max_topics,
            topics=counts.topics,
        )


def check_partition_limit(
    counts: TenantCounts, tenant: str, adding: int, max_partitions: int | None
) -> None:
    """Refuse a change that adds ``adding`` active partitions beyond ``max_partitions``."""
    if max_partitions is not None and counts.active_partitions + adding > max_partitions:
        raise PartitionLimitError(
            f"tenant {tenant!r} has {counts.active_partitions} active partitions and may "
            f"have at most {max_partitions}",
            max_partitions=max_partitions,
            active_partitions=counts.active_partitions,
        )


def check_active(parent: PartitionRecord) -> None:
    if not parent.active:
        raise PartitionNotActiveError(
            f"partition {parent.partition_id} is sealed", partition=parent.partition_id
        )


def check_split(parent: PartitionRecord, at: int) -> None:
    """A split of ``parent`` at ``at``: an active partition, a point strictly inside."""
    check_active(parent)
    if not parent.hash_range.start < at < parent.hash_range.end:
        raise InvalidSplitPointError(
            f"split point {at} is not strictly inside partition {parent.partition_id}'s "
            f"range [{parent.hash_range.start}, {parent.hash_range.end})",
            partition=parent.partition_id,
        )


def check_merge_request(
    partition_ids: Sequence[int],
    end_offsets: Sequence[int],
    fences: Sequence[LeaseFence] | None = None,
) -> None:
    if len(partition_ids) != 2 or partition_ids[0] == partition_ids[1]:
        raise InvalidMergeError("a merge takes exactly two different partitions")
    if len(end_offsets) != 2:
        raise InvalidMergeError("a merge needs one end offset per partition")
    if fences is not None and len(fences) != 2:
        raise InvalidMergeError("a merge takes one lease fence per partition, or none")


def merge_order(parents: Sequence[PartitionRecord]) -> tuple[PartitionRecord, PartitionRecord]:
    """The two parents of a merge, low range first: both active, and adjacent."""
    for parent in parents:
        check_active(parent)
    low, high = sorted(parents, key=lambda p: p.hash_range.start)
    if low.hash_range.end != high.hash_range.start:
        raise PartitionsNotAdjacentError(
            f"partitions {low.partition_id} and {high.partition_id} are not adjacent",
            partitions=[low.partition_id, high.partition_id],
        )
    return low, high


def check_end(parent: PartitionRecord, end_offset: int) -> None:
    """A partition sealed at ``end_offset``: not below its start."""
    if end_offset < parent.start_offset:
        raise InvalidOffsetError(
            f"partition {parent.partition_id} cannot end at {end_offset}, below its "
            f"start {parent.start_offset}",
            partition=parent.partition_id,
        )


def check_new_start(current: PartitionRecord, start_offset: int) -> None:
    """A log start reported for ``current``: not negative, not past a sealed end."""
    if start_offset < 0:
        raise InvalidOffsetError(f"a start offset cannot be negative: {start_offset}")
    if current.end_offset is not None and start_offset > current.end_offset:
        raise InvalidOffsetError(
            f"partition {current.partition_id} ends at {current.end_offset}; its start "
            "cannot pass that",
            partition=current.partition_id,
        )
