"""What tiered storage asks of partition ownership: the lease this process writes under.

With several nodes sharing a DynamoDB catalog, each partition has one owner at a time, known
by its lease's session and epoch. The uploader asks :class:`PartitionLeases` for the lease
it holds on a partition before each copy: its epoch goes into the segment's object keys
(:mod:`tiered_storage.layout`) and the catalog row, and the lease fences the row's writes,
so a replaced owner that still runs can neither overwrite its successor's objects nor
change its rows. One machine has no leases: :data:`ONE_OWNER` answers none, so keys carry
no epoch (epoch 0) and writes are not fenced.
"""

from __future__ import annotations

from typing import Protocol

from partitions.catalog import LeaseFence
from partitions.partition_key import PartitionKey


class PartitionLeases(Protocol):
    def fence(self, key: PartitionKey) -> LeaseFence | None:
        """The lease this process holds on ``key`` as it last knew it (None: no leases)."""
        ...


class OneOwner:
    """One machine, one owner of every partition: no lease, epoch 0, nothing fenced."""

    def fence(self, key: PartitionKey) -> LeaseFence | None:
        return None


ONE_OWNER = OneOwner()


def epoch_of(fence: LeaseFence | None) -> int:
    """The epoch object keys carry under ``fence`` (0 without a lease)."""
    return 0 if fence is None else fence.epoch
