"""``eventbus serve --workers N``: start N worker processes, restart those that die, and
drain them all at SIGTERM.

The supervisor itself serves nothing. It does what must happen once, before any worker
runs: the catalog's first-start setup (keys), and reserving the port (a socket bound with
``SO_REUSEPORT`` that never listens, so that every worker can bind the same port and the
kernel spreads connections over them, and the port stays the server's while a worker
restarts). Then it starts the workers: the same command line, with the worker's index in
the environment, each forked by a *spawner* process that loaded the server once (forked
itself before anything else ran), and waits until every one says it serves before it
prints the usual ``eventbus listening on`` line.

Each worker has two pipes to the supervisor, its control pipe and its stdin, on which they
say the words of ``role.py``; ``worker.py`` is the worker's side of them.

A worker that dies is started again at once with the same index, and recovers its
partitions from disk; one that keeps dying within seconds of starting is started again
after a growing pause. Shutdown is in two steps, so that a worker finishing a request that
needs another's partition still finds it: every worker stops accepting and finishes its
requests, then, once all have, every worker closes its partitions and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import ServerConfig
from gateway.processes.role import (
    CLOSE,
    CLOSE_TIMEOUT_S,
    DRAIN_TIMEOUT_S,
    DRAINED,
    PORT_ENV,
    READY,
    ROLE_ENV,
    RUN_DIR,
    RUN_DIR_ENV,
    START_TIMEOUT_S,
)
from gateway.processes.spawner import DATAGRAM, WorkerMain, start_spawner
from gateway.processes.worker import reserve_port
from gateway.settings import describe
from gateway.tenancy.auth import bootstrap
from partitions.catalog_url import open_catalog

log = logging.getLogger("eventbus.supervisor")

# A Unix socket path must fit in about 104 bytes; past this, sockets go to a temp dir.
MAX_SOCKET_PATH = 96
# A worker that dies sooner than this after starting is restarted after a growing pause.
QUICK_DEATH_S = 10.0
MAX_RESTART_PAUSE_S = 10.0


def run_directory(data_dir: Path) -> Path:
    """Where the workers' sockets go: the data dir's ``run`` directory, unless its path is
    too long for a socket (then a private temporary directory)."""
    run_dir = data_dir.resolve() / RUN_DIR
    if len(str(run_dir / "worker-000-http.sock")) <= MAX_SOCKET_PATH:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return run_dir
    return Path(tempfile.mkdtemp(prefix="eventbus-"))


async def bootstrap_catalog(config: ServerConfig) -> None:
    """The first start's keys, made once by the supervisor before any worker runs."""
    catalog = await open_catalog(
        config.catalog, config.data_dir, timeout_s=config.catalog_timeout_ms / 1000
    )
    try:
        await bootstrap(catalog, config.data_dir, config.admin_key)
    finally:
        await catalog.close()


