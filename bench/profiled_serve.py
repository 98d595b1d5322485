"""``eventbus`` with every worker process under cProfile, for the workers benchmark.

``python -m bench.profiled_serve serve --workers N ...`` runs the server as usual; the
supervisor starts its workers with this same module, so each worker (and only the
workers) runs under :mod:`cProfile` and writes its statistics to
``$BENCH_PROFILE_DIR/worker-INDEX-PID.prof`` when it stops cleanly (SIGTERM).
cProfile sees the event loop's thread only: the log's write and fsync threads and the
kernel are not in it.
"""

from __future__ import annotations

import cProfile
import os
import sys
from pathlib import Path

from gateway.cli import main
from gateway.workers import ROLE_ENV

PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"


def run() -> int:
    role = os.environ.get(ROLE_ENV)
    target = os.environ.get(PROFILE_DIR_ENV)
    if not role or not target:
        return main(sys.argv[1:])
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return main(sys.argv[1:])
    finally:
        profiler.disable()
        index = role.partition("/")[0]
        profiler.dump_stats(str(Path(target) / f"worker-{index}-{os.getpid()}.prof"))


if __name__ == "__main__":
    sys.exit(run())
