"""``file://DIR``: an object store in a local directory, the embedded default.

An object ``a/b/c`` is the file ``DIR/a/b/c``. A put writes ``DIR/.tmp/<random>``, fsyncs
it, then gives it its name with a hard link, which fails if the name exists (a rename
without replace: POSIX ``rename`` would silently overwrite), removes the temporary name
and fsyncs the object's directory. So an object appears whole or not at all, a crash
leaves at most a temporary file (removed by :meth:`FileObjectStore.remove_incomplete`),
and two puts of one key cannot both win.

Blocking file calls run on the store's own threads, so a slow disk never holds the event
loop or the log's threads; each call has the store's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from partitions.fileio import FileOps, pread_exact, pread_into
from tiered_storage.objects import (
    DEFAULT_TIMEOUT_S,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStoreUnavailableError,
    PutResult,
    check_key,
)

T = TypeVar("T")

TMP_DIR = ".tmp"
_COPY_CHUNK = 1024 * 1024


class FileObjectStore:
    """:class:`tiered_storage.objects.ObjectStore` in a directory."""

    def __init__(self, root: Path, *, timeout_s: float, ops: FileOps | None = None) -> None:
        self.root = root
        self.timeout_s = timeout_s
        self._ops = ops or FileOps()
        self._threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="file-store")
        self._in_flight: set[str] = set()

    @classmethod
    async def open(
        cls, root: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S, ops: FileOps | None = None
    ) -> FileObjectStore:
        """The store in ``root``, made ready for puts. ``ops`` are the file calls it makes
        (tests pass ones that fail or stall on purpose)."""
        self = cls(await asyncio.to_thread(root.resolve), timeout_s=timeout_s, ops=ops)
        await self._call("open", self._ops.make_dirs, self.root / TMP_DIR)
        return self

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    @property
    def local(self) -> bool:
        return True

    async def close(self) -> None:
        # Not waiting: a thread stuck on a stalled disk must not hold shutdown.
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await loop.run_in_executor(self._threads, partial(fn, *args))
        except TimeoutError:
            raise ObjectStoreUnavailableError(
                f"{what} on {self.url} took longer than {self.timeout_s} s"
            ) from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    # --- put -------------------------------------------------------------------------------

    async def put(self, key: str, source: bytes | Path) -> PutResult:
        path = self._path(key)
        tmp = self.root / TMP_DIR / f"{secrets.token_hex(12)}.part"
        self._in_flight.add(tmp.name)
        try:
            return await self._call(f"put {key}", self._put_sync, path, tmp, source)
        finally:
            self._in_flight.discard(tmp.name)

    def _put_sync(self, path: Path, tmp: Path, source: bytes | Path) -> PutResult:
        if path.exists():
            return PutResult.ALREADY_EXISTS
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                if isinstance(source, bytes):
                    self._ops.write_all(fd, [source], 0)
                else:
                    _copy_file(source, fd, self._ops)
                self._ops.fdatasync(fd)
            finally:
                os.close(fd)
            self._ops.make_dirs(path.parent)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return PutResult.ALREADY_EXISTS
            self._ops.fsync_dir(path.parent)
            return PutResult.CREATED
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # --- get, list, delete ------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"not a byte range: [{start}, {end})")
        return await self._call(f"get {key}", self._get_sync, key, start, end)

    async def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> bytes | bytearray:
        for _, start, end in ranges:
            if start < 0 or end < start:
                raise ValueError(f"not a byte range: [{start}, {end})")
        if len(ranges) == 1:
            return await self.get(*ranges[0])
        return await self._call(f"get {len(ranges)} ranges", self._get_ranges_sync, ranges)

    def _get_ranges_sync(self, ranges: Sequence[tuple[str, int, int]]) -> bytearray:
        # Each range read straight into its place in the answer.
        buffer = bytearray(sum(end - start for _, start, end in ranges))
        view = memoryview(buffer)
        filled = 0
        for key, start, end in ranges:
            try:
                fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ObjectNotFoundError(f"no object {key}", key=key) from None
            try:
                got = pread_into(fd, view[filled : filled + end - start], start)
            finally:
                os.close(fd)
            filled += got
            if got < end - start:
                del view
                del buffer[filled:]
                return buffer
        return buffer

    def _get_sync(self, key: str, start: int, end: int | None) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key}", key=key) from None
        try:
            size = os.fstat(fd).st_size
            stop = size if end is None else min(end, size)
            return pread_exact(fd, max(0, stop - start), start) if stop > start else b""
        finally:
            os.close(fd)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await self._call(f"list {prefix}", _list_files, self.root, prefix)

    async def delete(self, key: str) -> None:
        await self._call(f"delete {key}", self._delete_sync, self._path(key))

    def _delete_sync(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        try:
            self._ops.fsync_dir(path.parent)
        except FileNotFoundError:
            # Another deletion (another thread, or another worker process deleting the same
            # topic's objects) emptied the directory and removed it: nothing left to do.
            return
        # Drop directories left empty (a deleted topic's), up to the root.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def remove_incomplete(self, older_than_ms: int) -> int:
        return await self._call(
            "clean temporary files", self._remove_incomplete_sync, older_than_ms
        )

    def _remove_incomplete_sync(self, older_than_ms: int) -> int:
        removed = 0
        for path in (self.root / TMP_DIR).iterdir():
            if path.name in self._in_flight:
                continue
            try:
                if path.stat().st_mtime_ns // 1_000_000 < older_than_ms:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _list_files(root: Path, prefix: str) -> list[ObjectInfo]:
    directory, _, _ = prefix.rpartition("/")
    base = root / directory if directory else root
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            key = full.relative_to(root).as_posix()
            if not key.startswith(prefix):
                continue
            try:
                stat = full.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            found.append(ObjectInfo(key, stat.st_size, stat.st_mtime_ns // 1_000_000))
    found.sort()
    return found


def _copy_file(source: Path, fd: int, ops: FileOps) -> None:
    with source.open("rb") as reader:
        position = 0
        while chunk := reader.read(_COPY_CHUNK):
            ops.write_all(fd, [chunk], position)
            position += len(chunk)
