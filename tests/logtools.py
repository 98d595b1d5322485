"""Helpers shared by the log tests and the crash-test child process."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

from partitions.batch import NewRecord, Record
from partitions.fileio import FileOps
from partitions.log.partition_log import PartitionLog


def record(value: str, *, key: str | None = None, ts: int | None = None) -> NewRecord:
    return NewRecord(
        value=value.encode(),
        key=None if key is None else key.encode(),
        timestamp_ms=ts,
        key_is_text=key is not None,
        value_is_text=True,
    )


async def read_all(log: PartitionLog, start: int | None = None) -> list[Record]:
    """Every record from ``start`` (default: the log start) to the high watermark."""
    offset = log.start_offset if start is None else start
    out: list[Record] = []
    while offset < log.high_watermark:
        result = await log.read(offset, max_records=10_000, max_bytes=16 * 1024 * 1024)
        out.extend(result.records)
        offset = result.next_offset
    return out


class FullMetaOnce(FileOps):
    """A disk that is full for the next replacement of ``partition.json`` (once armed)."""

    armed = False

    def replace_file(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        if self.armed and path.name == "partition.json":
            self.armed = False
            raise OSError(errno.ENOSPC, "No space left on device")
        super().replace_file(path, data, mode=mode)


class HeldSyncOps(FileOps):
    """Holds the next fdatasync of a .log file until released: an append stays in flight."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.hold and str(Path(f"/proc/self/fd/{fd}").readlink()).endswith(".log"):
            self.hold = False
            self.entered.set()
            self.release.wait(10)
        super().fdatasync(fd)
