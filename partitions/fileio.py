"""Blocking file primitives shared by the log and the stores: the fault-injection seam,
exact reads, and atomic small-file replacement. Everything here runs on executor threads,
except reads of bytes already in the page cache (:func:`cached_reads_only`)."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

_IOV_MAX = 1024

#: Whether this system can read only what the page cache holds (preadv2's RWF_NOWAIT).
CACHED_READS = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_mode = threading.local()


class NotCachedError(Exception):
    """A read limited to the page cache met bytes that would need the disk."""


class CachedReadsUnsupportedError(NotCachedError):
    """The file's filesystem cannot limit a read to the page cache (tmpfs cannot)."""


@contextlib.contextmanager
def cached_reads_only() -> Iterator[None]:
    """Within it, this thread's exact reads take only bytes the page cache holds and raise
    :class:`NotCachedError` rather than wait for the disk: the event loop reads recent data
    itself, without the hop to a reader thread, and leaves the rest to one."""
    _mode.cached_only = True
    try:
        yield
    finally:
        _mode.cached_only = False


class WriteFailedError(OSError):
    """A write (not an fsync) failed; the file may hold part of it, to be cut back."""


class FileOps:
    """The system calls that can fail on a write path, in one place.

    Production uses this class as it is. Fault-injection tests subclass it to make a chosen
    write or fsync fail the way a real disk does (``ENOSPC``, ``EIO``).
    """

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
        """Write every buffer at ``offset``, resuming after short writes."""
        pending = [memoryview(b) for b in buffers if len(b)]
        first = 0
        while first < len(pending):
            written = self.pwritev(fd, pending[first : first + _IOV_MAX], offset)
            if written <= 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            offset += written
            while written:
                head = pending[first]
                if written >= len(head):
                    written -= len(head)
                    first += 1
                else:
                    pending[first] = head[written:]
                    written = 0

    def replace_file(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        """Replace ``path`` with ``data`` atomically and durably.

        Write a temporary file, fsync it, rename it over ``path``, fsync the directory: a
        crash leaves either the old content or the new, never a mix.
        """
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask, and whatever a stale .tmp had
            self.write_all(fd, [data], 0)
            self.fdatasync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
        self.fsync_dir(path.parent)

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` and any missing parents, fsyncing each parent that changed."""
        missing = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            directory.mkdir(exist_ok=True)
            self.fsync_dir(directory.parent)


def pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill ``buffer`` from ``offset``; answers how many bytes came (fewer only at the end
    of the file)."""
    flags = _NOWAIT if getattr(_mode, "cached_only", False) else 0
    got = 0
    while got < len(buffer):
        try:
            n = os.preadv(fd, [buffer[got:]], offset + got, flags)
        except BlockingIOError as exc:
            raise NotCachedError(f"bytes at {offset + got} are not in the page cache") from exc
        except OSError as exc:
            if not flags or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            raise CachedReadsUnsupportedError(f"{os.strerror(exc.errno)}: RWF_NOWAIT") from exc
        if not n:
            break
        got += n
    return got


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset``, or fewer only at the end of the file."""
    if getattr(_mode, "cached_only", False):
        buffer = bytearray(size)
        return bytes(memoryview(buffer)[: pread_into(fd, memoryview(buffer), offset)])
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
