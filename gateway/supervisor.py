"""``eventbus serve --workers N``: start N worker processes, restart those that die, and
drain them all at SIGTERM.

The supervisor itself serves nothing. It does what must happen once, before any worker
runs: the catalog's first-start setup (keys), and reserving the port (a socket bound with
``SO_REUSEPORT`` that never listens, so that every worker can bind the same port and the
kernel spreads connections over them, and the port stays the server's while a worker
restarts). Then it starts the workers: the same command line, with the worker's index in
the environment, and waits until every one says it serves before it prints the usual
``eventbus listening on`` line.

Each worker has two pipes to the supervisor. On its *control* pipe it says ``ready`` once
it serves and ``drained`` once it has finished its HTTP requests at shutdown. Its *stdin*
is the supervisor's: ``close`` on it lets a drained worker close its partitions, and end of
file means the supervisor died, after which the worker kills itself at once (as it does,
on Linux, by the parent-death signal): no worker outlives the server and races a new one
for the same partitions. Each worker also holds a lock file for its index while it runs.

A worker that dies is started again at once with the same index, and recovers its
partitions from disk; one that keeps dying within seconds of starting is started again
after a growing pause. Shutdown is in two steps, so that a worker finishing a request that
needs another's partition still finds it: every worker stops accepting and finishes its
requests, then, once all have, every worker closes its partitions and exits.
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
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.auth import bootstrap
from gateway.config import ServerConfig
from gateway.workers import CONTROL_FD_ENV, PORT_ENV, ROLE_ENV, RUN_DIR_ENV, WorkerRole
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog

log = logging.getLogger("eventbus.supervisor")

RUN_DIR = "run"
# A Unix socket path must fit in about 104 bytes; past this, sockets go to a temp dir.
MAX_SOCKET_PATH = 96
# How long workers get to finish their requests, then to close their partitions.
DRAIN_TIMEOUT_S = 40.0
CLOSE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
# A worker that dies sooner than this after starting is restarted after a growing pause.
QUICK_DEATH_S = 10.0
MAX_RESTART_PAUSE_S = 10.0
READY, DRAINED, CLOSE = b"ready", b"drained", b"close"
PR_SET_PDEATHSIG = 1


def run_directory(data_dir: Path) -> Path:
    """Where the workers' sockets go: the data dir's ``run`` directory, unless its path is
    too long for a socket (then a private temporary directory)."""
    run_dir = data_dir.resolve() / RUN_DIR
    if len(str(run_dir / "worker-000-http.sock")) <= MAX_SOCKET_PATH:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return run_dir
    return Path(tempfile.mkdtemp(prefix="eventbus-"))


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


async def bootstrap_catalog(config: ServerConfig) -> None:
    """The first start's keys, made once by the supervisor before any worker runs."""
    catalog = await SqliteCatalog.open(config.data_dir / CATALOG_FILE)
    try:
        await bootstrap(catalog, config.data_dir, config.admin_key)
    finally:
        await catalog.close()


# --- in a worker ---------------------------------------------------------------------------


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

    def say(self, word: bytes) -> None:
        if self.role.control_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.role.control_fd, word + b"\n")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


WORKER_CONTROL = web.AppKey("worker_control", WorkerControl)


async def drain_barrier_ctx(app: web.Application) -> AsyncIterator[None]:
    """At shutdown, after this worker's requests are finished: say so, and keep serving the
    other workers until the supervisor says every one has finished too."""
    yield
    control = app.get(WORKER_CONTROL)
    if control is None:
        return
    control.say(DRAINED)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S + CLOSE_TIMEOUT_S):
            await control.close_now.wait()


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