@dataclass
class _Worker:
    index: int
    pid: int | None = None
    stdin: int | None = None
    returncode: int | None = None
    started: float = 0.0
    quick_deaths: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None and self.returncode is None

    def signal(self, signum: int) -> None:
        if self.running and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class Supervisor:
    def __init__(
        self,
        config: ServerConfig,
        argv: Sequence[str],
        count: int,
        spawner: tuple[int, socket.socket],
    ) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = count
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.run_dir = run_directory(config.data_dir)
        self.port = 0
        self.spawner_pid, self.spawner = spawner
        self._started: dict[int, asyncio.Future[int]] = {}

    async def _from_spawner(self, stop: asyncio.Event) -> None:
        """Read the spawner's answers (a worker's pid) and news (a worker's exit)."""
        loop = asyncio.get_running_loop()
        self.spawner.setblocking(False)
        while True:
            data = await loop.sock_recv(self.spawner, DATAGRAM)
            if not data:
                # No worker can be started any more, and the running ones die with it (or
                # are killed here, where no parent-death signal took them): nobody is left
                # to report their exits.
                log.error("the process that starts workers went away; stopping")
                self.stopping = True
                for worker in self.workers:
                    if worker.running:
                        worker.signal(signal.SIGKILL)
                        worker.returncode = -signal.SIGKILL
                        worker.exited.set()
                stop.set()
                return
            message = json.loads(data)
            if "exit" in message:
                for worker in self.workers:
                    if worker.pid == message["exit"]:
                        worker.returncode = int(message["code"])
                        worker.exited.set()
            else:
                future = self._started.pop(int(message["index"]), None)
                if future is not None and not future.done():
                    future.set_result(int(message["pid"]))

    async def _spawn(self, worker: _Worker) -> None:
        stdin_read, stdin_write = os.pipe()
        control_read, control_write = os.pipe()
        env = {
            ROLE_ENV: f"{worker.index}/{self.count}",
            RUN_DIR_ENV: str(self.run_dir),
            PORT_ENV: str(self.port),
        }
        worker.ready.clear()
        worker.drained.clear()
        worker.exited.clear()
        worker.returncode = None
        started = asyncio.get_running_loop().create_future()
        self._started[worker.index] = started
        request = json.dumps({"index": worker.index, "env": env}).encode()
        try:
            socket.send_fds(self.spawner, [request], [stdin_read, control_write])
        finally:
            os.close(stdin_read)
            os.close(control_write)
        async with asyncio.timeout(START_TIMEOUT_S):
            worker.pid = await started
        worker.stdin = stdin_write
        worker.started = time.monotonic()
        pid_file = self.config.data_dir / RUN_DIR / f"worker-{worker.index}.pid"
        with contextlib.suppress(OSError):
            pid_file.write_text(f"{worker.pid}\n")
        log.info(
            "worker %d started (pid %d)",
            worker.index,
            worker.pid,
            extra={"worker": worker.index, "pid": worker.pid},
        )
        worker.reader = asyncio.get_running_loop().create_task(self._listen(worker, control_read))

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
        await worker.exited.wait()
        if worker.stdin is not None:
            os.close(worker.stdin)
            worker.stdin = None
        if self.stopping:
            if worker.returncode:
                # Said even now: the server's exit code is not 0 because of it.
                log.warning(
                    "worker %d (pid %d) exited with %d while the server stopped",
                    worker.index,
                    worker.pid,
                    worker.returncode,
                    extra={"worker": worker.index, "exit_code": worker.returncode},
                )
            return
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        pause = 0.0 if worker.quick_deaths <= 1 else min(2.0**worker.quick_deaths / 4, 10.0)
        log.warning(
            "worker %d (pid %d) exited with %d; starting it again in %.1f s",
            worker.index,
            worker.pid,
            worker.returncode,
            pause,
            extra={"worker": worker.index, "exit_code": worker.returncode},
        )
        await asyncio.sleep(pause)
        if not self.stopping:
            await self._spawn(worker)

    def _send(self, worker: _Worker, word: bytes) -> None:
        if worker.stdin is not None and worker.running:
            with contextlib.suppress(OSError):
                os.write(worker.stdin, word + b"\n")

    async def run(self) -> int:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        (self.config.data_dir / RUN_DIR).mkdir(mode=0o700, exist_ok=True)
        try:
            await bootstrap_catalog(self.config)
        except BaseException:
            self._stop_spawner()  # no worker was started: only the spawner to stop
            raise
        log.info("settings", extra={"settings": describe(self.config)})
        reserved = reserve_port(self.config.host, self.config.port)
        self.port = reserved.getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        news = loop.create_task(self._from_spawner(stop), name="spawner")
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
                worker.signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    for worker in self.workers:
                        if worker.pid is not None:
                            await worker.exited.wait()
            news.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ValueError):
                await news
            self._stop_spawner()
            reserved.close()
            if self.run_dir != (self.config.data_dir.resolve() / RUN_DIR):
                for path in self.run_dir.iterdir():
                    path.unlink()
                self.run_dir.rmdir()

    def _stop_spawner(self) -> None:
        with contextlib.suppress(OSError):
            self.spawner.send(b"")
        self.spawner.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.spawner_pid, 0)

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
            worker.signal(signal.SIGTERM)
        await _wait_all(
            [asyncio.ensure_future(_first(w.drained, w.exited)) for w in self.workers],
            within_s=DRAIN_TIMEOUT_S,
        )
        for worker in self.workers:
            self._send(worker, CLOSE)
        codes = []
        for worker in self.workers:
            if worker.pid is None:
                continue
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await worker.exited.wait()
            except TimeoutError:
                log.error("worker %d did not stop; killing it", worker.index)  # noqa: TRY400
                worker.signal(signal.SIGKILL)
                await worker.exited.wait()
            codes.append(worker.returncode)
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


def run_supervisor(
    config: ServerConfig,
    argv: Sequence[str],
    workers: int,
    worker_main: WorkerMain,
    preload: Callable[[], object],
) -> int:
    """Run ``workers`` worker processes, each forked from the spawner (which ran
    ``preload`` once) and running ``worker_main(argv)``, until SIGTERM or SIGINT."""
    spawner = start_spawner(argv, worker_main, preload)  # before any thread or loop exists
    main = Supervisor(config, argv, workers, spawner).run()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))  # pragma: no cover - where uvloop is installed
