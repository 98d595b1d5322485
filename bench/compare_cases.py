"""The cases of the comparison benchmark, each naming its system and the client that drove
it, and the results of their runs (:mod:`bench.compare_bench` measures, and
:mod:`bench.compare_report` writes the tables)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

RECORD_BYTES = 1024
BATCH = 1000
RATE = 1000
SINGLE_CLIENTS = 64
BATCH_CLIENTS = 4
READERS = 4
RABBIT_PROCESSES = 4
WORKER_MODES = (0, 2)
# The topic that eventbus's reads and fetches consume, filled in batches of BATCH.
FILL_RECORDS = 200_000
# Per RabbitMQ producer process; each consumer process reads what all of them wrote.
RABBIT_RECORDS = 50_000
# (clients, pipeline) of redis-benchmark for XADD: few clients with deep pipelines, and
# many with shallower ones; the better of the two is Redis at its best.
REDIS_SETTINGS = ((4, 1000), (50, 64))
# XRANGE answers are 1000 entries (1 MiB) each: pipelining them gains nothing, so the
# two settings differ in clients only.
REDIS_READERS = (4, 50)

EVENTBUS = "eventbus"
ECHO = "bare aiohttp"
REDIS = "Redis Streams"
RABBIT = "RabbitMQ Streams"
WRK_BATCH = f"wrk {BATCH_CLIENTS} connections"
WRK_SINGLE = f"wrk {SINGLE_CLIENTS} connections"
OUR_TOOL = "`bench/http_load.py` (Python, ours)"
RBFLY = f"rbfly (a Python client), {RABBIT_PROCESSES} processes"


@dataclass(frozen=True)
class Case:
    """One row: what a system does and which client drove it, measured ``--runs`` times."""

    key: str
    system: str
    label: str


def mode(workers: int) -> str:
    return f"eventbus `--workers {workers}`"


def _ours(kind: str, label: str) -> list[Case]:
    """One case of eventbus per worker mode: keys ``KIND-wN``."""
    return [Case(f"{kind}-w{w}", EVENTBUS, f"{mode(w)}, {label}") for w in WORKER_MODES]


def redis_xadd(clients: int, pipeline: int) -> Case:
    how = f"-c {clients} -P {pipeline}" if pipeline > 1 else f"-c {clients}, no pipeline"
    return Case(
        f"redis-xadd-{clients}x{pipeline}", REDIS, f"Redis `XADD` via redis-benchmark {how}"
    )


def redis_xrange(clients: int) -> Case:
    label = f"Redis `XRANGE s - + COUNT 1000` via redis-benchmark -c {clients}"
    return Case(f"redis-xrange-{clients}", REDIS, label)


BATCHED = [
    *_ours("produce-json", f"JSON, via {WRK_BATCH}"),
    *_ours("produce-binary", f"binary batch, via {WRK_BATCH}"),
    *[redis_xadd(c, p) for c, p in REDIS_SETTINGS],
    Case("rabbit-produce", RABBIT, f"RabbitMQ Streams via {RBFLY}, batches of 1000 confirmed"),
]
CONSUME = [
    *_ours("read-binary", f"partition read, binary, via {WRK_BATCH}"),
    *_ours("fetch-binary", f"group fetch, binary, via {WRK_BATCH} (a member each, Lua)"),
    *[redis_xrange(c) for c in REDIS_READERS],
    Case("rabbit-consume", RABBIT, f"RabbitMQ Streams via {RBFLY}, from the first offset"),
]
SINGLE = [
    *_ours("single", f"produce, JSON, 1 record, via {WRK_SINGLE}"),
    Case("echo", ECHO, f"bare aiohttp `POST /echo`, the same body, via {WRK_SINGLE}"),
    redis_xadd(SINGLE_CLIENTS, 1),
]
PACED = [
    *_ours("paced", f"produce, JSON, 1 record, via {OUR_TOOL}"),
    Case("echo-paced", ECHO, f"bare aiohttp `POST /echo`, the same body, via {OUR_TOOL}"),
]
E2E = _ours("e2e", f"JSON produce, binary long-poll group fetch, via {OUR_TOOL}")


@dataclass
class Results:
    """Every run of every case: a dict with at least ``rate`` (per second), ``server_cpu``
    and ``load_cpu`` (CPU seconds per second of the system and of its load)."""

    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, result: dict[str, Any]) -> None:
        self.runs.setdefault(key, []).append(result)
        rate = result["rate"]
        print(f"{key}: {rate:,.0f}/s p99 {result.get('p99_ms', 0):.1f} ms", flush=True)

    def median(self, key: str, name: str = "rate") -> float | None:
        runs = self.runs.get(key)
        return statistics.median(r[name] for r in runs) if runs else None

    def best(self, keys: list[str]) -> str | None:
        """The key of the case with the highest median rate among ``keys``."""
        measured = [(self.median(k) or 0.0, k) for k in keys if self.runs.get(k)]
        return max(measured)[1] if measured else None
