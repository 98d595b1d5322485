"""Redis Streams driven by ``redis-benchmark``, Redis's own load generator in C.

The comparison benchmark measures Redis (``appendfsync always``, :class:`bench.peers.RedisPeer`)
with the tool its authors ship, never with a Python client of ours. ``redis-benchmark`` runs
an arbitrary command (``redis-benchmark -c C -P P -n N XADD stream * v VALUE``) a fixed
number of times, so :func:`sized` first runs a short probe of the same command, for as
many requests as take about ``seconds`` at the probe's rate. ``--csv`` makes it
print one line per command: requests/s and latency percentiles (:func:`parse_csv`).

Between runs, :func:`drop_stream` deletes a stream and rewrites the append-only file, so
that the disk holds one run's entries at a time.
"""

from __future__ import annotations

import csv
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.peers import ensure_installed

# The probe: enough requests to get past connection set-up, few enough to be quick.
PROBE_SECONDS = 0.5


@dataclass(frozen=True)
class RedisRun:
    """What one run of ``redis-benchmark --csv`` reports for its command."""

    rate: float
    p50_ms: float
    p99_ms: float


def parse_csv(text: str) -> RedisRun:
    """The numbers of ``redis-benchmark --csv`` output (one command); a ValueError if none.

    The first column names the command as given, with its quotes not escaped, so the
    numbers are taken from the right of the line."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next(csv.reader(lines[:1]), [])
    if len(lines) < 2 or "rps" not in header:
        raise ValueError(f"no result in redis-benchmark's output: {text[-300:]!r}")
    numbers = lines[-1].rsplit(",", len(header) - 1)[1:]
    row = {name: float(value.strip('"')) for name, value in zip(header[1:], numbers, strict=True)}
    return RedisRun(
        rate=row["rps"],
        p50_ms=row.get("p50_latency_ms", 0.0),
        p99_ms=row.get("p99_latency_ms", 0.0),
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tool(name: str) -> str:
    ensure_installed(name, "redis-tools")
    return shutil.which(name) or name


def run(
    port: int, command: Sequence[str], *, clients: int, pipeline: int, requests: int
) -> tuple[RedisRun, float, float]:
    """Run ``command`` ``requests`` times: its numbers, the wall seconds and the CPU
    seconds that redis-benchmark used."""
    args = [_tool("redis-benchmark"), "-h", "127.0.0.1", "-p", str(port)]
    args += ["-c", str(clients), "-P", str(pipeline), "-n", str(requests), "--csv", *command]
    before, started = _children_cpu_s(), time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {done.stderr[-500:]}")
    return parse_csv(done.stdout), wall, _children_cpu_s() - before


def sized(
    port: int,
    command: Sequence[str],
    *,
    clients: int,
    pipeline: int,
    seconds: float,
    guess_rate: float,
) -> int:
    """How many requests of ``command`` take about ``seconds``: a probe of about
    :data:`PROBE_SECONDS` at ``guess_rate`` requests/s, then the probe's rate."""
    probe = max(clients * pipeline, int(guess_rate * PROBE_SECONDS))
    measured, _wall, _cpu = run(port, command, clients=clients, pipeline=pipeline, requests=probe)
    return max(clients * pipeline * 2, int(measured.rate * seconds))


def cli(port: int, *command: str) -> str:
    args = [_tool("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *command]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def drop_stream(port: int, stream: str, timeout_s: float = 60) -> None:
    """Delete ``stream`` and rewrite the append-only file without it, waiting for the
    rewrite to finish (so that it does not run under the next measurement)."""
    cli(port, "DEL", stream)
    cli(port, "BGREWRITEAOF")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = cli(port, "INFO", "persistence")
        if "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info:
            return
        time.sleep(0.1)
    raise RuntimeError("Redis did not finish rewriting its append-only file")


def version() -> str:
    out = subprocess.run(
        [_tool("redis-benchmark"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.strip() or "redis-benchmark"
