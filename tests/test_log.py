"""The partition log: appends, reads, indexes, rolls, seal, retention, recovery, failures."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from partitions.batch import NewRecord, decode_records, encode_batch, read_header, with_base_offset
from partitions.errors import (
    BatchTooLargeError,
    DiskFullError,
    InvalidBatchError,
    OffsetOutOfRangeError,
    PartitionClosedError,
    PartitionSealedError,
    RecordTooLargeError,
    StorageIOError,
)
from partitions.fileio import (
    CACHED_READS,
    CachedReadsUnsupportedError,
    FileOps,
    NotCachedError,
    cached_reads_only,
    pread_exact,
    pread_into,
)
from partitions.log.index import OFFSET_INDEX_ENTRY
from partitions.log.layout import list_segment_bases, segment_name
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from tests.logtools import read_all, record
from tests.tmpfs import small_tmpfs

SMALL = LogConfig(segment_bytes=16 * 1024, index_interval_bytes=512)


async def test_offsets_are_contiguous_and_reads_return_what_was_written(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    results = [await log.append_records([record(f"v{i}", key=f"k{i % 3}")]) for i in range(50)]
    assert [r.base_offset for r in results] == list(range(50))
    multi = await log.append_records([record("a"), record("b"), record("c")])
    assert (multi.base_offset, multi.last_offset) == (50, 52)
    records = await read_all(log)
    assert [r.offset for r in records] == list(range(53))
    assert records[7].value == b"v7" and records[7].key == b"k1"
    assert records[51].value == b"b" and records[51].key is None
    assert log.high_watermark == 53
    await log.close()


async def test_concurrent_appends_keep_call_order_and_share_fsyncs(tmp_path: Path) -> None:
    ops = CountingOps()
    log = await PartitionLog.open(tmp_path, LogConfig(), ops=ops)
    ops.syncs = 0
    results = await asyncio.gather(*(log.append_records([record(str(i))]) for i in range(400)))
    assert [r.base_offset for r in results] == list(range(400))
    records = await read_all(log)
    assert [r.value for r in records] == [str(i).encode() for i in range(400)]
    stats = log.stats()
    assert stats.appends == 400
    # Group commit: far fewer fsyncs than appends.
    assert ops.syncs == stats.group_commits < 400 // 4
    await log.close()


async def test_an_append_resolves_only_after_its_fsync(tmp_path: Path) -> None:
    ops = GatedOps()
    log = await PartitionLog.open(tmp_path, LogConfig(), ops=ops)
    await log.append_records([record("first")])
    ops.gate.clear()
    pending = asyncio.ensure_future(log.append_records([record("second")]))
    await asyncio.to_thread(ops.entered.wait, 10)
    assert not pending.done()
    # Not durable yet, so not visible: the high watermark and reads stay where they were.
    assert log.high_watermark == 1
    assert [r.value for r in await read_all(log)] == [b"first"]
    assert await log.wait_for_data(1, 0.01) is False
    ops.gate.set()
    assert (await pending).base_offset == 1
    assert log.high_watermark == 2
    await log.close()


async def test_read_limits(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for i in range(20):
        await log.append_records([record(f"{i:03d}" * 10)])
    result = await log.read(5, max_records=4)
    assert [r.offset for r in result.records] == [5, 6, 7, 8]
    assert result.next_offset == 9
    assert result.high_watermark == 20
    # max_bytes counts keys, values and headers; 30-byte values, 100 bytes -> 3 records.
    result = await log.read(0, max_records=100, max_bytes=100)
    assert [r.offset for r in result.records] == [0, 1, 2]
    # At least one record, even when it alone is larger than max_bytes.
    result = await log.read(10, max_records=100, max_bytes=1)
    assert [r.offset for r in result.records] == [10]
    # Reading at the high watermark is not an error: nothing yet.
    result = await log.read(20)
    assert result.records == [] and result.next_offset == 20
    await log.close()


async def test_a_read_inside_a_batch_starts_at_the_asked_offset(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    await log.append_records([record(str(i)) for i in range(10)])
    result = await log.read(4, max_records=3)
    assert [r.offset for r in result.records] == [4, 5, 6]
    raw = await log.read_batches(4)
    assert raw.first_offset == 0 and raw.next_offset == 10
    await log.close()


async def test_out_of_range_reads_raise_with_the_valid_range(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    await log.append_records([record("x")])
    with pytest.raises(OffsetOutOfRangeError) as past:
        await log.read(2)
    assert past.value.details == {"offset": 2, "start_offset": 0, "high_watermark": 1}
    assert past.value.status == 416
    with pytest.raises(OffsetOutOfRangeError):
        await log.read(-1)
    await log.close()


async def test_raw_batch_reads_cross_segments_in_whole_batches(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for i in range(400):
        await log.append_records([record(f"value-{i}" * 5)])
    assert len(log.segments()) >= 3
    offset, seen = 0, []
    while offset < log.high_watermark:
        chunk = await log.read_batches(offset, max_bytes=3000)
        assert chunk.first_offset <= offset < chunk.next_offset
        pos = 0
        while pos < len(chunk.data):
            header = read_header(chunk.data, pos)
            seen.extend(r.offset for r in decode_records(chunk.data, pos))
            pos += header.total_size
        offset = chunk.next_offset
    assert seen == list(range(400))
    await log.close()


async def test_a_raw_batch_read_passes_max_bytes_only_by_its_first_batch(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for i in range(300):
        await log.append_records([record(f"v{i:04d}" * (20 + i % 30))])
    assert len(log.segments()) >= 3
    sizes = []
    for max_bytes in (1, 700, 2500, 5000, 9000):
        offset = 0
        while offset < log.high_watermark:
            chunk = await log.read_batches(offset, max_bytes=max_bytes)
            first = read_header(chunk.data).total_size
            assert len(chunk.data) <= max(max_bytes, first)
            sizes.append(len(chunk.data))
            offset = chunk.next_offset
    # Reads that cross a segment boundary and fill their budget exist among them.
    assert max(sizes) > 4000
    await log.close()


async def test_every_offset_is_found_through_the_sparse_index(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=4096)
    log = await PartitionLog.open(tmp_path, config)
    for i in range(0, 600, 3):
        await log.append_records([record(f"{j:05d}" * 40) for j in range(i, i + 3)])
    for offset in range(600):
        result = await log.read(offset, max_records=1)
        assert result.records[0].offset == offset
        assert result.records[0].value == f"{offset:05d}".encode() * 40
    base = list_segment_bases(tmp_path)[0]
    index_size = (tmp_path / f"{segment_name(base)}.index").stat().st_size
    log_size = (tmp_path / f"{segment_name(base)}.log").stat().st_size
    entries = index_size // OFFSET_INDEX_ENTRY.size
    # Sparse: about one entry per 4 KiB of log.
    assert log_size // 4096 - 2 <= entries <= log_size // 4096 + 1
    await log.close()


async def test_timestamp_lookup(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    # Out-of-order producer timestamps: the first record at or after T wins.
    stamps = [100, 300, 200, 400, 400, 350, 900] + [1000 + i for i in range(150)]
    for ts in stamps:
        await log.append_records([record(f"t{ts}" * 60, ts=ts)])
    assert len(log.segments()) > 2
    assert await log.offset_for_timestamp(0) == 0
    assert await log.offset_for_timestamp(150) == 1
    assert await log.offset_for_timestamp(301) == 3
    assert await log.offset_for_timestamp(500) == 6
    assert await log.offset_for_timestamp(1100) == 7 + 100
    assert await log.offset_for_timestamp(5000) is None
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert await reopened.offset_for_timestamp(1100) == 107
    await reopened.close()


async def test_rolls_at_segment_bytes(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for i in range(100):
        await log.append_records([record("x" * 500 + str(i))])
    segments = log.segments()
    assert len(segments) >= 3
    for seg in segments[:-1]:
        assert seg.size_bytes <= SMALL.segment_bytes
    for earlier, later in zip(segments, segments[1:], strict=False):
        assert earlier.next_offset == later.base_offset
    assert [p.name for p in sorted(tmp_path.glob("*.log"))] == [
        f"{segment_name(s.base_offset)}.log" for s in segments
    ]
    await log.close()


async def test_an_idle_partition_rolls_on_the_segment_timer(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, LogConfig(segment_ms=200))
    await log.append_records([record("lonely")])
    assert len(log.segments()) == 1
    for _ in range(100):
        if len(log.segments()) == 2:
            break
        await asyncio.sleep(0.05)
    segments = log.segments()
    assert len(segments) == 2
    assert segments[0].next_offset == 1 and segments[1].active and segments[1].size_bytes == 0
    await log.close()


async def test_old_producer_timestamps_do_not_roll_segments(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, LogConfig(segment_ms=60_000))
    for i in range(20):
        await log.append_records([record(str(i), ts=1_000 + i)])  # 1970: long "expired"
    assert len(log.segments()) == 1
    await log.close()


async def test_seal(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    before = [asyncio.ensure_future(log.append_records([record(str(i))])) for i in range(5)]
    await asyncio.sleep(0)
    end = await log.seal()
    assert end == 5
    assert [f.result().base_offset for f in before] == list(range(5))
    with pytest.raises(PartitionSealedError) as sealed:
        await log.append_records([record("late")])
    assert sealed.value.status == 409
    assert await log.seal() == 5
    assert await log.wait_for_data(5, 30) is False  # answered at once: nothing can come
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.sealed and reopened.high_watermark == 5
    with pytest.raises(PartitionSealedError):
        await reopened.append_records([record("late")])
    assert [r.value for r in await read_all(reopened)] == [str(i).encode() for i in range(5)]
    await reopened.close()


async def test_wait_for_data_is_woken_by_the_append(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    waiter = asyncio.ensure_future(log.wait_for_data(0, 3600))
    await asyncio.sleep(0)
    assert not waiter.done()
    await log.append_records([record("wake")])
    # Woken by the append: the hour-long wait ends as soon as the loop runs it.
    assert await asyncio.wait_for(waiter, 5) is True
    assert await log.wait_for_data(0, 0) is True
    assert await log.wait_for_data(1, 0.01) is False
    await log.close()


async def test_retention_by_time_and_bytes(tmp_path: Path) -> None:
    now = [10_000_000]
    log = await PartitionLog.open(tmp_path, SMALL, clock_ms=lambda: now[0])
    for i in range(120):
        await log.append_records([record("r" * 400, ts=now[0] - 100_000 + i * 1000)])
    segments = log.segments()
    assert len(segments) >= 4
    # Everything older than 50 s: segments whose newest record is older go, from the head.
    removed = await log.enforce_retention(retention_ms=50_000)
    cutoff = now[0] - 50_000
    assert removed and all(seg.next_offset <= 120 for seg in removed)
    assert log.start_offset == removed[-1].next_offset
    remaining = await read_all(log)
    assert remaining[0].offset == log.start_offset
    # The first remaining segment holds a record at or after the cutoff.
    first_seg_end = log.segments()[0].next_offset
    assert max(r.timestamp_ms for r in remaining if r.offset < first_seg_end) >= cutoff
    with pytest.raises(OffsetOutOfRangeError):
        await log.read(0)
    # Bytes: keep at least 10 KiB, dropping whole segments from the head.
    await log.enforce_retention(retention_bytes=10 * 1024)
    total = sum(s.size_bytes for s in log.segments())
    assert total >= 10 * 1024
    assert total - log.segments()[0].size_bytes < 10 * 1024 or len(log.segments()) == 1
    # The active segment never goes.
    await log.enforce_retention(retention_bytes=1)
    assert len(log.segments()) == 1 and log.segments()[0].active
    assert log.start_offset == log.segments()[0].base_offset
    await log.close()


async def test_retention_respects_max_offset_and_delete_below(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for _ in range(200):
        await log.append_records([record("r" * 400)])
    segments = log.segments()
    assert len(segments) >= 5
    gate = segments[1].next_offset
    await log.enforce_retention(retention_bytes=1, max_offset=gate)
    assert log.start_offset == gate
    below = log.segments()[0].next_offset + 1  # inside the second segment
    removed = await log.delete_segments_below(below)
    assert [s.base_offset for s in removed] == [gate]
    assert log.start_offset == removed[-1].next_offset
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.start_offset == removed[-1].next_offset
    assert reopened.high_watermark == 200
    await reopened.close()


async def test_bad_input_raises_distinct_errors_and_changes_nothing(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, LogConfig(max_record_bytes=100, max_batch_bytes=4096))
    await log.append_records([record("keep")])
    with pytest.raises(RecordTooLargeError):
        await log.append_records([record("x" * 101)])
    with pytest.raises(BatchTooLargeError):
        await log.append_records([record("y" * 90) for _ in range(60)])
    good = encode_batch([NewRecord(value=b"z")], now_ms=1, max_record_bytes=100)
    with pytest.raises(InvalidBatchError):
        await log.append(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(OffsetOutOfRangeError):
        await log.read(5)
    assert log.high_watermark == 1
    assert [r.value for r in await read_all(log)] == [b"keep"]
    await log.close()
    with pytest.raises(PartitionClosedError):
        await log.append_records([record("after close")])


async def test_close_finishes_appends_in_flight(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    pending = [asyncio.ensure_future(log.append_records([record(str(i))])) for i in range(50)]
    await asyncio.sleep(0)
    await log.close()
    assert [p.result().base_offset for p in pending] == list(range(50))
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert reopened.high_watermark == 50
    await reopened.close()


# --- recovery ----------------------------------------------------------------------------


async def _filled(tmp_path: Path, count: int, config: LogConfig = SMALL) -> list[bytes]:
    log = await PartitionLog.open(tmp_path, config)
    values = [f"value-{i}".encode() * (1 + i % 7) for i in range(count)]
    for value in values:
        await log.append_records([NewRecord(value=value)])
    await log.close()
    return values


def _last_log(tmp_path: Path) -> Path:
    return tmp_path / f"{segment_name(list_segment_bases(tmp_path)[-1])}.log"


async def test_recovery_cuts_a_torn_tail(tmp_path: Path) -> None:
    values = await _filled(tmp_path, 30)
    last = _last_log(tmp_path)
    batch = with_base_offset(
        encode_batch([NewRecord(value=b"torn" * 50)], now_ms=1, max_record_bytes=10**6), 30
    )
    with last.open("ab") as f:
        f.write(batch[: len(batch) // 2])
    log = await PartitionLog.open(tmp_path, SMALL)
    assert log.last_recovery is not None
    assert log.last_recovery.reason == "short"
    assert log.last_recovery.truncated_bytes == len(batch) // 2
    assert [r.value for r in await read_all(log)] == values
    # And the log takes appends at the right offset afterwards.
    assert (await log.append_records([record("next")])).base_offset == 30
    await log.close()


async def test_recovery_cuts_a_corrupt_batch_and_what_follows(tmp_path: Path) -> None:
    values = await _filled(tmp_path, 30)
    last = _last_log(tmp_path)
    size = last.stat().st_size
    log = await PartitionLog.open(tmp_path, SMALL)
    for extra in (b"extra-1", b"extra-2"):
        await log.append_records([NewRecord(value=extra)])
    await log.close()
    data = bytearray(last.read_bytes())
    data[size + 30] ^= 0xFF  # inside the first extra batch, under its CRC
    last.write_bytes(bytes(data))
    log = await PartitionLog.open(tmp_path, SMALL)
    assert log.last_recovery is not None and log.last_recovery.reason == "corrupt"
    assert [r.value for r in await read_all(log)] == values
    await log.close()


async def test_index_garbage_is_rebuilt(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1024 * 1024, index_interval_bytes=256)
    values = await _filled(tmp_path, 200, config)
    base = list_segment_bases(tmp_path)[-1]
    index = tmp_path / f"{segment_name(base)}.index"
    data = bytearray(index.read_bytes())
    # Entries that point past the log, then a half entry.
    data += OFFSET_INDEX_ENTRY.pack(10_000, 50_000_000) + b"\x01\x02\x03"
    index.write_bytes(bytes(data))
    log = await PartitionLog.open(tmp_path, config)
    assert log.last_recovery is not None and log.last_recovery.rebuilt_index
    for offset in (0, 57, 199):
        assert (await log.read(offset, max_records=1)).records[0].value == values[offset]
    await log.close()
    assert index.stat().st_size % OFFSET_INDEX_ENTRY.size == 0


async def test_a_rolled_segment_with_a_bad_index_is_rebuilt(tmp_path: Path) -> None:
    values = await _filled(tmp_path, 120)
    first = list_segment_bases(tmp_path)[0]
    index = tmp_path / f"{segment_name(first)}.index"
    index.write_bytes(b"\xff" * 13)
    log = await PartitionLog.open(tmp_path, SMALL)
    assert [r.value for r in await read_all(log)] == values
    await log.close()
    assert index.stat().st_size % OFFSET_INDEX_ENTRY.size == 0


async def test_stray_files_from_an_interrupted_roll_or_delete_are_removed(
    tmp_path: Path,
) -> None:
    values = await _filled(tmp_path, 10)
    (tmp_path / f"{segment_name(999_999)}.index").write_bytes(b"")
    (tmp_path / "partition.json.tmp").write_bytes(b"{")
    log = await PartitionLog.open(tmp_path, SMALL)
    assert not (tmp_path / f"{segment_name(999_999)}.index").exists()
    assert not (tmp_path / "partition.json.tmp").exists()
    assert [r.value for r in await read_all(log)] == values
    await log.close()


# --- storage failures --------------------------------------------------------------------


class CountingOps(FileOps):
    def __init__(self) -> None:
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)


class GatedOps(FileOps):
    """Holds every fdatasync until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if not self.gate.is_set():
            self.entered.set()
            self.gate.wait(30)
        super().fdatasync(fd)


