"""Worker processes benchmark: one hot topic produced at full speed, on 1 and on 2 workers.

Run with ``make bench`` (or ``python -m bench.workers_bench --output docs/benchmarks.md``).

For ``--workers 1`` and then ``--workers 2``, in the same run, each with a fresh data
directory: ``eventbus serve`` on loopback and one topic, ``hot``, whose autoscaler splits it
at a low threshold while a warm-up load runs, until it has four active partitions; then
autoscaling is turned off, so that both runs measure the same shape. The load is
:mod:`bench.http_load`'s produce (binary batches of 100 records of 1 KiB, keyed over 1000
keys, 16 requests at a time, from a separate process), measured twice per run: with an
``Idempotency-Key`` on every request, as the Python client sends them, and without.
Reported: records/s, payload MB/s, latency, the CPU the server's processes and the load
used, and the ratio of 2 workers to 1.

Then ``--workers 2`` once more with every worker under cProfile
(:mod:`bench.profiled_serve`), split by hand to the same four partitions, under the same
load with keys: where the workers' time goes, by area and by function.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.http_bench import ROOT, Scenario, Server, run_load
from bench.report import publish, section_head

PARTITIONS = 4
WARM_AUTOSCALE = {
    "split_bytes_per_s": 1024 * 1024,
    "split_records_per_s": 10**9,
    "window_s": 2,
    "cooldown_s": 2,
    "merge_window_s": 3600,
    "max_partitions": PARTITIONS,
}
LOAD = Scenario("produce", "binary", 100, 16)
WARM_CHUNK_S = 3.0
LOAD_BEFORE = os.getloadavg()
WARM_LIMIT_S = 60.0

# Where a profiled function's own time goes: (area, parts of the file name or built-in).
AREAS: list[tuple[str, tuple[str, ...]]] = [
    (
        "between workers: channel, forwarding, cluster",
        (
            "partitions/channel.py",
            "partitions/worker_remote.py",
            "partitions/routing.py",
            "gateway/processes/",
            "aiohttp/client",
            "aiohttp/connector",
        ),
    ),
    ("HTTP server: aiohttp parsing and answers", ("aiohttp/", "multidict", "yarl")),
    (
        "request body: batch decode, record and batch encode",
        (
            "gateway/http/bodies.py",
            "gateway/http/record_json.py",
            "gateway/client/wire.py",
            "partitions/batch.py",
            "crc32c",
            "orjson",
        ),
    ),
    (
        "produce path: broker, routing by key, idempotency",
        (
            "gateway/broker/",
            "gateway/http/records.py",
            "gateway/http/topics.py",
            "gateway/http/groups.py",
            "partitions/idempotency.py",
            "xxhash",
        ),
    ),
    (
        "partition log: append, group commit hand-off",
        (
            "partitions/log/",
            "partitions/worker.py",
            "partitions/fileio.py",
        ),
    ),
    (
        "auth, tenancy, metrics, request logs",
        (
            "gateway/tenancy/",
            "gateway/http/",
            "gateway/logs.py",
            "gateway/health.py",
            "prometheus_client",
            "logging/",
            "json/",
            "uuid",
            "contextvars",
        ),
    ),
    ("autoscaler meters", ("autoscaler/",)),
    ("event loop, tasks and sockets", ("asyncio/", "uvloop", "selectors", "socket", "ssl")),
]


def _area(filename: str, function: str) -> str:
    text = filename if filename != "~" else function
    for area, parts in AREAS:
        if any(part in text for part in parts):
            return area
    return "other"


async def _call(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
        session.request(method, url + path, json=body) as response,
    ):
        answer = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {answer}")
        return answer


def _active(server: Server) -> list[dict[str, Any]]:
    topic = asyncio.run(_call(server.url, server.key, "GET", "/v1/topics/hot"))
    return [p for p in topic["partitions"] if p["state"] == "active"]


def warm_up(server: Server) -> dict[str, Any]:
    """Produce until the autoscaler split ``hot`` into PARTITIONS, then freeze its shape."""
    config = {"autoscale": WARM_AUTOSCALE}
    asyncio.run(_call(server.url, server.key, "PUT", "/v1/topics/hot", config))
    started = time.monotonic()
    while len(_active(server)) < PARTITIONS:
        if time.monotonic() - started > WARM_LIMIT_S:
            raise RuntimeError("the autoscaler did not split the hot topic in time")
        run_load(server, LOAD, "hot", WARM_CHUNK_S)
    took = time.monotonic() - started
    patch = {"autoscale": {"enabled": False}}
    asyncio.run(_call(server.url, server.key, "PATCH", "/v1/topics/hot", patch))
    workers = sorted(p.get("worker", 0) for p in _active(server))
    return {"warm_s": took, "workers": workers}


def split_by_hand(server: Server) -> None:
    asyncio.run(_call(server.url, server.key, "PUT", "/v1/topics/hot", {}))
    while len(active := _active(server)) < PARTITIONS:
        pid = active[0]["id"]
        asyncio.run(_call(server.url, server.key, "POST", f"/v1/topics/hot/partitions/{pid}/split"))


def measure(workers: int, scratch: Path, seconds: float) -> dict[str, Any]:
    server = Server(scratch / f"data-{workers}", workers=workers)
    try:
        shape = warm_up(server)
        keyed = run_load(server, LOAD, "hot", seconds)
        plain = run_load(server, LOAD, "hot", seconds, extra=["--no-idempotency"])
    finally:
        server.stop()
    return {"shape": shape, "keyed": keyed, "plain": plain}


def profile(scratch: Path, seconds: float) -> tuple[pstats.Stats, dict[str, Any]]:
    directory = scratch / "profiles"
    directory.mkdir()
    server = Server(
        scratch / "data-profiled",
        workers=2,
        module="bench.profiled_serve",
        env={"BENCH_PROFILE_DIR": str(directory)},
    )
    try:
        split_by_hand(server)
        result = run_load(server, LOAD, "hot", seconds)
    finally:
        server.stop()
    files = sorted(str(p) for p in directory.glob("*.prof"))
    if not files:
        raise RuntimeError("the profiled workers wrote no statistics")
    return pstats.Stats(*files), result


def rate(result: dict[str, Any]) -> float:
    return float(result["records"]) / float(result["seconds"])


def _more_cpu(one: dict[str, Any], two: dict[str, Any]) -> float:
    """How much more server CPU a record cost with two workers than with one."""
    per_one = one["server_cpu"] / max(rate(one), 1e-9)
    per_two = two["server_cpu"] / max(rate(two), 1e-9)
    return per_two / max(per_one, 1e-12) - 1


def row(workers: int, keys: str, result: dict[str, Any]) -> str:
    wall = result["seconds"]
    cells = [
        str(workers),
        keys,
        f"{rate(result):,.0f}",
        f"{result['payload_bytes'] / wall / 1e6:,.1f}",
        f"{result['p50_ms']:.1f}",
        f"{result['p99_ms']:.1f}",
        f"{result['server_cpu']:.2f}",
        f"{rate(result) / max(result['server_cpu'], 1e-9):,.0f}",
        f"{result['load_cpu']:.2f}",
        str(result["errors"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _attributed(raw: dict[tuple[str, int, str], tuple[Any, ...]]) -> dict[str, float]:
    """Own time per area; a built-in's (``len``, ``list.append``...) goes to the areas of the
    functions that called it, in the shares they called it for."""
    by_area: dict[str, float] = {}
    for (filename, _line, function), entry in raw.items():
        own, callers = entry[2], entry[4]
        if filename == "~" and _area(filename, function) == "other" and callers:
            for (caller_file, _caller_line, caller), counts in callers.items():
                area = _area(caller_file, caller)
                by_area[area] = by_area.get(area, 0.0) + counts[2]
            continue
        area = _area(filename, function)
        by_area[area] = by_area.get(area, 0.0) + own
    return by_area


def profile_lines(stats: pstats.Stats) -> list[str]:
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    by_area = _attributed(raw)
    lines = [
        "Built-ins (`len`, `list.append`, ...) count for the areas of their callers.",
        "",
        "| share of the workers' profiled CPU | area |",
        "| --- | --- |",
        *[
            f"| {share / total:.0%} | {area} |"
            for area, share in sorted(by_area.items(), key=lambda item: -item[1])
        ],
        "",
        *top_functions(raw, 15),
    ]
    return lines


def top_functions(raw: dict[tuple[str, int, str], tuple[Any, ...]], count: int) -> list[str]:
    """A table of the ``count`` profiled functions with the most time of their own."""
    total = sum(entry[2] for entry in raw.values()) or 1.0
    lines = [
        "The functions with the most time of their own:",
        "",
        "| share | function | area |",
        "| --- | --- | --- |",
    ]
    top = sorted(raw.items(), key=lambda item: -item[1][2])[:count]
    for (filename, line, function), entry in top:
        where = function if filename == "~" else f"{_short(filename)}:{line} {function}"
        where = where.replace("|", "/")
        lines.append(f"| {entry[2] / total:.1%} | `{where}` | {_area(filename, function)} |")
    return lines


def _short(filename: str) -> str:
    """A profiled file's name as the report shows it: relative to the project, or from
    the installed package on (never a path of the machine it ran on)."""
    # An installed package first: the project's own virtualenv may lie under its root.
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    root = f"{ROOT}/"
    if filename.startswith(root):
        return filename[len(root) :]
    if "/lib/python3" in filename:
        return filename.split("/lib/python3", 1)[1].split("/", 1)[1]
    return filename


def report(
    scratch: Path,
    seconds: float,
    results: dict[int, dict[str, Any]],
    stats: pstats.Stats,
    profiled: dict[str, Any],
) -> list[str]:
    one, two = results[1], results[2]
    ratio_keyed = rate(two["keyed"]) / rate(one["keyed"])
    ratio_plain = rate(two["plain"]) / rate(one["plain"])
    command = "make bench  # runs python -m bench.workers_bench --output docs/benchmarks.md"
    return [
        *section_head(
            "Worker processes: one hot topic on 1 and 2 workers",
            command,
            scratch,
            ("aiohttp", "uvloop", "orjson"),
        ),
        "For `--workers 1` and `--workers 2`, in the same run: a fresh `eventbus serve` on",
        "loopback and one topic whose autoscaler splits it (threshold 1 MiB/s, window 2 s)",
        f"under a warm-up load until it has {PARTITIONS} active partitions; autoscaling is then",
        "turned off so both runs measure the same shape. The load is `bench/http_load.py`'s",
        f"produce from a separate process: binary batches of {LOAD.batch} records of 1 KiB,",
        f"keyed over 1000 keys, {LOAD.concurrency} requests at a time, {seconds:g} s per row;",
        "once with an `Idempotency-Key` on every request (as the Python client sends them) and",
        "once without. *Server CPU* counts every process of the server (supervisor and workers).",
        "",
        f"- load average of the machine before the run: {LOAD_BEFORE[0]:.2f} (other work on"
        " the same cores lowers what two workers can gain)",
        f"- warm-up to {PARTITIONS} partitions: {one['shape']['warm_s']:.1f} s with 1 worker, "
        f"{two['shape']['warm_s']:.1f} s with 2; with 2, the partitions are on workers "
        f"{two['shape']['workers']}",
        "",
        "| workers | idempotency keys | records/s | payload MB/s | p50 ms | p99 ms"
        " | server CPU s/s | records per server CPU s | load CPU s/s | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        row(1, "yes", one["keyed"]),
        row(2, "yes", two["keyed"]),
        row(1, "no", one["plain"]),
        row(2, "no", two["plain"]),
        "",
        f"**2 workers against 1: {ratio_keyed:.2f}x with idempotency keys, "
        f"{ratio_plain:.2f}x without** (records/s, same run, same machine).",
        "",
        f"What limits it here: the machine has {os.cpu_count()} cores, which the load "
        f"generator shares ({two['keyed']['load_cpu']:.2f} CPU s/s); the two workers "
        f"used {two['keyed']['server_cpu']:.2f} CPU s/s between them where one used "
        f"{one['keyed']['server_cpu']:.2f}, and each record cost "
        f"{_more_cpu(one['keyed'], two['keyed']):.0%} more CPU with keys "
        f"({_more_cpu(one['plain'], two['plain']):.0%} without). The records of a keyed "
        "request go to every partition, so half of each request's batches cross to the other "
        "worker over the channel (a call per batch, in both processes' event loops and the "
        "kernel), and an idempotent request makes two small calls to its key's home half of "
        "the time; one process pays none of that. The gain of a second worker is its core "
        "minus that crossing: on a machine whose cores are free for the server it grows "
        "with them, here it is what one extra core, shared, leaves.",
        "",
        "### Where the remaining time goes",
        "",
        "`--workers 2` again, each worker under cProfile (`bench/profiled_serve.py`), the topic",
        f"split by hand into {PARTITIONS}, the same load with keys for {seconds:g} s "
        f"({rate(profiled):,.0f} records/s under the profiler). cProfile sees each worker's",
        "event loop thread: the log's write and fsync threads and the kernel's socket work are",
        "not in these shares; shares are of CPU time.",
        "",
        *profile_lines(stats),
        "",
        "Read with the table above: the remaining time is the per-record Python work that one",
        "process does too (decoding the producer's batch into records, hashing keys to route",
        "them, encoding one batch per partition with its producer tag, the idempotency",
        "table's runs), then HTTP; crossing between workers is a smaller share, and the",
        "log's append and group commit hand-off smaller still (its write and fsync run on",
        "threads, outside these shares). Storing a producer's batch without decoding it when",
        "its records all go to one partition, which clients that route by key could send, is",
        "what would cut the largest share.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the report section here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="workers-bench-", dir=args.dir))
    try:
        results = {}
        for workers in (1, 2):
            results[workers] = measure(workers, scratch, args.seconds)
            for keys in ("keyed", "plain"):
                print(row(workers, keys, results[workers][keys]), flush=True)
        stats, profiled = profile(scratch, args.seconds)
        lines = report(scratch, args.seconds, results, stats, profiled)
        publish(lines, args.output, "workers")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
