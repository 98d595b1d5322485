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

How the app factory will wire it (not done yet): the partitions entry builds one
``Durability`` per process, ``LocalDurability()`` without ``--cluster``, else a started
``WalWriter`` over the cluster's object store with the node id, the session id and the lease
module's fence check; it hands it to the partition worker, which after each successful
``log.append`` calls ``make_durable`` with a :class:`WalEntry` of the stored batch (in the
order the log assigned offsets, per partition) and answers the produce only when that
returns. ``close()`` runs after the worker stops taking appends, so that a last flush
carries what is pending. An error from ``make_durable`` is an
:class:`~partitions.errors.EventBusError` whose ``retriable`` tells the client what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from partitions.batch import read_header
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

    async def make_durable(self, entry: WalEntry) -> None:
        """Return once ``entry`` would survive the loss of this machine; raise an
        :class:`~partitions.errors.EventBusError` (retriable or not) when it may not."""
        ...

    async def close(self) -> None:
        """Make what is pending durable if possible, fail the rest, and take no more."""
        ...


class LocalDurability:
    """Single-machine mode: the local fsync already made the entry as durable as it gets."""

    async def make_durable(self, entry: WalEntry) -> None:
        return None

    async def close(self) -> None:
        return None
