"""``eventbus`` with every worker process under cProfile, for the workers benchmark.

``python -m bench.profiled_serve serve --workers N ...`` runs the server as usual, but
each worker the supervisor forks (and only the workers) runs under :mod:`cProfile` and
writes its statistics to
``$BENCH_PROFILE_DIR/worker-INDEX-PID.prof`` when it stops cleanly (SIGTERM). With
``--workers 0`` the one server process runs under cProfile instead and writes
``server-PID.prof``.
cProfile sees the event loop's thread only (the log's write and fsync threads are not in
it) and counts CPU time, so time spent waiting is not charged to the coroutine waiting.
"""

from __future__ import annotations

import cProfile
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.cli.main import main
from gateway.processes.role import ROLE_ENV

PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"


def profiled(argv: Sequence[str]) -> int:
    """A worker's main under cProfile (the supervisor forks workers and runs this)."""
    role = os.environ.get(ROLE_ENV, "")
    target = os.environ.get(PROFILE_DIR_ENV)
    if not role or not target:
        return main(argv)
    return _under_profiler(argv, Path(target) / f"worker-{role.partition('/')[0]}-{os.getpid()}")


def _under_profiler(argv: Sequence[str], stem: Path) -> int:
    # The event loop thread's CPU time, not wall time: waiting costs nothing.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        return main(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(str(stem.with_suffix(".prof")))


def _one_process(argv: Sequence[str]) -> bool:
    args = list(argv)
    if "--workers=0" in args:
        return True
    return any(a == "--workers" and b == "0" for a, b in itertools.pairwise(args))


if __name__ == "__main__":
    argv = sys.argv[1:]
    target = os.environ.get(PROFILE_DIR_ENV)
    if target and _one_process(argv):
        sys.exit(_under_profiler(argv, Path(target) / f"server-{os.getpid()}"))
    sys.exit(main(argv, worker_main=profiled))