class FailingOps(FileOps):
    """Fails the next write or fsync of the log file with a chosen errno."""

    def __init__(self) -> None:
        self.fail_write: int | None = None
        self.fail_sync: int | None = None
        self.partial = False

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        if self.fail_write is not None:
            code, self.fail_write = self.fail_write, None
            if self.partial:
                # Like a real full disk: part of the data lands, then the error.
                os.pwrite(fd, bytes(buffers[0])[:7], offset)
            raise OSError(code, os.strerror(code))
        return super().pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        if self.fail_sync is not None:
            code, self.fail_sync = self.fail_sync, None
            raise OSError(code, os.strerror(code))
        super().fdatasync(fd)


async def test_disk_full_fails_the_append_and_leaves_the_log_consistent(tmp_path: Path) -> None:
    ops = FailingOps()
    log = await PartitionLog.open(tmp_path, SMALL, ops=ops)
    await log.append_records([record("before")])
    ops.fail_write, ops.partial = errno.ENOSPC, True
    with pytest.raises(DiskFullError) as full:
        await log.append_records([record("lost")])
    assert full.value.status == 503 and full.value.retriable
    assert log.high_watermark == 1
    assert [r.value for r in await read_all(log)] == [b"before"]
    assert (await log.append_records([record("after")])).base_offset == 1
    await log.close()
    reopened = await PartitionLog.open(tmp_path, SMALL)
    assert [r.value for r in await read_all(reopened)] == [b"before", b"after"]
    assert reopened.last_recovery is not None and reopened.last_recovery.truncated_bytes == 0
    await reopened.close()


