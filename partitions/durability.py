"""When an appended batch counts as durable: the seam between a partition's log and a
write-ahead log beyond this machine.

A partition log fsyncs every append before it answers. On one machine that is enough: the
disk outlives the process. In cluster mode it is not, because a node's disk can die with the
node; there an append is acknowledged only once its batch is fsync'd locally **and** is in a
committed object of the node's write-ahead log in object storage. :class:`Durability` is that
second condition, as a Protocol with two implementations:

- :class:`LocalDurability` (single-machine mode): nothing to wait for; the local fsync is the
  acknowledgement, as it has always been.
- :class:`tiered_storage.wal.WalWriter` (cluster mode): gathers the entries of every
  partition the node owns and writes them as one object every flush interval; an entry is
  durable once its object is written *and* a check afterwards found the node still the
  owner of its session (see that module).

How it is wired: the partition worker takes one ``Durability`` at construction
(``LocalDurability()`` unless told otherwise; the app factory passes nothing yet, so a server
runs in single-machine mode until cluster mode builds a started ``WalWriter`` over the
cluster's object store with the node id, the session id and the lease module's fence check).
With a Durability whose ``acknowledges_at_fsync`` is false, the worker opens its logs
*gated*: the log keeps two ends, the fsync'd end (where the next append goes) and the
visible end (what readers, ``wait_for_data``, seals, freezes and stats see). After each
successful ``log.append`` the worker calls ``make_durable`` with a :class:`WalEntry` of the
stored batch (in the order the log assigned offsets, per partition, in a task of its own so
that a producer that goes away cannot leave a gap), then advances the visible end, then
answers. When ``make_durable`` fails, the producer gets the error as it is (retriable
503s); the entry may still land later (a store that comes back), and the worker then
advances the visible end once ``wait_durable`` says so. Before appending, the worker refuses
with ``storage_backpressure`` while ``backlog_bytes`` is over its bound. ``close()`` runs
after the worker stops taking appends, so that a last flush carries what is pending.

An error from ``make_durable`` is an :class:`~partitions.errors.EventBusError` whose
``retriable`` tells the client what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from partitions.batch import BASE_OFFSET, BatchBytes, read_header
from partitions.partition_key import PartitionKey


@dataclass(frozen=True, slots=True)
class WalEntry:
    """One append as the log stored it: ``data`` is one or more whole batches back to back,
    offsets assigned, the first at ``base_offset``; ``epoch`` is the partition's lease
    epoch under which this owner appended it."""

    partition: PartitionKey
    epoch: int
    base_offset: int
    data: bytes

    @classmethod
    def of_append(
        cls, partition: PartitionKey, epoch: int, batch: BatchBytes, base_offset: int
    ) -> WalEntry:
        """The entry of one appended batch as the log stored it: ``batch`` as it was handed
        to the append, its base offset field written the way the log wrote it (the CRC does
        not cover it). No copy when the batch already held that offset, else one."""
        if isinstance(batch, bytes) and BASE_OFFSET.unpack_from(batch)[0] == base_offset:
            return cls(partition, epoch, base_offset, batch)
        stored = b"".join((BASE_OFFSET.pack(base_offset), memoryview(batch)[BASE_OFFSET.size :]))
        return cls(partition, epoch, base_offset, stored)

    @property
    def tenant(self) -> str:
        return self.partition.tenant

    @property
    def incarnation(self) -> str:
        return self.partition.incarnation

    @property
    def partition_id(self) -> int:
        return self.partition.partition_id

    @property
    def next_offset(self) -> int:
        """The offset after the last record of ``data``, read from its batch headers."""
        pos = 0
        end = self.base_offset
        while pos < len(self.data):
            header = read_header(self.data, pos)
            pos += header.total_size
            end = header.next_offset
        return end


class Durability(Protocol):
    """What an append waits for, after the local fsync, before it is acknowledged."""

    @property
    def acknowledges_at_fsync(self) -> bool:
        """True when the local fsync is already the acknowledgement: the worker then
        builds no entries and its logs show what is fsync'd at once."""
        ...

    @property
    def backlog_bytes(self) -> int:
        """Bytes handed to :meth:`make_durable` and not yet durable (the produce path
        refuses new appends while this is over its bound)."""
        ...

    async def make_durable(self, entry: WalEntry) -> None:
        """Return once ``entry`` would survive the loss of this machine; raise an
        :class:`~partitions.errors.EventBusError` (retriable or not) when it may not."""
        ...

    async def wait_durable(self, entry: WalEntry) -> None:
        """After :meth:`make_durable` of ``entry`` raised: return once the entry did become
        durable after all (its write was retried and landed), or raise when it never will
        (the session was fenced, or this was closed first)."""
        ...

    async def close(self) -> None:
        """Make what is pending durable if possible, fail the rest, and take no more."""
        ...


class LocalDurability:
    """Single-machine mode: the local fsync already made the entry as durable as it gets."""

    acknowledges_at_fsync = True
    backlog_bytes = 0

    async def make_durable(self, entry: WalEntry) -> None:
        return None

    async def wait_durable(self, entry: WalEntry) -> None:
        return None

    async def close(self) -> None:
        return None
