"""The report of the comparison benchmark: tables of every case, each naming the system and
the client that drove it, and the targets of issue 22 as ratios of medians in one run."""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import statistics
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import wrk
from bench.compare_cases import (
    BATCH,
    BATCHED,
    CONSUME,
    E2E,
    FILL_RECORDS,
    PACED,
    RABBIT,
    RABBIT_PROCESSES,
    RABBIT_RECORDS,
    RATE,
    REDIS,
    REDIS_READERS,
    REDIS_SETTINGS,
    SINGLE,
    SINGLE_CLIENTS,
    WORKER_MODES,
    Case,
    Results,
    mode,
    redis_xadd,
    redis_xrange,
)
from bench.compare_profile import SINGLE_TARGET, profile_lines, profile_reading
from bench.http_bench import ROOT
from bench.report import machine_description

LOAD_BEFORE = os.getloadavg()
COMMAND = "make bench  # runs python -m bench.compare_bench --output docs/benchmarks.md"


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
            str(sum(r.get("errors", 0) for r in runs)),
        ]

    header = ["system and client", f"median {unit}", "every run"]
    header += ["p99 ms of a request (median)", "system CPU s/s", "load CPU s/s", "errors"]
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


def _ratio_cell(results: Results, ours: str, theirs: str | None, at_least: float) -> str:
    mine = results.median(ours)
    other = results.median(theirs) if theirs else None
    if not mine or not other:
        return "not measured"
    ratio = mine / other
    if ratio >= at_least:
        verdict = f"met, by {ratio - at_least:.2f}x"
    else:
        verdict = f"**missed** by {at_least - ratio:.2f}x: needs {at_least / ratio:.2f}x its rate"
    return f"**{ratio:.2f}x** ({_num(mine)} / {_num(other)}): {verdict}"


def _latency_cell(results: Results, key: str, below_ms: float) -> str:
    p99 = results.median(key, "p99_ms")
    if p99 is None:
        return "not measured"
    if p99 < below_ms:
        return f"**{p99:.2f} ms**: met, {below_ms - p99:.2f} ms under"
    return (
        f"**{p99:.2f} ms**: **missed** by {p99 - below_ms:.2f} ms ({p99 / below_ms:.1f}x the limit)"
    )


def _peer(results: Results, key: str | None, cases: list[Case]) -> str:
    if key is None:
        return "not measured"
    label = next(c.label for c in cases if c.key == key)
    return f"{label}: {_num(results.median(key) or 0)}"


def targets(results: Results) -> list[str]:
    """The targets of issue 22: a row per target, a column per worker mode, each cell the
    measured ratio (or p99) and by how much it met or missed the target."""
    xadd = results.best([redis_xadd(c, p).key for c, p in REDIS_SETTINGS])
    xrange = results.best([redis_xrange(c).key for c in REDIS_READERS])
    ratios = [
        ("binary batched produce vs Redis `XADD` at its best", "produce-binary", xadd, 2.0),
        ("JSON batched produce vs Redis `XADD` at its best", "produce-json", xadd, 1.2),
        ("binary partition read vs Redis `XRANGE COUNT 1000`", "read-binary", xrange, 1.0),
        ("binary group fetch vs Redis `XRANGE COUNT 1000`", "fetch-binary", xrange, 0.8),
        ("single-record produce vs bare aiohttp echo, wrk 64 connections", "single", "echo",
         SINGLE_TARGET),
    ]  # fmt: skip
    against = {
        "produce-binary": _peer(results, xadd, BATCHED),
        "produce-json": _peer(results, xadd, BATCHED),
        "read-binary": _peer(results, xrange, CONSUME),
        "fetch-binary": _peer(results, xrange, CONSUME),
        "single": _peer(results, "echo", SINGLE),
    }
    lines = [
        "| target | needed | " + " | ".join(mode(w) for w in WORKER_MODES) + " | against |",
        "|" + " --- |" * (3 + len(WORKER_MODES)),
    ]
    for name, ours, theirs, at_least in ratios:
        cells = [_ratio_cell(results, f"{ours}-w{w}", theirs, at_least) for w in WORKER_MODES]
        lines.append(
            f"| {name} | >= {at_least:g}x | " + " | ".join(cells) + f" | {against[ours]} |"
        )
    for name, key, below_ms, how in (
        (f"p99 of single-record produce at {RATE:,} requests/s", "paced", 5.0, PACED[0].label),
        (f"end-to-end p99 at {RATE:,} records/s", "e2e", 10.0, E2E[0].label),
    ):
        cells = [_latency_cell(results, f"{key}-w{w}", below_ms) for w in WORKER_MODES]
        client = how.split(", via ")[-1]
        lines.append(f"| {name} | < {below_ms:g} ms | " + " | ".join(cells) + f" | via {client} |")
    return lines


def _bottlenecks(results: Results) -> list[str]:
    busy = [
        f"{key} ({statistics.median(r['load_cpu'] for r in runs):.2f})"
        for key, runs in results.runs.items()
        if statistics.median(r["load_cpu"] for r in runs) >= 0.8
    ]
    if not busy:
        return [
            "No load generator used 0.8 CPU s/s or more in any case: the clients were not the",
            "limit. Where a system's CPU s/s is well under 1.0 too, it waited on its disk or on",
            "other work on the machine's cores.",
        ]
    return [
        "Load generators at 0.8 CPU s/s or more, which may share the limit on these two",
        f"cores: {', '.join(busy)}. wrk runs 2 threads (4 for group fetch),",
        "redis-benchmark 1, rbfly one per process.",
    ]


