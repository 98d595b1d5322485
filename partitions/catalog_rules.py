"""Rules every catalog store checks the same way, whatever it stores in: a placement's
shape, and a tenant's limits on topics and active partitions (the stores count, these
decide)."""

from __future__ import annotations

from collections.abc import Sequence

from partitions.catalog import TenantCounts
from partitions.errors import InvalidInputError, PartitionLimitError, TopicLimitError


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
