"""Clocks a test moves, shared with server processes through a file.

A server process reads its quota and metering clocks from files that the test writes
(:class:`FileClock`), when it is started through :mod:`tests.clocked_server`, which hands
those clocks to the command line. The product itself reads only real clocks.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

# The environment variables that name each clock's file, for tests.clocked_server.
QUOTA_CLOCK_FILE_ENV = "EVENTBUS_TEST_QUOTA_CLOCK_FILE"
USAGE_CLOCK_FILE_ENV = "EVENTBUS_TEST_USAGE_CLOCK_FILE"


class FileClock:
    """A clock read from a file that another process moves: for tests that count time
    across several worker processes. The file holds one little-endian float64, written
    with :meth:`write`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 8, access=mmap.ACCESS_READ)

    def __call__(self) -> float:
        return float(_CLOCK.unpack_from(self._map)[0])

    def whole(self) -> int:
        return int(self())

    @staticmethod
    def write(path: Path, value: float) -> None:
        """Set the clock: in place, never truncating the file. Readers map it, and a read
        of a mapped page while the file is empty kills the reading process (SIGBUS)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, _CLOCK.pack(value), 0)
        finally:
            os.close(fd)


_CLOCK = struct.Struct("<d")
