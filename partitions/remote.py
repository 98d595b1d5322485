"""The seam between a partition and the data it keeps in object storage.

A partition log holds its hot tail on local disk; older segments, once uploaded, may live
only in object storage (local retention removed the local copy). Reading them back belongs
to ``tiered_storage``, a higher package, so this module only says what the partition
worker needs from it: a :class:`RemoteLogReader`. The app factory wires an implementation
into :class:`~partitions.worker.LocalPartitionWorker`; without one, a read below a
partition's local start answers :class:`~partitions.errors.OffsetNotLocalError`.

The worker asks the reader only for offsets below the local start (``end_offset`` in each
call), and continues into local data itself, so that one read answers one seamless run of
offsets across the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from partitions.batch import BatchBytes, Record
    from partitions.partition_key import PartitionKey


@dataclass(frozen=True, slots=True)
class RemoteRecords:
    """Decoded records read from object storage; ``next_offset`` follows the last one."""

    records: list[Record]
    next_offset: int


@dataclass(frozen=True, slots=True)
class RemoteBatches:
    """Whole stored batches read from object storage, byte for byte as they were on disk.

    ``first_offset`` is the base offset of the first batch (it may lie below the offset
    asked for: batches are never split); ``next_offset`` follows the last batch.
    """

    data: BatchBytes
    first_offset: int
    next_offset: int


class RemoteLogReader(Protocol):
    """Reads of the offsets ``[log start, local start)`` of a partition, which only object
    storage holds.

    Every call reads no further than ``end_offset`` (the local start when the worker asked)
    and answers what a local read of the same offsets would: the same records, the same
    stored bytes, the same bounds (``max_records``; ``max_bytes`` of payload for records, of
    stored bytes for batches; at least one record or batch when ``offset`` is below
    ``end_offset``). Errors are :class:`~partitions.errors.EventBusError` subclasses.
    """

    async def read(
        self,
        key: PartitionKey,
        offset: int,
        *,
        max_records: int,
        max_bytes: int,
        end_offset: int,
    ) -> RemoteRecords: ...

    async def read_batches(
        self, key: PartitionKey, offset: int, *, max_bytes: int, end_offset: int
    ) -> RemoteBatches: ...

    async def offset_for_timestamp(
        self, key: PartitionKey, timestamp_ms: int, *, start_offset: int, end_offset: int
    ) -> int | None:
        """The first offset in ``[start_offset, end_offset)`` whose record timestamp is at
        least ``timestamp_ms``, or None when no record there is that new."""
        ...
