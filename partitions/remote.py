"""The seam between a partition and the data it keeps in object storage.

A partition log holds its hot tail on local disk; older segments, once uploaded, may live
only in object storage (local retention removed the local copy). Reading them back belongs
to ``tiered_storage``, a higher package, so this module only says what the partition
worker needs from it: a :class:`RemoteLogReader`. The app factory wires an implementation
into :class:`~partitions.worker.LocalPartitionWorker`; without one, a read below a
partition's local start answers :class:`~partitions.errors.OffsetNotLocalError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from partitions.log import BatchRead, ReadResult
    from partitions.worker import PartitionKey


class RemoteLogReader(Protocol):
    """Reads of the offsets ``[log start, local start)`` of a partition, which only object
    storage holds. Each call answers what a local read of the same offsets would answer
    (the ``high_watermark``, ``start_offset`` and ``sealed`` fields are the caller's to fill
    from the live log); errors are :class:`~partitions.errors.EventBusError` subclasses."""

    async def read(
        self, key: PartitionKey, offset: int, *, max_records: int, max_bytes: int
    ) -> ReadResult: ...

    async def read_batches(
        self, key: PartitionKey, offset: int, *, max_bytes: int
    ) -> BatchRead: ...

    async def offset_for_timestamp(self, key: PartitionKey, timestamp_ms: int) -> int | None:
        """The first offset at or after ``timestamp_ms`` among the remote segments, or None."""
        ...
