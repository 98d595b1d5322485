"""A worker process's side of the supervisor: dying with it, its pipes, the drain barrier at
shutdown, the lock file of its index, and its listening socket on the shared port.

Each worker has two pipes to the supervisor. On its *control* pipe it says ``ready`` once
it serves and ``drained`` once it has finished its HTTP requests at shutdown. Its *stdin*
is the supervisor's: ``close`` on it lets a drained worker close its partitions, and end of
file means the supervisor died, after which the worker kills itself at once (as it does,
on Linux, by the parent-death signal): no worker outlives the server and races a new one
for the same partitions. Each worker also holds a lock file for its index while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from aiohttp import web

from gateway.processes.role import (
    CLOSE,
    CLOSE_TIMEOUT_S,
    DRAIN_TIMEOUT_S,
    DRAINED,
    RUN_DIR,
    START_TIMEOUT_S,
    WorkerRole,
)

log = logging.getLogger("eventbus.supervisor")

PR_SET_PDEATHSIG = 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any free port) with ``SO_REUSEPORT``, never
    listening: the workers bind the same port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """A worker's own listening socket on the server's port."""
    sock = reserve_port(host, port)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def die_with_parent() -> None:
    """Have the kernel kill this process when the supervisor dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerControl:
    """A worker's side of its pipes to the supervisor."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role
        self.close_now = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(
            self._read_stdin(), name="supervisor-pipe"
        )

    async def _read_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == CLOSE:
                self.close_now.set()
        if not self.close_now.is_set():
            # The supervisor is gone: no worker may outlive it.
            log.error("the supervisor went away; worker %d stops now", self.role.index)
            os.kill(os.getpid(), signal.SIGKILL)

    @property
    def reader(self) -> asyncio.Task[None] | None:
        """The task reading the supervisor's pipe (watched by the app's health)."""
        return self._reader

    def say(self, word: bytes) -> None:
        if self.role.control_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.role.control_fd, word + b"\n")

    async def drained(self) -> None:
        """Say ``drained``, then wait (a bounded time) for the supervisor's ``close``."""
        self.say(DRAINED)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S + CLOSE_TIMEOUT_S):
                await self.close_now.wait()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def drain_barrier(
    control: WorkerControl,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A ``cleanup_ctx`` entry, appended last so that it closes first: at shutdown, after
    this worker's requests are finished, say so, and keep serving the other workers until
    the supervisor says every one has finished too."""

    @contextlib.asynccontextmanager
    async def barrier(app: web.Application) -> AsyncIterator[None]:
        yield
        await control.drained()

    return barrier


@contextlib.contextmanager
def worker_lock(data_dir: Path, index: int) -> Iterator[None]:
    """Hold ``run/worker-{index}.lock``: a worker of an earlier supervisor still exiting
    keeps it, and this one waits for it to be gone."""
    lock_dir = data_dir / RUN_DIR
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (lock_dir / f"worker-{index}.lock").open("a") as handle:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {index} of {data_dir} still runs") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
