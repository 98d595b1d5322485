"""``eventbus`` with every worker process under cProfile, for the workers benchmark.

``python -m bench.profiled_serve serve --workers N ...`` runs the server as usual, but
each worker the supervisor forks (and only the workers) runs under :mod:`cProfile` and
writes its statistics to
``$BENCH_PROFILE_DIR/worker-INDEX-PID.prof`` when it stops cleanly (SIGTERM).
cProfile sees the event loop's thread only (the log's write and fsync threads are not in
it) and counts CPU time, so time spent waiting is not charged to the coroutine waiting.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import supervisor
from gateway.cli import main
from gateway.workers import ROLE_ENV

PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"


def profiled(argv: Sequence[str]) -> int:
    """A worker's main under cProfile (the supervisor forks workers and runs this)."""
    role = os.environ.get(ROLE_ENV, "")
    target = os.environ.get(PROFILE_DIR_ENV)
    if not role or not target:
        return main(argv)
    # The event loop thread's CPU time, not wall time: waiting costs nothing.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        return main(argv)
    finally:
        profiler.disable()
        index = role.partition("/")[0]
        profiler.dump_stats(str(Path(target) / f"worker-{index}-{os.getpid()}.prof"))


if __name__ == "__main__":
    supervisor.WORKER_MAIN = profiled
    sys.exit(main(sys.argv[1:]))
