"""Deleting whole segments from the head of a partition log, and what must be saved first.

Every deletion runs on the drain's thread, queued like an append, so it happens in order
with the appends around it. The active segment never goes.

The *log start* (the first offset a reader may ask for) and the *local start* (the first
offset whose segment is on this disk) are kept apart: with tiered storage, local retention
drops segments that are safely in object storage without moving the log start, and reads
between the two raise :class:`~partitions.errors.OffsetNotLocalError` rather than a 416 (the
partition worker reads those offsets from object storage instead). The log start is
persisted in ``partition.json`` before any segment below it is deleted.

Before any segment is deleted (by whichever retention), the producer tags of a recently
written one are saved in a small ``.tags`` file (``partitions.tag_sidecar``), so that the
answers of idempotent requests can be rebuilt after a restart for their whole ten minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from partitions import tag_sidecar
from partitions.fileio import FileOps
from partitions.log.meta import write_meta
from partitions.log.reads import segment_tags
from partitions.log.segment import Segment
from partitions.log.state import LogState
from partitions.log.values import SegmentInfo


def save_tags(ops: FileOps, directory: Path, doomed: Sequence[Segment]) -> None:
    """Save the producer tags of the doomed segments written to within the answer window
    (thread). A failure fails the deletion: nothing is deleted before its tags are safe."""
    recent = tag_sidecar.wall_ms() - tag_sidecar.KEEP_MS
    for segment in doomed:
        if tag_sidecar.segment_modified_ms(segment.log_fd) < recent:
            continue
        tags = segment_tags(segment, segment.size)
        if tags:
            tag_sidecar.save(ops, directory, segment.base_offset, tags)


class LogRetention:
    """The log's deletions; every method runs on the drain's thread."""

    def __init__(self, state: LogState) -> None:
        self._state = state

    def retain(
        self,
        retention_ms: int | None,
        retention_bytes: int | None,
        max_offset: int | None,
        *,
        delete_all_below: bool = False,
        move_start: bool = True,
    ) -> list[SegmentInfo]:
        state = self._state
        segments = state.segments
        candidates = segments if state.w_sealed else segments[:-1]
        now = state.clock_ms()
        total = sum(s.size for s in segments)
        count = 0
        for segment in candidates:
            if max_offset is not None and segment.next_offset > max_offset:
                break
            expired = delete_all_below
            if not expired and retention_ms is not None:
                newest = segment.ensure_max_timestamp()
                expired = newest is None or newest < now - retention_ms
            if not expired and retention_bytes is not None:
                expired = total - segment.size >= retention_bytes
            if not expired:
                break
            total -= segment.size
            count += 1
        if not count:
            return []
        doomed = segments[:count]
        if move_start:
            new_start = segments[count].base_offset if count < len(segments) else state.w_end
            self.persist_log_start(new_start)
            # Raised before the segments leave the list: a reader never sees a gap between
            # the log start and the local start that is not in object storage.
            state.raise_log_start(new_start)
        # Saved while the segments are still listed: a reader of producer tags finds each
        # batch's tag in the segment, in the saved file, or in both.
        save_tags(state.ops, state.directory, doomed)
        state.segments = segments[count:]
        for segment in doomed:
            segment.delete()
        state.ops.fsync_dir(state.directory)
        tag_sidecar.remove_expired(state.directory, tag_sidecar.wall_ms())
        state.post(state.notify_data)
        return [SegmentInfo(s.base_offset, s.next_offset, s.size, False) for s in doomed]

    def persist_log_start(self, offset: int) -> None:
        """Write a higher log start to ``partition.json``. ``w_log_start`` is what is on
        disk: after a failed write it stays where it was, so asking again writes again."""
        state = self._state
        if offset > state.w_log_start:
            write_meta(
                state.ops,
                state.directory,
                sealed=state.w_sealed,
                end_offset=state.w_end if state.w_sealed else None,
                log_start=offset,
            )
            state.w_log_start = offset

    def advance_start(self, offset: int) -> list[SegmentInfo]:
        self.persist_log_start(offset)
        return self.retain(None, None, offset, delete_all_below=True, move_start=False)
