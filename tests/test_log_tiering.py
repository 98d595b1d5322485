"""The partition log's side of tiered storage: a log start kept apart from the local start,
local deletion that keeps the log start, a persisted log start, segment details and the
roll listener."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from partitions.errors import OffsetNotLocalError, OffsetOutOfRangeError
from partitions.log import LogConfig, PartitionLog
from partitions.segment import list_segment_bases
from tests.logtools import read_all, record

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