def _versions(results: Results) -> list[str]:
    return [
        f"- eventbus {metadata.version('eventbus')} (commit {_git_commit()}); "
        f"{results.versions.get(REDIS, 'redis-server: not started')}; "
        f"{results.versions.get(RABBIT, 'RabbitMQ: not started')}; {wrk.version()}",
    ]


def report(
    args: argparse.Namespace,
    scratch: Path,
    results: Results,
    profiled: tuple[pstats.Stats, dict[str, Any]] | None,
    took_s: float,
) -> list[str]:
    failures = [f"- **{system} failed**: {why}" for system, why in results.failures.items()]
    lines = [
        "## Comparison with Redis Streams, RabbitMQ Streams and a bare aiohttp server",
        "",
        f"Command: `{COMMAND}`",
        f"(the whole comparison took {took_s / 60:.1f} minutes)",
        "",
        "Machine and versions:",
        "",
        *machine_description(scratch, ("aiohttp", "uvloop", "orjson", "rbfly")),
        *_versions(results),
        f"- load average of the machine before the run: {LOAD_BEFORE[0]:.2f} (other work on",
        "  the same cores moves every number, the peers' as much as ours)",
        *failures,
        "",
        "Every system runs on this machine, bound to 127.0.0.1, one after the other, and each",
        "is driven by its own best client, named in every row: `wrk` (in C, with a Lua script",
        "for method, headers and body: `bench/wrk_request.lua`, `bench/wrk_group_fetch.lua`)",
        "for eventbus and the bare aiohttp server alike, `redis-benchmark` (in C) for Redis,",
        "and for RabbitMQ Streams rbfly, the fastest client that installs here, which is a",
        "**Python** client (RabbitMQ's own perf tool is a Java program no package source here",
        f"ships). Every case ran {args.runs} times (a system's cases take turns); each table",
        "gives the median and every run. Records are 1 KiB (key and value; for Redis and",
        "RabbitMQ a 1 KiB value). *System CPU s/s* is the measured server's (every process of",
        "it), *load CPU s/s* the load generator's, both per second of the run: the two cores",
        "are shared by both.",
        "",
        "- eventbus: `eventbus serve` with `--workers 0` (one process) and `--workers 2`,",
        "  uvloop, TLS off, each produce answered after its fsync (group commit); topics of one",
        "  partition with autoscaling off. wrk repeats one request, so its produce requests",
        "  carry no `Idempotency-Key` (the load tool's latency cases send one each).",
        "- Redis: `appendonly yes`, `appendfsync always` (an answer after the fsync of its",
        "  event-loop turn, so one pipeline shares one fsync). redis-benchmark runs each command",
        "  a number of times sized from a short probe to take about as long as the other cases.",
        f"- RabbitMQ: a node of its own with the `rabbitmq_stream` plugin; {RABBIT_PROCESSES}",
        "  rbfly processes started together on one stream, each sending batches of 1000 and",
        "  waiting for every confirmation before the next; then 4 consumers, each reading the",
        "  whole stream from its first offset (`bench/rabbit_load.py`).",
        "- Bare aiohttp: `bench/echo_server.py`, one `POST /echo` that reads the body and answers",
        '  `{"ok":true}`, on uvloop like eventbus.',
        "",
        f"### Batched produce: {BATCH} records of 1 KiB per request, {args.seconds:g} s a run",
        "",
        *_rate_table(results, BATCHED, "records/s"),
        "",
        "### Consume: 1000 records per request",
        "",
        f"eventbus reads a topic filled with {FILL_RECORDS:,} records in batches of 1000: a",
        "partition read repeats the read of the first 1000 records from offset 0 (as",
        "`XRANGE - + COUNT 1000` reads the first 1000 entries each time), and each group-fetch",
        "connection is a member of a group of its own that reads the topic from its start",
        "with `auto_commit`, joining a new group when it reached the end (records counted from",
        "the bytes of the answers that held records). RabbitMQ's consumers read",
        f"{RABBIT_PROCESSES} x {RABBIT_RECORDS:,} records each.",
        "",
        *_rate_table(results, CONSUME, "records/s"),
        "",
        f"### Single-record produce, {SINGLE_CLIENTS} connections, {args.seconds:g} s a run",
        "",
        *_rate_table(results, SINGLE, "requests/s"),
        "",
        f"### Single-record produce at a fixed {RATE:,} requests/s, {args.seconds:g} s",
        "",
        "wrk has no fixed-rate mode, so our own load tool sends these: an open loop, a",
        "request sent when due whatever earlier ones are doing, its latency counted from when",
        "it was due; each request carries its own `Idempotency-Key`.",
        "",
        *_latency_table(results, PACED, "requests/s"),
        "",
        f"### End-to-end: produce to a long-polling group member, {RATE:,} records/s",
        "",
        "One record per produce request, its value starting with its send time; a group",
        "member joined at the end of the topic fetches with `wait_ms` and takes receive time",
        f"minus send time for each record ({args.seconds:g} s of production per run). Our own",
        "load tool is both producer and member (wrk cannot be a long-polling member).",
        "",
        *_latency_table(results, E2E, "records/s produced"),
        "",
        "### Targets (issue 22), as ratios of medians in this run",
        "",
        "Against Redis, the better of its two settings is Redis at its best.",
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
