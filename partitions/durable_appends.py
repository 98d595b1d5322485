"""The append path past the local fsync, when a durability gates it (cluster mode).

With a :class:`~partitions.durability.Durability` that waits for more than the fsync (the
write-ahead log in object storage), the partition worker opens its logs *gated* and hands
each append here after the log took it: the stored batch goes to ``make_durable`` as a
:class:`~partitions.durability.WalEntry`, and only then does the log show it to readers.

That step runs in a task of its own (:meth:`DurableAppends.run`): a producer that goes away
mid-append must not leave an fsync'd batch out of the WAL, where a gap would stop a
takeover's replay before later acknowledged entries. An entry whose ``make_durable`` failed
may still land (the writer keeps its object and writes it again once the store is back): a
watcher shows it then (:meth:`DurableAppends._watch_late`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from partitions.batch import BatchBytes
from partitions.durability import Durability, WalEntry
from partitions.errors import (
    EventBusError,
    PartitionClosedError,
    StorageBackpressureError,
    WalUnavailableError,
)
from partitions.log.partition_log import PartitionLog
from partitions.log.values import AppendResult
from partitions.partition_key import PartitionKey

logger = logging.getLogger(__name__)

#: Bytes waiting to become durable beyond this machine past which appends are refused.
DEFAULT_DURABILITY_BACKLOG_BYTES = 64 * 1024 * 1024

#: A partition's lease epoch, as the owner holds it (0 where there are no leases).
EpochOf = Callable[[PartitionKey], int]


def no_epochs(key: PartitionKey) -> int:
    """Every partition at epoch 0: no leases (one machine)."""
    return 0


class DurableAppends:
    """Makes fsync'd appends durable beyond this machine, then visible."""

    def __init__(
        self,
        durability: Durability,
        *,
        epochs: EpochOf = no_epochs,
        max_backlog_bytes: int = DEFAULT_DURABILITY_BACKLOG_BYTES,
    ) -> None:
        self.durability = durability
        self.gated = not durability.acknowledges_at_fsync
        self.max_backlog_bytes = max_backlog_bytes
        self._epochs = epochs
        self._closing = False
        # The durable steps of appends in flight, and the waits for entries whose
        # make_durable failed but that may still land.
        self._steps: set[asyncio.Task[AppendResult]] = set()
        self._late: set[asyncio.Task[None]] = set()

    def check_backlog(self) -> None:
        """Refuse a new append before it reaches the log: closing, or too much waiting."""
        if self._closing:
            raise PartitionClosedError("the partition worker is closing")
        backlog = self.durability.backlog_bytes
        if backlog > self.max_backlog_bytes:
            raise StorageBackpressureError(
                f"{backlog} bytes wait for the write-ahead log in object storage "
                f"(limit {self.max_backlog_bytes}); retry later",
                backlog_bytes=backlog,
            )

    async def run(self, step: Coroutine[Any, Any, AppendResult]) -> AppendResult:
        """Run an append's ``step`` to its end even if the caller goes away (shielded)."""
        task = asyncio.create_task(step)
        self._steps.add(task)
        task.add_done_callback(self._step_done)
        return await asyncio.shield(task)

    async def make_visible(
        self, key: PartitionKey, log: PartitionLog, batch: BatchBytes, result: AppendResult
    ) -> None:
        """Make the batch the log just fsync'd at ``result`` durable, then show it. Called
        with no await since the log answered, so entries reach the durability in the order
        the log assigned their offsets."""
        entry = WalEntry.of_append(key, self._epochs(key), batch, result.base_offset)
        try:
            await self.durability.make_durable(entry)
        except EventBusError:
            self._watch_late(log, entry)
            raise
        log.advance_visible_end(entry.next_offset)

    def _watch_late(self, log: PartitionLog, entry: WalEntry) -> None:
        """Show ``entry`` once it lands after all (a store that comes back)."""

        async def wait() -> None:
            try:
                await self.durability.wait_durable(entry)
            except EventBusError:
                return  # never durable (fenced, closed): it stays invisible
            if not log.closed:
                log.advance_visible_end(entry.next_offset)

        task = asyncio.create_task(wait(), name=f"durable-{entry.partition}")
        self._late.add(task)
        task.add_done_callback(self._late_done)

    def _step_done(self, task: asyncio.Task[AppendResult]) -> None:
        self._steps.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller, if still there, got it

    def _late_done(self, task: asyncio.Task[None]) -> None:
        self._late.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("waiting for a late durable entry failed", exc_info=task.exception())

    async def close(self) -> None:
        """Take no more appends, let the durability write what is pending (its last flush),
        and end every step: answered, or failed by the closed durability."""
        self._closing = True
        await self.durability.close()
        await asyncio.gather(*self._steps, return_exceptions=True)
        for task in list(self._late):
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)


def durable_end(key: PartitionKey, log: PartitionLog) -> int:
    """The end a freeze answers: the visible end, once nothing fsync'd lies past it."""
    end = log.stats().end_offset
    if log.fsynced_end > end:
        # Appends that failed to become durable may still land: the end a split records
        # must not move under it.
        raise WalUnavailableError(
            f"offsets {end} to {log.fsynced_end} of partition {key.partition_id} are not "
            "durable yet; try again once the write-ahead log is back",
            partition=key.partition_id,
        )
    return end