# --- the supervisor ------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_deaths: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, config: ServerConfig, argv: Sequence[str], count: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = count
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.run_dir = run_directory(config.data_dir)
        self.port = 0
        self._restarts: set[asyncio.Task[None]] = set()

    def _command(self) -> list[str]:
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None and spec.name != "__main__" else "gateway.cli"
        return [sys.executable, "-m", module, *self.argv]

    async def _spawn(self, worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = {
            **os.environ,
            ROLE_ENV: f"{worker.index}/{self.count}",
            RUN_DIR_ENV: str(self.run_dir),
            PORT_ENV: str(self.port),
            CONTROL_FD_ENV: str(write_fd),
        }
        worker.ready.clear()
        worker.drained.clear()
        worker.exited.clear()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._command(), stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,), env=env
            )
        finally:
            os.close(write_fd)
        worker.started = time.monotonic()
        pid_file = self.config.data_dir / RUN_DIR / f"worker-{worker.index}.pid"
        with contextlib.suppress(OSError):
            pid_file.write_text(f"{worker.process.pid}\n")
        log.info(
            "worker %d started (pid %d)",
            worker.index,
            worker.process.pid,
            extra={"worker": worker.index, "pid": worker.process.pid},
        )
        worker.reader = asyncio.get_running_loop().create_task(self._listen(worker, read_fd))

    async def _listen(self, worker: _Worker, read_fd: int) -> None:
        """Read what the worker says, then wait for it to exit and restart it unless the
        server is stopping."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                word = line.strip()
                if word == READY:
                    worker.ready.set()
                elif word == DRAINED:
                    worker.drained.set()
                    if not self.stopping:
                        self._send(worker, CLOSE)  # it was stopped on its own: let it go
        finally:
            transport.close()
        process = worker.process
        if process is None:
            return
        code = await process.wait()
        worker.exited.set()
        if self.stopping:
            return
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        pause = 0.0 if worker.quick_deaths <= 1 else min(2.0**worker.quick_deaths / 4, 10.0)
        log.warning(
            "worker %d (pid %d) exited with %d; starting it again in %.1f s",
            worker.index,
            process.pid,
            code,
            pause,
            extra={"worker": worker.index, "exit_code": code},
        )
        await asyncio.sleep(pause)
        if not self.stopping:
            await self._spawn(worker)

    def _send(self, worker: _Worker, word: bytes) -> None:
        process = worker.process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            process.stdin.write(word + b"\n")

    async def run(self) -> int:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        (self.config.data_dir / RUN_DIR).mkdir(mode=0o700, exist_ok=True)
        await bootstrap_catalog(self.config)
        reserved = reserve_port(self.config.host, self.config.port)
        self.port = reserved.getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            for worker in self.workers:
                await self._spawn(worker)
            if not await self._all_ready(stop):
                return 1
            host = self.config.host
            print(f"eventbus listening on {self.config.scheme}://{host}:{self.port}", flush=True)
            log.info("serving with %d worker processes", self.count)
            await stop.wait()
            return await self._shutdown()
        finally:
            self.stopping = True
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
            reserved.close()
            if self.run_dir != (self.config.data_dir.resolve() / RUN_DIR):
                for path in self.run_dir.iterdir():
                    path.unlink()
                self.run_dir.rmdir()

    async def _all_ready(self, stop: asyncio.Event) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        for worker in self.workers:
            while not worker.ready.is_set():
                if stop.is_set() or time.monotonic() > deadline:
                    log.error("worker %d did not start", worker.index)
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await worker.ready.wait()
                if worker.exited.is_set() and worker.quick_deaths >= 3:
                    log.error("worker %d keeps failing at start", worker.index)
                    return False
        return True

    async def _shutdown(self) -> int:
        """Every worker finishes its requests, then every worker closes, in two steps."""
        self.stopping = True
        log.info("stopping: the workers finish their requests")
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        await _wait_all(
            [asyncio.ensure_future(_first(w.drained, w.exited)) for w in self.workers],
            within_s=DRAIN_TIMEOUT_S,
        )
        for worker in self.workers:
            self._send(worker, CLOSE)
        codes = []
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    codes.append(await process.wait())
            except TimeoutError:
                log.error("worker %d did not stop; killing it", worker.index)  # noqa: TRY400
                process.kill()
                codes.append(await process.wait())
        for worker in self.workers:
            if worker.reader is not None:
                with contextlib.suppress(Exception):
                    await worker.reader
        return 0 if all(code == 0 for code in codes) else 1


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _wait_all(futures: list[asyncio.Future[None]], *, within_s: float) -> None:
    """Wait for all of ``futures`` (up to ``within_s``), cancelling what is left."""
    if futures:
        _, pending = await asyncio.wait(futures, timeout=within_s)
        for future in pending:
            future.cancel()


def run_supervisor(config: ServerConfig, argv: Sequence[str], workers: int) -> int:
    main = Supervisor(config, argv, workers).run()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))  # pragma: no cover - where uvloop is installed
