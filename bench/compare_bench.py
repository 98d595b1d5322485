"""Comparison benchmark: eventbus against Redis Streams, RabbitMQ Streams and bare aiohttp.

Run with ``make bench`` (or ``python -m bench.compare_bench --output docs/benchmarks.md``).

In one run, on this machine, one system after another:

1. a bare aiohttp server (:mod:`bench.echo_server`): single-record requests from 64
   concurrent clients, then at a fixed 1,000 requests/s: the ceiling for small requests;
2. ``eventbus serve`` (one process, its defaults: every produce answered after its fsync),
   topics of one partition with autoscaling off: produce of 1 KiB records in batches of
   1000 (JSON and binary), partition reads and group fetches of the records produced
   (JSON and binary), single-record produce from 64 concurrent clients and at a fixed
   1,000 requests/s, and end-to-end latency to a long-polling group member at 1,000
   records/s;
3. Redis Streams (``XADD`` pipelined 1000 at a time under ``appendfsync always``, then
   ``XRANGE`` of the same entries) and RabbitMQ Streams (rstream ``send_batch`` of 1000
   with publish confirms, then a consumer from the first offset), each installed when
   missing, on loopback, and stopped after (:mod:`bench.peers`), with the same record size
   and count as ours.

Every case runs ``--runs`` times (at least 3; the runs of one system take turns between
its cases) and the median is reported with every run's value. Load comes from separate
processes (:mod:`bench.http_load`, :mod:`bench.peer_load`), each reporting the CPU it
used, next to the CPU of the system measured. Last, one more eventbus process runs
under cProfile while single-record produce saturates it: where its time goes, by area.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench.http_bench import ROOT, Server, _children, _cpu_seconds, listening_url
from bench.peers import PeerUnavailableError, RabbitStreamPeer, RedisPeer
from bench.report import machine_description, publish
from bench.workers_bench import _area, _attributed, _short
from gateway.client import AsyncClient

RECORDS = 100_000
BATCH = 1000
RATE = 1000
SINGLE_CLIENTS = 64
BATCH_CLIENTS = 4
READERS = 4
EVENTBUS = "eventbus"
ECHO = "bare aiohttp"
REDIS = "Redis Streams"
RABBIT = "RabbitMQ Streams"
LOAD_BEFORE = os.getloadavg()
COMMAND = "make bench  # runs python -m bench.compare_bench --output docs/benchmarks.md"


@dataclass(frozen=True)
class Case:
    """One row: what a system does, measured ``--runs`` times."""

    key: str
    system: str
    label: str


BATCHED = [
    Case("produce-json", EVENTBUS, "eventbus, JSON, 4 requests in flight"),
    Case("produce-binary", EVENTBUS, "eventbus, binary, 4 requests in flight"),
    Case("redis-produce", REDIS, "Redis Streams `XADD`, one pipeline of 1000 at a time"),
    Case("rabbit-produce", RABBIT, "RabbitMQ Streams `send_batch` of 1000, confirms"),
]
CONSUME = [
    Case("read-json", EVENTBUS, "eventbus partition read, JSON, 4 readers"),
    Case("read-binary", EVENTBUS, "eventbus partition read, binary, 4 readers"),
    Case("fetch-json", EVENTBUS, "eventbus group fetch, JSON, 4 members of own groups"),
    Case("fetch-binary", EVENTBUS, "eventbus group fetch, binary, 4 members of own groups"),
    Case("redis-consume", REDIS, "Redis Streams `XRANGE` of 1000 at a time"),
    Case("rabbit-consume", RABBIT, "RabbitMQ Streams consumer from the first offset"),
]
SINGLE = [
    Case("single", EVENTBUS, "eventbus produce, JSON, 1 record"),
    Case("echo", ECHO, "bare aiohttp `POST /echo`, the same body"),
]
PACED = [
    Case("paced", EVENTBUS, "eventbus produce, JSON, 1 record"),
    Case("echo-paced", ECHO, "bare aiohttp `POST /echo`, the same body"),
]
E2E = [Case("e2e", EVENTBUS, "eventbus: JSON produce, binary long-poll group fetch")]


@dataclass
class Results:
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


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _load(command: list[str], cpu: Callable[[], float], timeout_s: float) -> dict[str, Any]:
    """Run one load process; its result with the measured system's CPU s/s and its own."""
    before = cpu()
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        check=False,
        env=_env(),
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.decode(errors='replace')[-800:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    wall = result["seconds"]
    result["server_cpu"] = (cpu() - before) / wall
    result["load_cpu"] = result["load_cpu_s"] / wall
    return result


def http_load(url: str, key: str, cpu: Callable[[], float], *args: str) -> dict[str, Any]:
    result = _load(["bench.http_load", "--url", url, "--key", key, *args], cpu, 300)
    counted = "requests" if "--batch" in args and args[args.index("--batch") + 1] == "1" else ""
    result["rate"] = result[counted or "records"] / result["seconds"]
    return result


def peer_load(port: int, cpu: Callable[[], float], *args: str) -> dict[str, Any]:
    result = _load(["bench.peer_load", "--port", str(port), *args], cpu, 300)
    result["rate"] = result["records"] / result["seconds"]
    return result


def tree_cpu(pid: int) -> Callable[[], float]:
    return lambda: sum(_cpu_seconds(p) for p in [pid, *_children(pid)])


class EchoServer:
    """:mod:`bench.echo_server` as a child process on a free loopback port."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.echo_server"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env=_env(),
        )
        self.url = listening_url(self.process, "echo listening on ", 30, self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _single_args(seconds: float) -> list[str]:
    return ["--format", "json", "--batch", "1", "--client", "raw", "--seconds", f"{seconds:g}"]


def measure_echo(results: Results, runs: int, seconds: float) -> None:
    echo = EchoServer()
    cpu = tree_cpu(echo.process.pid)
    try:
        for _ in range(runs):
            closed = ["--concurrency", str(SINGLE_CLIENTS)]
            args = ["--scenario", "echo", "--topic", "-", *_single_args(seconds), *closed]
            results.add("echo", http_load(echo.url, "none", cpu, *args))
            paced = ["--rate", str(RATE)]
            args = ["--scenario", "echo", "--topic", "-", *_single_args(seconds), *paced]
            results.add("echo-paced", http_load(echo.url, "none", cpu, *args))
    finally:
        echo.stop()


async def _create_topics(server: Server, names: list[str]) -> None:
    # One partition that stays one: the autoscaler would split it under this load.
    async with AsyncClient(server.url, server.key) as client:
        for name in names:
            await client.create_topic(name, {"autoscale": {"enabled": False}})


def measure_eventbus(results: Results, scratch: Path, runs: int, seconds: float) -> None:
    server = Server(scratch / "data")
    cpu = server.cpu_seconds
    kinds = ("produce-json", "produce-binary", "single", "paced", "e2e")
    asyncio.run(_create_topics(server, [f"{kind}-{n}" for kind in kinds for n in range(runs)]))
    filled = "produce-json-0"  # the reads and fetches consume the first run's records

    def load(key: str, *args: str) -> None:
        results.add(key, http_load(server.url, server.key, cpu, *args))

    try:
        for n in range(runs):
            for fmt in ("json", "binary"):
                load(
                    f"produce-{fmt}",
                    *("--scenario", "produce", "--format", fmt, "--topic", f"produce-{fmt}-{n}"),
                    *("--batch", str(BATCH), "--concurrency", str(BATCH_CLIENTS)),
                    *("--records", str(RECORDS), "--seconds", "120", "--client", "raw"),
                )
            for scenario in ("read", "fetch"):
                for fmt in ("json", "binary"):
                    load(
                        f"{scenario}-{fmt}",
                        *("--scenario", scenario, "--format", fmt, "--topic", filled),
                        *("--batch", str(BATCH), "--concurrency", str(READERS)),
                        *("--seconds", f"{seconds:g}", "--count-only"),
                    )
            load(
                "single",
                *("--scenario", "produce", "--topic", f"single-{n}", *_single_args(seconds)),
                *("--concurrency", str(SINGLE_CLIENTS)),
            )
            load(
                "paced",
                *("--scenario", "produce", "--topic", f"paced-{n}", *_single_args(seconds)),
                *("--rate", str(RATE)),
            )
            load(
                "e2e",
                *("--scenario", "e2e", "--topic", f"e2e-{n}", *_single_args(seconds)),
                *("--rate", str(RATE)),
            )
    finally:
        server.stop()


def measure_peer(results: Results, peer: RedisPeer | RabbitStreamPeer, runs: int) -> None:
    """Start a peer, run its produce and consume ``runs`` times through ``bench.peer_load``
    (each run on a stream of its own), and stop it; a peer that fails is reported so."""
    if isinstance(peer, RedisPeer):
        name, product, kind = REDIS, "redis-server", "redis"
    else:
        name, product, kind = RABBIT, "RabbitMQ", "rabbit"
    try:
        peer.start()
        results.versions[name] = f"{product} {peer.version()}"
        port = peer.port if isinstance(peer, RedisPeer) else peer.stream_port
        cpu = tree_cpu(peer.process.pid) if peer.process else (lambda: 0.0)
        for n in range(runs):
            for op in ("produce", "consume"):
                args = ["--peer", kind, "--op", op, "--records", str(RECORDS)]
                args += ["--batch", str(BATCH), "--stream", f"bench-{n}"]
                results.add(f"{kind}-{op}", peer_load(port, cpu, *args))
    except (PeerUnavailableError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        results.failures[name] = str(exc)
        print(f"{name}: {exc}", flush=True)
    finally:
        peer.stop()


def profile(scratch: Path, seconds: float) -> tuple[pstats.Stats, dict[str, Any]]:
    """Single-record produce at saturation against one eventbus process under cProfile."""
    directory = scratch / "profile"
    directory.mkdir()
    server = Server(
        scratch / "data-profiled",
        module="bench.profiled_serve",
        env={"BENCH_PROFILE_DIR": str(directory)},
    )
    try:
        asyncio.run(_create_topics(server, ["single"]))
        result = http_load(
            server.url,
            server.key,
            server.cpu_seconds,
            *("--scenario", "produce", "--topic", "single", *_single_args(seconds)),
            *("--concurrency", str(SINGLE_CLIENTS)),
        )
    finally:
        server.stop()
    files = sorted(str(p) for p in directory.glob("*.prof"))
    if not files:
        raise RuntimeError("the profiled server wrote no statistics")
    return pstats.Stats(*files), result


# --- the report ---------------------------------------------------------------------------


def _git_commit() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    done = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _table(
    results: Results, cases: list[Case], header: list[str], cells: Callable[[Case], list[str]]
) -> list[str]:
    """A Markdown table: ``header``, then a row of ``cells`` per case that was measured, or
    one saying why it was not."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for case in cases:
        if results.runs.get(case.key):
            lines.append("| " + " | ".join(cells(case)) + " |")
            continue
        why = results.failures.get(case.system)
        missing = "not measured" + (f": {why}" if why else "")
        lines.append(f"| {case.label} | {missing} |" + " |" * (len(header) - 2))
    return lines


def _rate_table(results: Results, cases: list[Case], unit: str) -> list[str]:
    def cells(case: Case) -> list[str]:
        runs = results.runs[case.key]
        p99 = results.median(case.key, "p99_ms") if "p99_ms" in runs[0] else None
        return [
            case.label,
            f"**{_num(results.median(case.key) or 0)}**",
            " / ".join(_num(r["rate"]) for r in runs),
            "-" if p99 is None else f"{p99:.1f}",
            f"{results.median(case.key, 'server_cpu') or 0:.2f}",
            f"{results.median(case.key, 'load_cpu') or 0:.2f}",
        ]

    header = ["system and client", f"median {unit}", "every run"]
    header += ["p99 ms of a request (median)", "system CPU s/s", "load CPU s/s"]
    return _table(results, cases, header, cells)


def _latency_table(results: Results, cases: list[Case], unit: str) -> list[str]:
    def cells(case: Case) -> list[str]:
        runs = results.runs[case.key]
        return [
            case.label,
            _num(results.median(case.key) or 0),
            f"{results.median(case.key, 'p50_ms') or 0:.2f}",
            f"**{results.median(case.key, 'p99_ms') or 0:.2f}**",
            " / ".join(f"{r['p99_ms']:.2f}" for r in runs),
            str(sum(r["errors"] for r in runs)),
            f"{results.median(case.key, 'server_cpu') or 0:.2f}",
            f"{results.median(case.key, 'load_cpu') or 0:.2f}",
        ]

    header = ["system and client", f"achieved {unit}", "median p50 ms", "median p99 ms"]
    header += ["every run's p99 ms", "errors", "system CPU s/s", "load CPU s/s"]
    return _table(results, cases, header, cells)


def _ratio_target(
    results: Results, name: str, ours: str, theirs: str, at_least: float
) -> tuple[str, float | None]:
    mine, other = results.median(ours), results.median(theirs)
    if mine is None or other is None:
        return f"- {name}: not measured (a system failed, see above)", None
    ratio = mine / other
    verdict = "met" if ratio >= at_least else "**NOT met**"
    line = (
        f"- {name}: target {at_least:g}x, measured **{ratio:.2f}x** "
        f"({_num(mine)} against {_num(other)}) -> {verdict}"
    )
    return line, ratio


def _latency_target(results: Results, name: str, key: str, below_ms: float) -> str:
    p99 = results.median(key, "p99_ms")
    if p99 is None:
        return f"- {name}: not measured"
    verdict = "met" if p99 < below_ms else "**NOT met**"
    return f"- {name}: target p99 < {below_ms:g} ms, measured **{p99:.2f} ms** -> {verdict}"


def targets(results: Results) -> list[str]:
    lines = [
        _ratio_target(
            results,
            "Batched durable produce, JSON, against Redis Streams `XADD` (appendfsync always)",
            "produce-json",
            "redis-produce",
            1.5,
        )[0],
        _ratio_target(
            results,
            "Batched durable produce, JSON, against RabbitMQ Streams batch publish",
            "produce-json",
            "rabbit-produce",
            1.0,
        )[0],
        _ratio_target(
            results,
            "Consume, binary partition read, against RabbitMQ Streams consume",
            "read-binary",
            "rabbit-consume",
            1.0,
        )[0],
        _ratio_target(
            results,
            "Consume, binary group fetch, against RabbitMQ Streams consume",
            "fetch-binary",
            "rabbit-consume",
            1.0,
        )[0],
        _ratio_target(
            results,
            "Single-record produce against the bare aiohttp echo, requests/s",
            "single",
            "echo",
            0.6,
        )[0],
        _latency_target(results, "Single-record produce at 1,000 requests/s", "paced", 5),
        _latency_target(results, "End-to-end, produce to long-polling member", "e2e", 10),
    ]
    return lines


def _bottlenecks(results: Results) -> list[str]:
    busy = []
    for key, runs in results.runs.items():
        load = statistics.median(r["load_cpu"] for r in runs)
        if load >= 0.8:
            busy.append(f"{key} ({load:.2f})")
    highest = max(
        (statistics.median(r["load_cpu"] for r in runs) for runs in results.runs.values()),
        default=0.0,
    )
    if not busy:
        return [
            f"No load process used more than {highest:.2f} CPU s/s (of its one core): the",
            "load generators were not the limit in any case.",
        ]
    return [
        f"Load processes at 0.8 CPU s/s or more, which may share the limit: {', '.join(busy)}.",
    ]


def profile_lines(stats: pstats.Stats, profiled: dict[str, Any]) -> list[str]:
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    requests = max(int(profiled["requests"]), 1)
    by_area = _attributed(raw)
    lines = [
        "One more eventbus process, under cProfile (`bench/profiled_serve.py`, its event",
        "loop's thread CPU time), under the single-record produce load for "
        f"{profiled['seconds']:.0f} s:",
        f"{_num(profiled['rate'])} requests/s under the profiler (its own cost is several",
        f"times the code's), {total:.2f} CPU s profiled, {total / requests * 1e6:,.0f} us of",
        "the loop's CPU per request under it: read the shares, not the microseconds. The",
        "log's writer and fsync thread and the kernel's socket work are outside these",
        "shares; built-ins count for the areas of their callers.",
        "",
        "| area | share of the loop's CPU | us per request |",
        "| --- | --- | --- |",
    ]
    for area, own in sorted(by_area.items(), key=lambda item: -item[1]):
        lines.append(f"| {area} | {own / total:.0%} | {own / requests * 1e6:,.0f} |")
    lines += [
        "",
        "The functions with the most time of their own:",
        "",
        "| share | function | area |",
        "| --- | --- | --- |",
    ]
    top = sorted(raw.items(), key=lambda item: -item[1][2])[:12]
    for (filename, line, function), entry in top:
        where = function if filename == "~" else f"{_short(filename)}:{line} {function}"
        where = where.replace("|", "/")
        lines.append(f"| {entry[2] / total:.1%} | `{where}` | {_area(filename, function)} |")
    others: dict[str, float] = {}
    for (filename, _line, function), entry in raw.items():
        if filename != "~" and _area(filename, function) == "other":
            name = _short(filename)
            others[name] = others.get(name, 0.0) + entry[2]
    biggest = sorted(others.items(), key=lambda item: -item[1])[:5]
    named = ", ".join(f"`{name}` {own / total:.1%}" for name, own in biggest)
    lines += ["", f"*Other* is mostly, by file: {named}."]
    return lines


def profile_reading(results: Results, stats: pstats.Stats) -> list[str]:
    """What the profile and the tables say about single-record produce, with this run's
    numbers (the reading itself was written from the profile of such a run)."""
    ours, echo = results.median("single"), results.median("echo")
    ours_cpu = results.median("single", "server_cpu")
    echo_cpu = results.median("echo", "server_cpu")
    paced_cpu = results.median("paced", "server_cpu") or 0.0
    if not (ours and echo and ours_cpu and echo_cpu):
        return []
    per_ours, per_echo = ours_cpu / ours * 1e6, echo_cpu / echo * 1e6
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    share = {area: own / total for area, own in _attributed(raw).items()}
    shutdown = sum(
        entry[2] for (f, _l, fn), entry in raw.items() if fn == "_on_cleanup" and "aiohttp" in f
    )
    target = 0.6 * echo
    top_own = max((entry[2] for entry in raw.values()), default=0.0) / total

    def pct(area: str) -> str:
        return f"{share.get(area, 0.0):.0%}"

    return [
        "What this says, with the numbers of this run:",
        "",
        f"- Without the profiler, eventbus spent **{per_ours:,.0f} us of CPU per single-record"
        f" request** (system CPU s/s over requests/s above) where bare aiohttp spent"
        f" {per_echo:,.0f} us: what aiohttp itself costs is {per_echo / per_ours:.0%} of"
        " ours, and eventbus is bound by its one core (system CPU near 1.0) while its load"
        " process has time to spare.",
        f"- By area of the event loop's CPU: aiohttp's HTTP handling"
        f" {pct('HTTP server: aiohttp parsing and answers')} (of which {shutdown / total:.1%},"
        " aiohttp's `_on_cleanup`, is the server's shutdown, not requests), the produce path"
        " (handler, broker,"
        f" idempotency table) {pct('produce path: broker, routing by key, idempotency')}, the"
        " per-request layers around it (auth, tenancy, quotas, metrics, request logs)"
        f" {pct('auth, tenancy, metrics, request logs')}, decoding the body and encoding the"
        f" batch {pct('request body: batch decode, record and batch encode')}, and the log's"
        f" append with its group-commit hand-off only"
        f" {pct('partition log: append, group commit hand-off')}: the disk is not the limit"
        " at 64 clients, Python work per request is. No function takes more than"
        f" {top_own:.1%} of the loop on its own: the cost is spread over many small steps, each"
        " paid once per request.",
        f"- 60% of the echo is {target:,.0f} requests/s, about {1e6 / target:,.0f} us of CPU per"
        " request on one core. What is left is spread over aiohttp's own request handling,"
        " the two middlewares (the request's id, log, metrics and error answer; the tenant"
        " gate's key, metering, scope, quotas and fair scheduler), the produce path with its"
        " idempotency entry and producer tag, and the hand-off to the log's writer thread and"
        " back: a several-fold cut, i.e. an idempotency entry and tag made without per-request"
        " allocation, appends handed to the writer without a future and thread wake-up each,"
        " and less work per request in each layer, plus `--workers` on machines with cores to"
        " spare, is what would close it; no single fix will.",
        f"- At a fixed 1,000 requests/s the one process is {paced_cpu:.0%} busy; what queues"
        " behind a request there is that same per-request work of the others.",
    ]


def report(
    args: argparse.Namespace,
    scratch: Path,
    results: Results,
    profiled: tuple[pstats.Stats, dict[str, Any]] | None,
    took_s: float,
) -> list[str]:
    versions = [
        f"- eventbus {metadata.version('eventbus')} (commit {_git_commit()}); "
        f"{results.versions.get(REDIS, 'redis-server: not started')}; "
        f"{results.versions.get(RABBIT, 'RabbitMQ: not started')}",
    ]
    failures = [f"- **{system} failed**: {why}" for system, why in results.failures.items()]
    lines = [
        "## Comparison with Redis Streams, RabbitMQ Streams and a bare aiohttp server",
        "",
        f"Command: `{COMMAND}`",
        f"(the whole comparison took {took_s / 60:.1f} minutes)",
        "",
        "Machine and versions:",
        "",
        *machine_description(
            scratch, ("aiohttp", "uvloop", "orjson", "redis", "rstream")
        ),  # redis = redis-py
        *versions,
        f"- load average of the machine before the run: {LOAD_BEFORE[0]:.2f} (other work on",
        "  the same cores moves every number, the peers' as much as ours)",
        *failures,
        "",
        "Every system runs on this machine, bound to 127.0.0.1, one after the other; every",
        f"case ran {args.runs} times (a system's cases take turns) and each table gives the",
        "median and every run. Records are 1 KiB (key and value). Load comes from a separate",
        "process per run (`bench/http_load.py` for eventbus and the bare aiohttp server, with",
        "the same minimal keep-alive HTTP/1.1 client for both; `bench/peer_load.py` for the",
        "peers), which reports the CPU it used while the clock ran: *load CPU s/s*. *System",
        "CPU s/s* is the measured server's (every process of it). The machine's cores are",
        "shared by the system and its load, so a column near 1.0 marks the one-core limit.",
        "",
        "- eventbus: `eventbus serve --workers 0` (one process, uvloop, TLS off), each produce",
        "  answered after its fsync (group commit); topics of one partition with autoscaling",
        "  off; every produce request carries its own `Idempotency-Key`, as the client sends.",
        "- Redis: `appendonly yes`, `appendfsync always` (an answer after the fsync of its",
        "  event-loop turn, so one pipeline shares one fsync); redis-py pipelines, no transaction.",
        "- RabbitMQ: a node of its own with the `rabbitmq_stream` plugin; rstream producer",
        "  (confirms awaited for every message) and consumer (credit 32, from the first offset).",
        "- Bare aiohttp: `bench/echo_server.py`, one `POST /echo` that reads the body and answers",
        '  `{"ok":true}`, on uvloop like eventbus.',
        "",
        f"### Batched produce: {RECORDS:,} records of 1 KiB per run, {BATCH} per request",
        "",
        *_rate_table(results, BATCHED, "records/s"),
        "",
        f"### Consume the same {RECORDS:,} records",
        "",
        f"eventbus reads the {RECORDS:,} records of its first JSON produce run, over and over",
        f"for {args.seconds:g} s (4 loops, up to 1000 records and 2 MiB a request); binary",
        "readers count records from the batch headers, and JSON readers parse the body with",
        "orjson. Redis and RabbitMQ read the entries produced by the same run number, once.",
        "The clients differ: eventbus's are 4 concurrent loops that do not decode binary",
        "records, the peers' are one client each that decodes every entry (see the load CPU",
        "column), so these ratios compare the systems as these clients use them.",
        "",
        *_rate_table(results, CONSUME, "records/s"),
        "",
        f"### Single-record produce, {SINGLE_CLIENTS} concurrent clients, {args.seconds:g} s",
        "",
        *_rate_table(results, SINGLE, "requests/s"),
        "",
        f"### Single-record produce at a fixed {RATE:,} requests/s, {args.seconds:g} s",
        "",
        "An open loop: a request is sent when due whatever earlier ones are doing, and its",
        "latency counts from when it was due.",
        "",
        *_latency_table(results, PACED, "requests/s"),
        "",
        f"### End-to-end: produce to a long-polling group member, {RATE:,} records/s",
        "",
        "One record per produce request, its value starting with its send time; a group",
        "member joined at the end of the topic fetches with `wait_ms` and takes receive time",
        f"minus send time for each record ({args.seconds:g} s of production per run).",
        "",
        *_latency_table(results, E2E, "records/s produced"),
        "",
        "### Targets (issue 13), as ratios of medians in this run",
        "",
        *targets(results),
        "",
        *_bottlenecks(results),
        "",
    ]
    if profiled is not None:
        stats, result = profiled
        lines += [
            "### Where single-record produce spends its time",
            "",
            *profile_lines(stats, result),
            "",
            *profile_reading(results, stats),
            "",
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the report section here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    parser.add_argument("--runs", type=int, default=3, help="runs of every case (at least 3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of timed cases")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("a median needs at least 3 runs")
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="compare-bench-", dir=args.dir))
    started = time.monotonic()
    results = Results()
    try:
        measure_echo(results, args.runs, args.seconds)
        measure_eventbus(results, scratch, args.runs, args.seconds)
        measure_peer(results, RedisPeer(scratch / "redis"), args.runs)
        measure_peer(results, RabbitStreamPeer(scratch / "rabbit"), args.runs)
        profiled = None if args.no_profile else profile(scratch, args.seconds + 2)
        # Every run's numbers, kept next to the report for whoever wants to recompute.
        (args.dir / "compare-results.json").write_bytes(orjson.dumps(results.runs))
        lines = report(args, scratch, results, profiled, time.monotonic() - started)
        publish(lines, args.output, "compare")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
