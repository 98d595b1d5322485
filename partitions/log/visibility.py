"""A gated log's two ends: what is fsync'd here, and what readers may see.

**A gated log** (cluster mode, where a local fsync is not enough) has two ends. Appends
resolve at the fsync as in any log, and ``fsynced_end`` moves, but readers see only the
*visible* end: the high watermark and the segments' readable sizes move when the partition
worker calls :meth:`VisibleEnd.advance` (through ``PartitionLog.advance_visible_end``) once
an append is in the write-ahead log beyond this machine. :class:`VisibleEnd` keeps, per
fsync'd append not yet visible, where it ends (segment, byte position, next offset), so that
the visible end moves in offset order and only ever at an append's boundary.

The writer owns one and hands it what concerns a gated log: each fsync'd group (event loop
side), the seal's check that all it makes final is visible, the segments a reopen loads
(both on the drain's thread, under ``visible_lock``), and the end that open or reopen
loaded (event loop side). A log that is not gated has one too, but
never uses it: its appends become visible at the fsync, and its hot path never comes here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from partitions.batch import BatchHeader
from partitions.errors import PartitionUnavailableError
from partitions.log.segment import Segment
from partitions.log.state import LogState
from partitions.log.values import AppendResult


@dataclass(frozen=True, slots=True)
class FsyncedAppend:
    """Where an append that a gated log fsync'd, but does not show yet, ends."""

    segment_base: int
    end_position: int
    next_offset: int


class FsyncedItem(Protocol):
    """What the visible end needs of one fsync'd append (the writer's queued append)."""

    @property
    def header(self) -> BatchHeader: ...

    @property
    def size(self) -> int: ...

    @property
    def future(self) -> asyncio.Future[AppendResult]: ...


class VisibleEnd:
    """A gated log's fsync'd end and the fsync'd appends readers do not see yet.

    ``arm_roll_timer`` is called once the active segment first shows data (its
    ``segment_ms`` counts from then); ``segment_rolled`` once a rolled segment is visible to
    its end (tiered storage uploads it only then). Both run on the event loop.
    """

    def __init__(
        self,
        state: LogState,
        arm_roll_timer: Callable[[], None],
        segment_rolled: Callable[[], None],
    ) -> None:
        self._state = state
        self._arm_roll_timer = arm_roll_timer
        self._segment_rolled = segment_rolled
        # The fsync'd appends not visible yet, in offset order (event loop side).
        self._not_visible: deque[FsyncedAppend] = deque()
        # The end as fsync'd and published to the loop (the next append's offset).
        self.fsynced_end = 0

    def publish_fsynced(
        self,
        segment: Segment,
        durable_size: int,
        next_offset: int,
        group: Sequence[FsyncedItem],
    ) -> None:
        """Answer a fsync'd group's appends and queue their ends; show nothing yet (loop)."""
        position = durable_size - sum(item.size for item in group)
        offset = next_offset - sum(item.header.record_count for item in group)
        not_visible = self._not_visible
        for item in group:
            count = item.header.record_count
            position += item.size
            not_visible.append(FsyncedAppend(segment.base_offset, position, offset + count))
            if not item.future.done():
                item.future.set_result(AppendResult(offset, count))
            offset += count
        self.fsynced_end = next_offset

    def advance(self, offset: int) -> None:
        """Show readers every fsync'd append that ends at or below ``offset`` (event loop
        side): the high watermark moves, waiting readers wake. Never moves back, and never
        past what is fsync'd."""
        state = self._state
        not_visible = self._not_visible
        if not not_visible or not_visible[0].next_offset > offset:
            return
        newly_final: list[Segment] = []
        first_data = False
        with state.visible_lock:
            segments = state.segments
            while not_visible and not_visible[0].next_offset <= offset:
                done = not_visible.popleft()
                segment = _segment_at(segments, done.segment_base)
                if segment is not None:
                    first_data = first_data or segment.durable_size == 0
                    segment.durable_size = max(segment.durable_size, done.end_position)
                    if segment.read_only and segment.durable_size >= segment.size:
                        newly_final.append(segment)
                state.high_watermark = max(state.high_watermark, done.next_offset)
        state.notify_data()
        if first_data:
            self._arm_roll_timer()
        if newly_final:
            self._segment_rolled()

    def check_sealable(self, end: int) -> None:
        """Refuse to seal at ``end`` while part of it is not visible (drain's thread)."""
        state = self._state
        with state.visible_lock:
            visible = state.high_watermark
        if end > visible:
            # Sealing would make offsets final that readers may never see (or that come
            # back from the WAL after the split recorded a shorter end).
            raise PartitionUnavailableError(
                f"offsets {visible} to {end} are fsync'd but not durable yet; "
                "seal again once they are"
            )

    def install_reloaded(self, segments: list[Segment]) -> None:
        """Make the segments a reopen loaded the log's, showing readers what was visible
        before and no more (drain's thread)."""
        state = self._state
        with state.visible_lock:
            visible = state.high_watermark
            for segment in segments:
                if segment.next_offset <= visible:
                    segment.durable_size = segment.size
                elif segment.base_offset < visible:
                    segment.durable_size = segment.locate(visible, segment.size)
            state.segments = segments

    def after_load(self, end_offset: int) -> None:
        """Open or reopen loaded the log up to ``end_offset`` (event loop side)."""
        self.fsynced_end = end_offset
        # What a failed fsync cut off was never answered, nor is it in the WAL.
        not_visible = self._not_visible
        while not_visible and not_visible[-1].next_offset > end_offset:
            not_visible.pop()


def _segment_at(segments: list[Segment], base_offset: int) -> Segment | None:
    for segment in reversed(segments):
        if segment.base_offset == base_offset:
            return segment
    return None
