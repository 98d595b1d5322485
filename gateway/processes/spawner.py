"""The *spawner*: a process forked by the supervisor before anything else ran, which loads
the whole server once and then forks each worker on request (milliseconds, where a fresh
interpreter loading the server takes most of a second, at every start and restart).

A worker forked here runs the same command line, with its index, the port and its pipes in
its environment. The spawner ignores SIGINT and SIGTERM: signals sent to the whole process
group reach the supervisor and the workers, which drain as the supervisor says.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from gateway.processes.role import CONTROL_FD_ENV
from gateway.processes.worker import die_with_parent

# What a forked worker runs: the server's main with the command line's arguments.
WorkerMain = Callable[[Sequence[str]], int]
# The largest message between the supervisor and the spawner.
DATAGRAM = 1 << 16


def start_spawner(
    argv: Sequence[str], worker_main: WorkerMain, preload: Callable[[], object]
) -> tuple[int, socket.socket]:
    """Fork the *spawner*, which runs ``preload`` (loading the whole server) once and then
    forks a worker for each request, which runs ``worker_main(argv)``. Answers the
    spawner's pid and the supervisor's end of the socket between them."""
    # Message boundaries, passed descriptors, and an end of file when either side dies
    # (where sequenced packets exist; elsewhere datagrams, and the parent-pid check).
    kind = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_DGRAM)
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            ours.close()
            code = _spawner(theirs, list(argv), worker_main, preload)
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def _spawner(  # pragma: no cover - a child
    sock: socket.socket, argv: list[str], worker_main: WorkerMain, preload: Callable[[], object]
) -> int:
    die_with_parent()
    parent = os.getppid()
    # The supervisor decides when workers stop: signals to the whole process group (a
    # Ctrl-C, say) must not end the process whose children the workers are.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    preload()  # loaded once here, shared by every fork

    while True:
        _reap(sock)
        if os.getppid() != parent:
            return 0  # the supervisor is gone (where the parent-death signal is missing)
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        message, fds, _, _ = socket.recv_fds(sock, DATAGRAM, 2)
        if not message:
            return 0
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _worker_child(request, fds, argv, worker_main)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"index": request["index"], "pid": pid}).encode())


def _reap(sock: socket.socket) -> None:  # pragma: no cover - in the spawner
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        sock.send(json.dumps({"exit": pid, "code": code}).encode())


def _worker_child(
    request: dict[str, Any], fds: list[int], argv: list[str], worker_main: WorkerMain
) -> None:
    """In a worker just forked: its stdin and control pipe, its environment, then the
    server's main, as if started by ``python -m ... serve``."""  # pragma: no cover
    code = 1
    try:
        stdin_fd, control_fd = fds
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        os.environ.update(request["env"])
        os.environ[CONTROL_FD_ENV] = str(control_fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = worker_main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a worker's child says what killed it, then exits
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
