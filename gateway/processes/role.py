"""What the supervisor (``gateway/processes/supervisor.py``) and each worker process of
``eventbus serve --workers N`` agree on: the worker's role, told through its environment;
the words said on the pipes between them; where their sockets and lock files go; and how
long each step of a start or a stop may take.

Kept apart from everything else so that the supervisor, which serves nothing, starts its
workers without loading the whole server first.
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

# Worker 0 runs the once-per-server work (see gateway/processes/topology.py).
LEADER = 0

RUN_DIR = "run"
# What a worker says on its control pipe, and what the supervisor says on its stdin.
READY, DRAINED, CLOSE = b"ready", b"drained", b"close"
# How long workers get to finish their requests, then to close their partitions.
DRAIN_TIMEOUT_S = 40.0
CLOSE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0


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
