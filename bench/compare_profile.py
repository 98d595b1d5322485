"""Where single-record produce spends its time: one eventbus process under cProfile in the
comparison benchmark, read by area (the areas of :mod:`bench.workers_bench`)."""

from __future__ import annotations

import pstats
from typing import Any

from bench.compare_cases import Results
from bench.workers_bench import _area, _attributed, _short, top_functions

# The single-record target of issue 22: this share of the bare aiohttp echo's requests/s.
SINGLE_TARGET = 0.5


def _num(value: float) -> str:
    return f"{value:,.0f}"


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
    lines += ["", *top_functions(raw, 12)]
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
    ours, echo = results.median("single-w0"), results.median("echo")
    ours_cpu = results.median("single-w0", "server_cpu")
    echo_cpu = results.median("echo", "server_cpu")
    paced_cpu = results.median("paced-w0", "server_cpu") or 0.0
    load_cpu = results.median("single-w0", "load_cpu") or 0.0
    if not (ours and echo and ours_cpu and echo_cpu):
        return []
    per_ours, per_echo = ours_cpu / ours * 1e6, echo_cpu / echo * 1e6
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    share = {area: own / total for area, own in _attributed(raw).items()}
    shutdown = sum(
        entry[2] for (f, _l, fn), entry in raw.items() if fn == "_on_cleanup" and "aiohttp" in f
    )
    target = SINGLE_TARGET * echo
    top_own = max((entry[2] for entry in raw.values()), default=0.0) / total

    def pct(area: str) -> str:
        return f"{share.get(area, 0.0):.0%}"

    return [
        "What this says, with the numbers of this run:",
        "",
        "- Without the profiler, eventbus `--workers 0` spent"
        f" **{per_ours:,.0f} us of CPU per single-record request** (system CPU s/s over"
        f" requests/s above) where bare aiohttp spent {per_echo:,.0f} us: what aiohttp itself"
        f" costs is {per_echo / per_ours:.0%} of ours. The one eventbus process used"
        f" {ours_cpu:.2f} CPU s/s (1.0 is its one core), wrk {load_cpu:.2f}.",
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
        f"- {SINGLE_TARGET:.0%} of the echo is {target:,.0f} requests/s, about"
        f" {1e6 / target:,.0f} us of CPU per request on one core. What is left is spread"
        " over aiohttp's own request handling, the two middlewares (the request's id, log,"
        " metrics and error answer; the tenant gate's key, metering, scope, quotas and fair"
        " scheduler), the produce path with its idempotency entry and producer tag, and the"
        " hand-off to the log's writer thread and back: a several-fold cut, i.e. an"
        " idempotency entry and tag made without per-request allocation, appends handed to"
        " the writer without a future and thread wake-up each, and less work per request in"
        " each layer, plus `--workers` on machines with cores to spare, is what would close"
        " it; no single fix will.",
        f"- At a fixed 1,000 requests/s the one process is {paced_cpu:.0%} busy; what queues"
        " behind a request there is that same per-request work of the others.",
    ]