async def test_a_failed_fsync_fails_the_waiters_and_reopens_with_recovery(
    tmp_path: Path,
) -> None:
    ops = FailingOps()
    log = await PartitionLog.open(tmp_path, SMALL, ops=ops)
    await log.append_records([record("durable")])
    ops.fail_sync = errno.EIO
    results = await asyncio.gather(
        *(log.append_records([record(f"doubtful-{i}")]) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StorageIOError) for r in results), results
    # The partition reopened by itself; the acknowledged record is there, and the failed
    # ones are never half there: the log is a clean prefix of what was written.
    after = await log.append_records([record("after")])
    values = [r.value for r in await read_all(log)]
    assert values[0] == b"durable" and values[-1] == b"after"
    assert after.base_offset == len(values) - 1
    assert all(v.startswith(b"doubtful-") for v in values[1:-1])
    await log.close()


@pytest.fixture
def small_filesystem(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 1 MiB tmpfs, so that ENOSPC comes from the kernel."""
    import subprocess

    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],  # noqa: S607
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)  # noqa: S607


async def test_a_real_full_disk(small_filesystem: Path) -> None:
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * 700 * 1024)
    log = await PartitionLog.open(small_filesystem / "p", LogConfig(segment_bytes=4 << 20))
    acked: list[bytes] = []
    with pytest.raises(DiskFullError):
        for i in range(10_000):
            value = f"{i:06d}".encode() * 300
            await log.append_records([NewRecord(value=value)])
            acked.append(value)
    assert acked, "the disk filled before anything was written"
    assert [r.value for r in await read_all(log)] == acked
    filler.unlink()
    more = await log.append_records([NewRecord(value=b"room again")])
    assert more.base_offset == len(acked)
    await log.close()
    reopened = await PartitionLog.open(small_filesystem / "p", LogConfig(segment_bytes=4 << 20))
    assert [r.value for r in await read_all(reopened)] == [*acked, b"room again"]
    await reopened.close()


async def test_tailing_readers_see_every_record_while_segments_roll_and_expire(
    tmp_path: Path,
) -> None:
    log = await PartitionLog.open(tmp_path, LogConfig(segment_bytes=8 * 1024))
    producers, per_producer = 4, 300

    async def produce(n: int) -> None:
        for i in range(per_producer):
            await log.append_records([record(f"{n}:{i}:" + "p" * (i % 50))])

    positions = [0, 0]
    deleted: list[int] = []

    async def tail(reader: int) -> list[bytes]:
        seen: list[bytes] = []
        offset = 0
        while offset < producers * per_producer:
            if not await log.wait_for_data(offset, 10):
                raise AssertionError(f"no data past {offset}")
            result = await log.read(offset, max_records=37)
            assert result.records[0].offset == offset
            seen.extend(r.value for r in result.records)
            offset = positions[reader] = result.next_offset
        return seen

    async def expire() -> None:
        # Keep deleting old segments, but never past what the slower reader has read.
        while min(positions) < producers * per_producer:
            removed = await log.enforce_retention(retention_bytes=1, max_offset=min(positions))
            deleted.extend(s.base_offset for s in removed)
            await asyncio.sleep(0.001)

    readers = [asyncio.ensure_future(tail(n)) for n in range(2)]
    await asyncio.gather(*(produce(n) for n in range(producers)), expire(), *readers)
    assert len(deleted) > 5, "retention never ran behind the readers"
    for seen in await asyncio.gather(*readers):
        assert len(seen) == producers * per_producer
        for n in range(producers):
            mine = [v for v in seen if v.startswith(f"{n}:".encode())]
            assert [int(v.split(b":")[1]) for v in mine] == list(range(per_producer))
    await log.close()


def _evict(path: Path) -> None:
    """Ask the kernel to drop a file's (clean) pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not CACHED_READS, reason="this system cannot read from the page cache only")
async def test_reads_answer_the_same_bytes_from_the_page_cache_and_from_the_disk(
    tmp_path: Path,
) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    for i in range(60):
        await log.append_records([record(f"value-{i}" * 20, key=f"k{i % 4}")])
    cached = [await log.read_batches(n, max_bytes=8192) for n in (0, 17, 59)]
    cached_records = await log.read(5, max_records=40)
    segments = sorted(tmp_path.glob("*.log"))
    for path in segments:
        _evict(path)
    # Not in the cache: the event loop's attempt stops short and a reader thread reads.
    uncached = [await log.read_batches(n, max_bytes=8192) for n in (0, 17, 59)]
    assert [bytes(r.data) for r in uncached] == [bytes(r.data) for r in cached]
    assert [(r.first_offset, r.next_offset) for r in uncached] == [
        (r.first_offset, r.next_offset) for r in cached
    ]
    for path in segments:
        _evict(path)
    assert await log.read(5, max_records=40) == cached_records
    await log.close()


@pytest.mark.skipif(not CACHED_READS, reason="this system cannot read from the page cache only")
def test_a_cached_only_read_refuses_what_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 65536)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        buffer = memoryview(bytearray(65536))
        with cached_reads_only():
            assert pread_into(fd, buffer, 0) == 65536  # just written: cached
            assert pread_exact(fd, 100, 65500) == b"x" * 36  # the end of the file is no error
        _evict(path)
        with cached_reads_only():
            try:
                pread_exact(fd, 4096, 0)
            except NotCachedError:
                pass
            else:
                pytest.skip("the kernel kept the file's pages (this filesystem may not drop them)")
        # Outside the mode the same read waits for the disk.
        assert pread_exact(fd, 4096, 0) == b"x" * 4096
    finally:
        os.close(fd)


@pytest.mark.skipif(not CACHED_READS, reason="this system cannot read from the page cache only")
async def test_a_log_on_a_filesystem_without_cached_only_reads_reads_on_threads(
    tmp_path: Path,
) -> None:
    # tmpfs refuses RWF_NOWAIT.
    with small_tmpfs(tmp_path / "tmpfs", "4m") as directory:
        fd = os.open(directory / "probe", os.O_RDWR | os.O_CREAT)
        try:
            os.write(fd, b"x" * 64)
            with cached_reads_only(), pytest.raises(CachedReadsUnsupportedError):
                pread_exact(fd, 64, 0)
        finally:
            os.close(fd)
        log = await PartitionLog.open(directory / "log", SMALL)
        for i in range(20):
            await log.append_records([record(f"value-{i}")])
        for _ in range(2):  # the first read learns, the second goes straight to a thread
            read = await log.read_batches(0, max_bytes=1 << 20)
            assert [r.value for r in decode_records(read.data)] == [b"value-0"]
            assert [r.value for r in await read_all(log)] == [
                f"value-{i}".encode() for i in range(20)
            ]
        await log.close()
