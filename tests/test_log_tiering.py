"""The partition log's side of tiered storage: a log start kept apart from the local start,
local deletion that keeps the log start, a persisted log start, segment details, the roll
listener, and the producer tags saved from deleted segments."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from partitions.errors import DiskFullError, OffsetNotLocalError, OffsetOutOfRangeError
from partitions.log.layout import list_segment_bases
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from partitions.tag_sidecar import KEEP_MS, TAGS_SUFFIX, wall_ms
from tests.logtools import FullMetaOnce, read_all, record
from tests.tag_sidecar_crash_child import CONFIG as CRASH_CONFIG

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

SMALL = LogConfig(segment_bytes=4 * 1024, index_interval_bytes=512)


async def _filled(path: Path, count: int = 80, **kwargs: object) -> PartitionLog:
    log = await PartitionLog.open(path, SMALL, **kwargs)  # type: ignore[arg-type]
    for i in range(count):
        await log.append_records([record(f"{i:04d}" + "x" * 300, ts=1_000 + i)])
    return log


async def test_local_deletion_keeps_the_log_start_and_reads_below_answer_not_local(
    tmp_path: Path,
) -> None:
    log = await _filled(tmp_path)
    segments = log.segments()
    assert len(segments) >= 4
    cut = segments[2].base_offset
    removed = await log.delete_local_below(cut)
    assert [s.base_offset for s in removed] == [s.base_offset for s in segments[:2]]
    stats = log.stats()
    assert (stats.start_offset, stats.local_start_offset) == (0, cut)
    for read in (log.read(0), log.read_batches(cut - 1)):
        with pytest.raises(OffsetNotLocalError) as raised:
            await read
        assert raised.value.status == 501 and not raised.value.retriable
        assert raised.value.details["local_start_offset"] == cut
        assert raised.value.details["start_offset"] == 0
    assert (await log.read(cut)).records[0].offset == cut
    # What is local reads as before, and the start survives a restart.
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert (reopened.start_offset, reopened.local_start_offset) == (0, cut)
    assert [r.offset for r in await read_all(reopened, cut)] == list(range(cut, 80))
    await reopened.close()


async def test_advancing_the_start_deletes_below_it_and_persists_first(tmp_path: Path) -> None:
    log = await _filled(tmp_path)
    segments = log.segments()
    inside = segments[1].base_offset + 1  # inside the second segment
    removed = await log.advance_start(inside)
    assert [s.base_offset for s in removed] == [0]
    assert (log.start_offset, log.local_start_offset) == (inside, segments[1].base_offset)
    with pytest.raises(OffsetOutOfRangeError) as raised:
        await log.read(inside - 1)  # still on disk, but below the start: gone for readers
    assert raised.value.details["start_offset"] == inside
    assert (await log.read(inside)).records[0].offset == inside
    assert await log.advance_start(1) == [] and log.start_offset == inside  # never back
    meta = json.loads((tmp_path / "partition.json").read_bytes())
    assert meta["log_start_offset"] == inside
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.start_offset == inside
    await reopened.close()


async def test_a_start_persisted_before_a_crash_finishes_its_deletion_at_open(
    tmp_path: Path,
) -> None:
    log = await _filled(tmp_path)
    segments = log.segments()
    await log.close()
    # As if the process died after writing the new start and before deleting any segment.
    meta_path = tmp_path / "partition.json"
    meta = json.loads(meta_path.read_bytes())
    meta["log_start_offset"] = segments[2].base_offset
    meta_path.write_text(json.dumps(meta))
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert list_segment_bases(tmp_path)[0] == segments[2].base_offset
    assert reopened.start_offset == reopened.local_start_offset == segments[2].base_offset
    await reopened.close()


async def test_a_start_whose_persist_failed_deletes_nothing_and_is_persisted_when_asked_again(
    tmp_path: Path,
) -> None:
    ops = FullMetaOnce()
    log = await _filled(tmp_path, ops=ops)
    segments = log.segments()
    cut = segments[3].base_offset
    meta_path = tmp_path / "partition.json"
    ops.armed = True
    with pytest.raises(DiskFullError):
        await log.advance_start(cut)
    # Reads below it are refused at once, but no segment goes below a start not on disk.
    assert log.start_offset == cut and log.local_start_offset == 0
    assert json.loads(meta_path.read_bytes())["log_start_offset"] == 0
    # Asked again (retention's next pass), the start is persisted, then the segments go.
    removed = await log.advance_start(cut)
    assert [s.base_offset for s in removed] == [s.base_offset for s in segments[:3]]
    assert json.loads(meta_path.read_bytes())["log_start_offset"] == cut
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.start_offset == reopened.local_start_offset == cut
    await reopened.close()


async def test_a_partition_file_without_a_log_start_starts_at_its_first_segment(
    tmp_path: Path,
) -> None:
    log = await _filled(tmp_path)
    first_kept = log.segments()[1].base_offset
    await log.delete_segments_below(first_kept)  # the log start follows (no tiering)
    assert log.start_offset == first_kept
    await log.close()
    meta_path = tmp_path / "partition.json"
    meta = json.loads(meta_path.read_bytes())
    del meta["log_start_offset"]  # as written before tiered storage
    meta_path.write_text(json.dumps(meta))
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.start_offset == reopened.local_start_offset == first_kept
    assert json.loads(meta_path.read_bytes())["log_start_offset"] == first_kept
    await reopened.close()


async def test_segment_details_and_the_roll_listener(tmp_path: Path) -> None:
    rolls: list[int] = []
    log = await PartitionLog.open(tmp_path, SMALL, on_roll=lambda: rolls.append(1))
    for i in range(40):
        await log.append_records([record("y" * 300, ts=5_000 + 10 * i)])
    assert len(rolls) == len(log.segments()) - 1 >= 2
    details = await log.segment_details()
    assert [d.base_offset for d in details] == [s.base_offset for s in log.segments()]
    first = details[0]
    assert first.first_timestamp_ms == 5_000 and not first.active
    assert first.max_timestamp_ms == 5_000 + 10 * (first.next_offset - 1)
    assert details[-1].active and details[-1].max_timestamp_ms is None
    files = log.segment_files(first.base_offset)
    assert files.log.stat().st_size == first.size_bytes
    assert files.index.exists() and files.time_index.exists()
    await log.seal()
    assert len(rolls) == len(log.segments())  # the seal made the last one final too
    await log.close()
    # Details of segments loaded at open are computed from the files.
    reopened = await PartitionLog.open(tmp_path, SMALL)
    again = await reopened.segment_details()
    assert [(d.first_timestamp_ms, d.max_timestamp_ms) for d in again[:-1]] == [
        (d.first_timestamp_ms, d.max_timestamp_ms) for d in details[:-1]
    ]
    await reopened.close()


async def test_a_timestamp_whose_answer_may_be_tiered_is_not_answered_from_local_data(
    tmp_path: Path,
) -> None:
    log = await _filled(tmp_path)
    cut = log.segments()[2].base_offset
    await log.delete_local_below(cut)
    with pytest.raises(OffsetNotLocalError):
        await log.offset_for_timestamp(0)  # the first local record qualifies: maybe older too
    assert await log.offset_for_timestamp(1_000 + cut + 3) == cut + 3
    assert await log.offset_for_timestamp(10**9) is None
    await log.close()


# --- producer tags of deleted segments -------------------------------------------------------


async def _tagged(
    path: Path, config: LogConfig = SMALL, **kwargs: Any
) -> tuple[PartitionLog, list[int]]:
    """A log whose every third batch carries a producer tag; answers the tagged offsets."""
    log = await PartitionLog.open(path, config, **kwargs)
    tagged = []
    for i in range(100):
        tag = f"tag-{i}".encode() if i % 3 == 0 else b""
        result = await log.append_records([record(f"{i:04d}" + "x" * 300)], producer_tag=tag)
        if tag:
            tagged.append(result.base_offset)
    return log, tagged


def _expected(tagged: list[int]) -> list[tuple[int, bytes]]:
    return [(offset, f"tag-{offset}".encode()) for offset in tagged]


def _tag_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == TAGS_SUFFIX)


async def test_deleted_segments_leave_their_tags_until_the_answer_window_ends(
    tmp_path: Path,
) -> None:
    log, tagged = await _tagged(tmp_path)
    since = wall_ms() - KEEP_MS
    segments = log.segments()
    assert len(segments) >= 8
    gone = await log.delete_local_below(segments[3].base_offset)
    assert len(gone) == 3
    assert log.local_start_offset == segments[3].base_offset
    # One file per deleted segment with tags, never taken for a segment.
    assert [p.name for p in _tag_files(tmp_path)] == [
        f"{s.base_offset:020d}{TAGS_SUFFIX}" for s in segments[:3]
    ]
    assert list_segment_bases(tmp_path)[0] == segments[3].base_offset
    assert await log.producer_tags(since) == _expected(tagged)
    # Total retention (an advanced log start) saves them too, and they survive a restart.
    await log.advance_start(segments[5].base_offset)
    assert len(_tag_files(tmp_path)) == 5
    await log.close()
    log = await PartitionLog.open(tmp_path, SMALL)
    assert await log.producer_tags(since) == _expected(tagged)
    # Files older than the window are no longer answered, and the next deletion removes them.
    old = (wall_ms() - KEEP_MS - 1_000) * 1_000_000
    for path in _tag_files(tmp_path)[:2]:
        os.utime(path, ns=(old, old))
    first_live = segments[2].base_offset
    assert await log.producer_tags(wall_ms() - KEEP_MS) == _expected(
        [o for o in tagged if o >= first_live]
    )
    await log.delete_local_below(segments[6].base_offset)
    assert len(_tag_files(tmp_path)) == 4  # two expired, one new
    # And an open removes expired ones as well.
    for path in _tag_files(tmp_path):
        os.utime(path, ns=(old, old))
    await log.close()
    log = await PartitionLog.open(tmp_path, SMALL)
    assert _tag_files(tmp_path) == []
    await log.close()


async def test_segments_without_tags_or_older_than_the_window_leave_no_file(
    tmp_path: Path,
) -> None:
    log = await _filled(tmp_path)  # no tags
    await log.delete_local_below(log.segments()[2].base_offset)
    assert _tag_files(tmp_path) == []
    await log.close()
    log, _ = await _tagged(tmp_path / "old")
    old = (wall_ms() - KEEP_MS - 1_000) * 1_000_000
    for segment in log.segments()[:2]:
        os.utime(tmp_path / "old" / f"{segment.base_offset:020d}.log", ns=(old, old))
    await log.delete_local_below(log.segments()[2].base_offset)
    assert _tag_files(tmp_path / "old") == []
    await log.close()


async def test_a_crash_between_saving_tags_and_deleting_answers_each_tag_once(
    tmp_path: Path,
) -> None:
    """A real process is SIGKILLed right after a doomed segment's tags are saved and before
    the segment is deleted: both are on disk, and each tag is answered once."""
    log, tagged = await _tagged(tmp_path, CRASH_CONFIG)
    since = wall_ms() - KEEP_MS
    segments = log.segments()
    await log.close()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tag_sidecar_crash_child",
        str(tmp_path),
        str(segments[2].base_offset),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == -9, stderr
    assert len(_tag_files(tmp_path)) == 1
    assert list_segment_bases(tmp_path)[0] == 0  # nothing was deleted
    log = await PartitionLog.open(tmp_path, CRASH_CONFIG)
    try:
        assert await log.producer_tags(since) == _expected(tagged)
        # The deletion, done again, keeps the saved file and still answers each tag once.
        assert len(await log.delete_local_below(segments[2].base_offset)) == 2
        assert len(_tag_files(tmp_path)) == 2
        assert await log.producer_tags(since) == _expected(tagged)
    finally:
        await log.close()


class GatedReads(ThreadPoolExecutor):
    """Reader threads; once armed, the next job waits for ``go`` before it starts."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.armed = False
        self.waiting = threading.Event()
        self.go = threading.Event()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if not self.armed:
            return super().submit(fn, *args, **kwargs)
        self.armed = False

        def gated() -> T:
            self.waiting.set()
            self.go.wait(10)
            return fn(*args, **kwargs)

        return super().submit(gated)


async def test_producer_tags_read_while_retention_deletes_the_segments(tmp_path: Path) -> None:
    """The segments a producer-tag read pinned are deleted before it reads them: it still
    answers every tag once, from the open files."""
    reads = GatedReads()
    try:
        log, tagged = await _tagged(tmp_path, executor=reads)
        since = wall_ms() - KEEP_MS
        reads.armed = True
        reading = asyncio.ensure_future(log.producer_tags(since))
        await asyncio.to_thread(reads.waiting.wait, 10)
        assert len(await log.delete_local_below(log.segments()[4].base_offset)) == 4
        reads.go.set()
        assert await reading == _expected(tagged)
        await log.close()
    finally:
        reads.shutdown()
