"""Recovering a partition from its dead owners' write-ahead logs: the step a takeover runs
before the new owner serves the partition (CLOUD.md, "Leases, fencing and takeover", rule 6).

:func:`recover_partition` rebuilds the partition's local log on this node:

1. The **uploaded end** (:func:`tiered_storage.remote_segments.uploaded_end`): where the
   partition's copy-finished remote segments stop following each other from the log start.
   Every offset below it is read from object storage.
2. The **replay**: the entries of the partition in the WAL of each source (a session that
   owned the partition and died, oldest first, as the lease lists them), at or past the
   uploaded end, in source order and seq order within a source (``PartitionReplay``:
   CRC-checked, contiguous). Each source is replayed until its first gap or damaged
   object, and the next continues from the offset reached, since its owner recovered the
   same way and appended from there; a source that does not start exactly there stops the
   replay with a gap. Two more rules keep a later owner's offsets from being shadowed:
   a source is read only up to where the next source with entries of the partition
   begins (a fenced zombie may have written objects after its taker listed the WAL; what
   they hold was never acknowledged), and the last source's stop is the replay's stop.
   The offset reached is the **recovered end**: every acknowledged offset lies below it.
3. The **rebuild** (``partitions.log.restore``): a fresh log whose first local offset is
   the uploaded end, holding the replayed batches byte for byte at their offsets, put in
   place of the partition's directory. A directory this node kept from an earlier
   ownership is *replaced*, never cut back and reused: its bytes below the recovered end
   may be batches that this node wrote and never got acknowledged, whose offsets a later
   owner gave to other batches, and only the WAL and the remote segments say what the
   acknowledged ones are (the replay reads all of them anyway).

Nothing past the recovered end exists afterwards; batches that were written but never
acknowledged may come back below it (an idempotency key resolves them). The answer,
:class:`Recovery`, says what happened. A store or catalog that cannot be read raises its
error and leaves the partition's directory as it was: nothing is decided then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from partitions.catalog import Catalog
from partitions.catalog_dynamodb.leases import Source
from partitions.durability import WalEntry
from partitions.errors import InvalidBatchError
from partitions.fileio import FileOps
from partitions.log.restore import LogRestorer
from partitions.log.values import LogConfig
from partitions.partition_key import PartitionKey
from tiered_storage.objects import ObjectStore
from tiered_storage.remote_segments import uploaded_end
from tiered_storage.state import RemoteIndex
from tiered_storage.wal_format import WalCorruptError
from tiered_storage.wal_reader import (
    PartitionReplay,
    ReplayOutcome,
    ReplayStop,
    list_session,
    read_footer,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceReplay:
    """How one source's replay went."""

    source: Source
    outcome: ReplayOutcome
    entries: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a partition's recovery did."""

    partition: PartitionKey
    uploaded_end: int
    recovered_end: int
    entries: int
    bytes: int
    #: Why the replay ended: the last source's stop (END when there were no sources).
    stop: ReplayStop
    #: The object where it stopped, and what was wrong there (at END: None and "").
    stop_key: str | None
    detail: str
    sources: tuple[SourceReplay, ...]
    #: Whether a directory this node had for the partition was replaced.
    replaced_local: bool
    seconds: float


async def recover_partition(
    catalog: Catalog,
    store: ObjectStore,
    directory: Path,
    partition: PartitionKey,
    config: LogConfig,
    sources: Sequence[Source],
    *,
    log_start: int,
    ops: FileOps | None = None,
) -> Recovery:
    """Rebuild ``partition``'s log in ``directory`` from object storage (see the module).

    ``log_start`` is the partition's log start as the catalog records it (its partition
    row's ``start_offset``): retention may have deleted the remote segments below it.
    """
    started = time.monotonic()
    rows = await RemoteIndex(catalog).finished(partition)
    uploaded = uploaded_end(partition, rows, log_start)
    starts = [await _first_offset_past(store, s, partition, uploaded) for s in sources]
    restorer = LogRestorer(directory, config, first_offset=uploaded, log_start=log_start, ops=ops)
    await asyncio.to_thread(restorer.begin)
    try:
        replays = []
        reached = uploaded
        for i, source in enumerate(sources):
            later = [s for s in starts[i + 1 :] if s is not None]
            replay = await _replay_source(
                store, restorer, source, partition, reached, later[0] if later else None
            )
            replays.append(replay)
            reached = replay.outcome.next_offset
        result = await asyncio.to_thread(restorer.install)
    except BaseException:
        await asyncio.to_thread(restorer.abandon)
        raise
    last = replays[-1].outcome if replays else ReplayOutcome(ReplayStop.END, uploaded)
    recovery = Recovery(
        partition=partition,
        uploaded_end=uploaded,
        recovered_end=result.end_offset,
        entries=sum(r.entries for r in replays),
        bytes=result.bytes,
        stop=last.stop,
        stop_key=last.key,
        detail=last.detail,
        sources=tuple(replays),
        replaced_local=result.replaced,
        seconds=time.monotonic() - started,
    )
    log.info(
        "recovered partition %s: uploaded end %d, recovered end %d, %d entries (%d bytes) "
        "from %d sources, stop %s, %.3f s%s",
        partition,
        recovery.uploaded_end,
        recovery.recovered_end,
        recovery.entries,
        recovery.bytes,
        len(sources),
        recovery.stop.value,
        recovery.seconds,
        ", replacing the local directory" if result.replaced else "",
    )
    return recovery


async def _replay_source(
    store: ObjectStore,
    restorer: LogRestorer,
    source: Source,
    partition: PartitionKey,
    reached: int,
    limit: int | None,
) -> SourceReplay:
    """Replay one source's entries from ``reached`` into ``restorer``, up to ``limit``
    (where a later source begins)."""
    replay = PartitionReplay(store, source.node_id, source.session_id, partition, reached)
    entries = size = 0
    outcome: ReplayOutcome | None = None
    # Closed when left early, so that the replay's generator ends here and now.
    async with contextlib.aclosing(cast(AsyncGenerator[WalEntry], aiter(replay))) as found:
        async for entry in found:
            if limit is not None and entry.next_offset > limit:
                detail = f"a later source continues at {limit}"
                outcome = ReplayOutcome(ReplayStop.END, reached, detail=detail)
                break
            try:
                await asyncio.to_thread(restorer.write, entry.data)
            except InvalidBatchError as exc:
                outcome = ReplayOutcome(ReplayStop.CORRUPT, reached, detail=str(exc))
                break
            entries += 1
            size += len(entry.data)
            reached = restorer.next_offset
    # The replay sets its outcome whenever it runs to its end.
    outcome = outcome or replay.outcome or ReplayOutcome(ReplayStop.END, reached)
    if outcome.stop is not ReplayStop.END:
        log.warning(
            "replay of partition %s from the WAL of %s/%s stopped at offset %d: %s at %s (%s)",
            partition,
            source.node_id,
            source.session_id,
            outcome.next_offset,
            outcome.stop.value,
            outcome.key,
            outcome.detail,
        )
    return SourceReplay(source, outcome, entries, size)


async def _first_offset_past(
    store: ObjectStore, source: Source, partition: PartitionKey, offset: int
) -> int | None:
    """The base offset of the source's first entry of the partition that ends past
    ``offset`` (None when it has none, or when its first such object is damaged: its
    replay stops there anyway)."""
    for obj in await list_session(store, source.node_id, source.session_id):
        try:
            footer = await read_footer(store, source.node_id, source.session_id, obj)
        except WalCorruptError:
            return None
        for index in footer.entries:
            if index.partition == partition and index.next_offset > offset:
                return index.base_offset
    return None
