"""Storage faults and races in the partition log, each tied to the behaviour docs promise.

Each of these failed on an earlier version of the writer; they keep it honest.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from partitions.batch import NewRecord
from partitions.errors import EventBusError, StorageIOError
from partitions.fileio import FileOps
from partitions.log.layout import list_segment_bases, segment_name
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from tests.logtools import HeldSyncOps, read_all, record

SMALL = LogConfig(segment_bytes=16 * 1024, index_interval_bytes=512)


# 1. _seal sets self._sealed on the writer thread before the loop has run the _publish
#    callbacks posted for the appends ahead of the seal.
async def test_sealed_is_never_visible_before_the_final_end(tmp_path: Path) -> None:
    log = await PartitionLog.open(tmp_path, SMALL)
    appends = [asyncio.ensure_future(log.append_records([record(str(i))])) for i in range(3)]
    await asyncio.sleep(0)
    sealing = asyncio.ensure_future(log.seal())
    await asyncio.sleep(0)
    time.sleep(0.5)  # noqa: ASYNC251 - the loop is busy; the drain writes and seals meanwhile
    if log.sealed:
        # A tailing reader at 0 is told "sealed, nothing can come" although 3 records are final.
        assert await log.wait_for_data(0, 10) is True, "wait_for_data: sealed, no data"
        assert await log.seal() == 3, "seal() answered a stale end offset"
    assert await sealing == 3
    await asyncio.gather(*appends)
    await log.close()


# 2. Index entries written in the same group as log bytes whose fsync has not returned: a
#    power loss can keep the entry and lose an earlier page, and recovery trusts everything
#    before the last entry. Entries must be written only after the log is durable.
async def test_a_power_loss_during_a_group_fsync_recovers_the_acknowledged_prefix(
    tmp_path: Path,
) -> None:
    config = LogConfig(segment_bytes=1 << 20, index_interval_bytes=256)
    data_dir, crash_dir = tmp_path / "p", tmp_path / "after-power-loss"
    log = await PartitionLog.open(data_dir, config)
    for _ in range(5):
        await log.append_records([NewRecord(value=b"a" * 100)])
    await log.close()
    last_name = f"{segment_name(list_segment_bases(data_dir)[-1])}.log"
    durable = (data_dir / last_name).stat().st_size
    ops = HeldSyncOps()
    log = await PartitionLog.open(data_dir, config, ops=ops)
    ops.hold = True
    group = asyncio.gather(*(log.append_records([NewRecord(value=b"t" * 3000)]) for _ in range(4)))
    await asyncio.to_thread(ops.entered.wait, 10)
    # The power fails now, mid-fsync: the disk holds what was written so far, except that
    # the page with the first unsynced batch never made it (writeback is not in file order).
    shutil.copytree(data_dir, crash_dir)
    damaged = bytearray((crash_dir / last_name).read_bytes())
    damaged[durable : durable + 4096] = bytes(4096)
    (crash_dir / last_name).write_bytes(bytes(damaged))
    ops.release.set()
    await group
    await log.close()
    recovered = await PartitionLog.open(crash_dir, config)
    records = await read_all(recovered, 0)
    assert [r.value for r in records] == [b"a" * 100] * 5
    assert (await recovered.append_records([NewRecord(value=b"next")])).base_offset == 5
    await recovered.close()


# 3. After a failed fdatasync the reopen republishes whatever the page cache holds; on Linux the
#    failed pages are marked clean (fsyncgate), so no later fdatasync writes them.  Model: bytes
#    that were dirty when an fsync failed are "lost at power-off"; later acked appends follow them.
class FsyncgateOps(FileOps):
    def __init__(self) -> None:
        self.fail_next = False
        self.synced: dict[str, int] = {}
        self.lost: list[tuple[str, int, int]] = []

    def fdatasync(self, fd: int) -> None:
        path = str(Path(f"/proc/self/fd/{fd}").readlink())
        size = os.fstat(fd).st_size
        if self.fail_next and path.endswith(".log"):
            self.fail_next = False
            self.lost.append((path, self.synced.get(path, 0), size))
            self.synced[path] = size  # pages now clean: never written again
            raise OSError(errno.EIO, "EIO")
        super().fdatasync(fd)
        self.synced[path] = size

    def ftruncate(self, fd: int, size: int) -> None:
        # Truncated pages are gone, not lost: bytes written there later are new pages.
        path = str(Path(f"/proc/self/fd/{fd}").readlink())
        self.lost = [
            (p, start, min(end, size) if p == path else end)
            for p, start, end in self.lost
            if p != path or start < size
        ]
        super().ftruncate(fd, size)


async def test_acked_appends_survive_power_loss_after_a_failed_fsync(tmp_path: Path) -> None:
    ops = FsyncgateOps()
    log = await PartitionLog.open(tmp_path, SMALL, ops=ops)
    await log.append_records([record("durable")])
    ops.fail_next = True
    with pytest.raises(StorageIOError):
        await log.append_records([record("failed")])
    hw_after_failure = log.high_watermark
    after = await log.append_records([record("acked-after")])  # resolved: durable, it says
    await log.close()
    for path, start, end in ops.lost:  # power loss
        with Path(path).open("r+b") as f:
            f.seek(start)
            f.write(bytes(end - start))
    reopened = await PartitionLog.open(tmp_path, SMALL)
    values = [r.value for r in await read_all(reopened, 0)]
    await reopened.close()
    assert values == [b"durable", b"acked-after"], (hw_after_failure, after, values)


# 4. close() while the first recovery attempt after a failed fsync is running, and the
#    disk stays broken: close never returns (and the drain spins without sleeping).
class BrokenDiskOps(FileOps):
    def __init__(self) -> None:
        self.fail_sync = False
        self.broken = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.fail_sync:
            self.fail_sync = False
            raise OSError(errno.EIO, "EIO")
        super().fdatasync(fd)

    def make_dirs(self, path: Path) -> None:  # first thing _load does
        if self.broken:
            self.entered.set()
            self.release.wait(10)
            raise OSError(errno.EIO, "disk gone")
        super().make_dirs(path)


async def test_close_returns_while_the_disk_is_broken(tmp_path: Path) -> None:
    ops = BrokenDiskOps()
    log = await PartitionLog.open(tmp_path, SMALL, ops=ops)
    ops.fail_sync = ops.broken = True
    failing = asyncio.ensure_future(log.append_records([record("x")]))
    await asyncio.to_thread(ops.entered.wait, 10)
    closing = asyncio.ensure_future(log.close())
    await asyncio.sleep(0.05)
    ops.release.set()
    try:
        await asyncio.wait_for(asyncio.shield(closing), 3)
    except TimeoutError:
        ops.broken = False  # let it finish so the test can clean up
        await closing
        pytest.fail("close() hung for 3 s while recovery kept failing")
    finally:
        await asyncio.gather(failing, return_exceptions=True)


# 5. ENOSPC when a roll creates the next segment (a real tmpfs out of inodes): documented as
#    disk_full for the appends of that write; in fact the drain loops roll->reopen forever.
@pytest.fixture
def few_inodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=6", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(done.stderr.decode())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # noqa: S607


async def test_enospc_on_roll_fails_the_append(few_inodes: Path) -> None:
    log = await PartitionLog.open(few_inodes / "p", LogConfig(segment_bytes=4096))
    for _ in range(3):
        await log.append_records([record("x" * 1000)])
    fds_before = len(list(Path("/proc/self/fd").iterdir()))
    task = asyncio.ensure_future(log.append_records([record("y" * 2000)]))  # needs a roll
    done, _ = await asyncio.wait([task], timeout=2)
    fds_after = len(list(Path("/proc/self/fd").iterdir()))
    if not done:
        pytest.fail(
            f"append still pending after 2 s (ENOSPC on roll); fds {fds_before}->{fds_after}"
        )
    with pytest.raises(EventBusError):
        task.result()


# 6. close() does not stop a running drain, and the writer accepts work while closing: a
#    roll queued during close runs on fds that close() has just closed, fails, and the drain
#    "recovers" by reopening every segment of the closed log (leaked fds, files touched later).
async def test_close_stops_the_drain_before_closing_files(tmp_path: Path) -> None:
    ops = HeldSyncOps()
    log = await PartitionLog.open(tmp_path, SMALL, ops=ops)
    await log.append_records([record("x")])
    fds = len(list(Path("/proc/self/fd").iterdir()))
    ops.hold = True
    closing = asyncio.ensure_future(log.close())
    rolling = asyncio.ensure_future(log.roll())  # e.g. the segment_ms timer or a tiering task
    await asyncio.to_thread(ops.entered.wait, 10)  # the roll's finish() is in fdatasync(log)
    await asyncio.wait([closing], timeout=2)
    assert closing.done() and log.closed  # close() returned while the drain still runs
    ops.release.set()
    await asyncio.gather(rolling, return_exceptions=True)
    await asyncio.sleep(0.3)
    leaked = len(list(Path("/proc/self/fd").iterdir())) - fds
    assert log.segments() == [] and leaked <= 0, (log.segments(), leaked)


async def test_a_refused_submit_does_not_wedge_the_log(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(2)
    log = await PartitionLog.open(tmp_path, SMALL, writer_pool=pool)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        await log.append_records([record("x")])
    assert not log.draining, "draining stuck True: every later append and close() hang"
