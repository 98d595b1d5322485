"""A real small file system for the tests of a full disk: a tmpfs mounted for one test (root
can mount one; where it cannot be mounted the test is skipped with the reason), so that
``ENOSPC`` comes from the kernel, and the means to fill it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 64 * 1024


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (as ``mount -o size=`` reads it) mounted at ``mount_point``."""
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],  # noqa: S607
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)  # noqa: S607


def fill(path: Path, nbytes: int | None = None) -> int:
    """Append zeros to the file ``path`` until ``nbytes`` are written or, with no bound, until
    its file system has no room left; answers the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        while nbytes is None or written < nbytes:
            size = CHUNK if nbytes is None else min(CHUNK, nbytes - written)
            written += os.write(fd, bytes(size))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return written


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
