"""wrk, the HTTP load generator written in C, as the comparison benchmark drives it.

eventbus and the bare aiohttp echo are both measured with it, so that neither side's
numbers are those of a Python client. wrk is installed from the system's packages when
missing (:func:`bench.peers.ensure_installed`). Two Lua scripts beside this module say what
it sends:

- ``wrk_request.lua``: one request (method, headers, and a body read from a file written
  beforehand) sent over and over; built once per thread, so wrk runs no Lua per request.
- ``wrk_group_fetch.lua``: consumer-group fetches, one member per thread that carries its
  ``member_id`` from answer to answer and joins a new group when it has read everything;
  it reports the bytes of the answers that held records.

:func:`parse_wrk` reads wrk's own summary (``--latency``), plus the ``bench NAME VALUE``
lines a script's ``done()`` prints.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import ensure_installed

HERE = Path(__file__).resolve().parent
REQUEST_SCRIPT = HERE / "wrk_request.lua"
GROUP_FETCH_SCRIPT = HERE / "wrk_group_fetch.lua"
# A request slower than this counts as a timeout error rather than a latency.
TIMEOUT = "10s"

_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_SUMMARY = re.compile(
    r"^\s*(?P<requests>\d+) requests in (?P<time>[\d.]+)(?P<unit>us|ms|s|m|h), "
    r"(?P<size>[\d.]+)(?P<size_unit>[KMGT]?B) read\s*$",
    re.MULTILINE,
)
_PERCENTILE = re.compile(r"^\s*(?P<share>\d+)%\s+(?P<time>[\d.]+)(?P<unit>us|ms|s|m|h)\s*$", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_COUNTER = re.compile(r"^bench (\w+) (\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class WrkRun:
    """What one run of wrk reports."""

    requests: int
    seconds: float
    bytes_read: int
    #: Socket errors (connect, read, write, timeout) and answers other than 2xx or 3xx.
    errors: int
    p50_ms: float
    p99_ms: float
    #: The ``bench NAME VALUE`` lines of the script's ``done()``.
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(text: str) -> WrkRun:
    """The numbers of wrk's output (run with ``--latency``); a ValueError if it has none."""
    summary = _SUMMARY.search(text)
    if summary is None:
        raise ValueError(f"no summary in wrk's output: {text[-300:]!r}")
    percentiles = {
        int(m["share"]): float(m["time"]) * _TIME_MS[m["unit"]] for m in _PERCENTILE.finditer(text)
    }
    sockets = _SOCKET_ERRORS.search(text)
    statuses = _NON_2XX.search(text)
    errors = sum(int(n) for n in sockets.groups()) if sockets else 0
    errors += int(statuses[1]) if statuses else 0
    return WrkRun(
        requests=int(summary["requests"]),
        seconds=float(summary["time"]) * _TIME_MS[summary["unit"]] / 1e3,
        bytes_read=round(float(summary["size"]) * _SIZE[summary["size_unit"]]),
        errors=errors,
        p50_ms=percentiles.get(50, 0.0),
        p99_ms=percentiles.get(99, 0.0),
        counters={m[1]: int(m[2]) for m in _COUNTER.finditer(text)},
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str,
    script: Path,
    script_args: Sequence[str],
    *,
    connections: int,
    threads: int,
    seconds: float,
) -> tuple[WrkRun, float]:
    """Run wrk against ``url`` for ``seconds``; its numbers and the CPU seconds it used."""
    ensure_installed("wrk", "wrk")
    command = [
        shutil.which("wrk") or "wrk",
        *("--threads", str(threads), "--connections", str(connections)),
        *("--duration", f"{seconds:g}s", "--timeout", TIMEOUT, "--latency"),
        *("--script", str(script), url, "--", *script_args),
    ]
    before = _children_cpu_s()
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    cpu = _children_cpu_s() - before
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    return parse_wrk(done.stdout), cpu


def version() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk: not installed"
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()[:1]
    return first[0].split(" [")[0].strip() if first else "wrk"
