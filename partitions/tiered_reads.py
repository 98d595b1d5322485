"""Reads of a partition that run from object storage on into local disk: one seamless run of
offsets across the local start (below it, local retention left the data only in object
storage). The partition worker answers reads below the local start with these."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from partitions.batch import BatchBytes, Record, whole_batches_within
from partitions.errors import (
    EventBusError,
    OffsetNotLocalError,
    OffsetOutOfRangeError,
    PartitionClosedError,
)
from partitions.log.partition_log import PartitionLog
from partitions.log.values import BatchRead, ReadResult
from partitions.partition_key import PartitionKey
from partitions.remote import RemoteLogReader

T = TypeVar("T")


async def read_tiered(
    remote: RemoteLogReader,
    key: PartitionKey,
    log: PartitionLog,
    offset: int,
    max_records: int,
    max_bytes: int,
) -> ReadResult:
    """Records from object storage up to the local start, then on from local disk while
    the bounds allow: one seamless run of offsets. If local retention moves the local
    start during the read, the remote part simply reaches further."""
    records: list[Record] = []
    size = 0
    next_offset = offset
    while len(records) < max_records and (not records or size < max_bytes):
        local_start = log.local_start_offset
        from_remote = next_offset < local_start
        if from_remote:
            part = await remote_call(
                log,
                next_offset,
                remote.read(
                    key,
                    next_offset,
                    max_records=max_records - len(records),
                    max_bytes=max(1, max_bytes - size),
                    end_offset=local_start,
                ),
            )
            found = part.records
        else:
            try:
                local = await log.read(
                    next_offset,
                    max_records=max_records - len(records),
                    max_bytes=max(1, max_bytes - size),
                )
            except OffsetNotLocalError:
                continue  # local retention moved the local start: read on remotely
            found = local.records
        taken = records_within(found, max_bytes - size) if records else found
        if not taken:
            break
        records.extend(taken)
        size += sum(r.payload_bytes for r in taken)
        next_offset = taken[-1].offset + 1
        if not from_remote or len(taken) < len(found) or next_offset < local_start:
            # A local read answers all it may; a remote one that stopped short of the
            # local start, or was cut, used up the bounds.
            break
    return ReadResult(records, next_offset, log.high_watermark, log.start_offset, log.sealed)


async def read_batches_tiered(
    remote: RemoteLogReader,
    key: PartitionKey,
    log: PartitionLog,
    offset: int,
    max_bytes: int,
) -> BatchRead:
    """Stored batches from object storage, continued from local disk like
    :func:`read_tiered`."""
    pieces: list[BatchBytes] = []
    total = 0
    first = offset
    next_offset = offset
    while not pieces or total < max_bytes:
        local_start = log.local_start_offset
        from_remote = next_offset < local_start
        if from_remote:
            part = await remote_call(
                log,
                next_offset,
                remote.read_batches(
                    key, next_offset, max_bytes=max_bytes - total, end_offset=local_start
                ),
            )
            data, part_first, part_next = part.data, part.first_offset, part.next_offset
        else:
            try:
                local = await log.read_batches(next_offset, max_bytes=max_bytes - total)
            except OffsetNotLocalError:
                continue
            data, part_first, part_next = local.data, local.first_offset, local.next_offset
        taken = data
        if pieces:
            taken, part_next = whole_batches_within(data, max_bytes - total)
        if not taken:
            break
        if not pieces:
            first = part_first
        pieces.append(taken)
        total += len(taken)
        next_offset = part_next
        if not from_remote or len(taken) < len(data) or next_offset < local_start:
            break
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return BatchRead(data, first, next_offset, log.high_watermark, log.start_offset, log.sealed)


async def remote_call(log: PartitionLog, offset: int, call: Awaitable[T]) -> T:
    """Await a remote read; if it failed because total retention removed its data
    meanwhile, answer what a local read would: the offset is out of range now. If the log
    was closed meanwhile (its topic deleted, or the server stopping), answer what a local
    read would too, whatever the store said: partition_closed."""
    try:
        result = await call
    except EventBusError as exc:
        if log.closed:
            raise PartitionClosedError(f"partition log {log.directory} is closed") from exc
        start = log.start_offset
        if offset < start:
            raise OffsetOutOfRangeError(
                f"offset {offset} was removed by retention while it was being read",
                offset=offset,
                start_offset=start,
                high_watermark=log.high_watermark,
            ) from exc
        raise
    if log.closed:
        raise PartitionClosedError(f"partition log {log.directory} is closed")
    return result


def records_within(records: Sequence[Record], max_bytes: int) -> list[Record]:
    """The leading records whose payload fits ``max_bytes`` together (maybe none)."""
    size = 0
    for n, record in enumerate(records):
        size += record.payload_bytes
        if size > max_bytes:
            return list(records[:n])
    return list(records)
