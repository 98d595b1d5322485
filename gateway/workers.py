"""Which worker process this is: what the supervisor (``gateway/supervisor.py``) tells each
worker of ``eventbus serve --workers N`` through its environment.

Kept apart from ``gateway/cluster.py`` so that the supervisor, which serves nothing, starts
its workers without loading the whole server first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# How the supervisor tells a worker process what it is.
ROLE_ENV = "EVENTBUS_WORKER"  # "INDEX/COUNT"
RUN_DIR_ENV = "EVENTBUS_WORKER_RUN_DIR"
PORT_ENV = "EVENTBUS_WORKER_PORT"
CONTROL_FD_ENV = "EVENTBUS_WORKER_CONTROL_FD"

# Worker 0 runs the once-per-server work (see gateway/cluster.py).
LEADER = 0


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which worker process this is, of how many, and where their sockets are."""

    index: int
    count: int
    run_dir: Path
    control_fd: int | None = None
    port: int | None = None

    @property
    def leader(self) -> bool:
        return self.index == LEADER

    def channel_path(self, worker: int) -> Path:
        return self.run_dir / f"worker-{worker}.sock"

    def http_path(self, worker: int) -> Path:
        return self.run_dir / f"worker-{worker}-http.sock"

    @classmethod
    def from_environment(cls) -> WorkerRole | None:
        role = os.environ.get(ROLE_ENV)
        if not role:
            return None
        index, _, count = role.partition("/")
        control = os.environ.get(CONTROL_FD_ENV)
        port = os.environ.get(PORT_ENV)
        return cls(
            index=int(index),
            count=int(count),
            run_dir=Path(os.environ[RUN_DIR_ENV]),
            control_fd=int(control) if control else None,
            port=int(port) if port else None,
        )
