"""Autoscaler benchmark: how soon a hot partition splits, and whether producers notice.

Run with ``make bench`` (or ``python -m bench.autoscale_bench --output docs/benchmarks.md``).

Starts ``eventbus serve`` on loopback with its defaults (the autoscaler evaluates every
second) and a fresh data directory, then:

1. **Reaction**: several fresh topics, one after another, each with a records/s threshold;
   a paced producer sends twice the threshold from its first request. Measured: the time
   from that first request to the first produce answer that names a child partition (the
   split in effect for producers), against the target of ``2 x window_s``.
2. **Producing through changes**: one topic under load well above its threshold for long
   enough to split several times, then a trickle while its partitions merge back. Measured:
   produce requests that did not answer 200 (target: none), produce latency, the number of
   splits and merges, and how long produce was held per change (from ``/metrics``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.http_bench import Server
from bench.report import publish, section_head

REACTION_TRIALS = 5
REACTION = {
    "split_records_per_s": 2000,
    "split_bytes_per_s": 2**40,
    "window_s": 5,
    "cooldown_s": 5,
    "merge_window_s": 300,
    "max_partitions": 2,
}
CHANGES = {
    "split_records_per_s": 500,
    "split_bytes_per_s": 2**40,
    "window_s": 2,
    "cooldown_s": 2,
    "merge_window_s": 3,
    "merge_ratio": 0.25,
    "max_partitions": 8,
}
RECORDS_PER_REQUEST = 100
KEYS = 1000
VALUE = "v" * 100


@dataclass
class Load:
    """What a paced producer saw."""

    requests: int = 0
    records: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_child_at: float | None = None
    started: float = 0.0


async def produce_paced(
    session: aiohttp.ClientSession,
    url: str,
    records_per_s: float,
    stop: asyncio.Event,
    load: Load,
    *,
    stop_on_child: bool = False,
) -> None:
    """Send requests of RECORDS_PER_REQUEST records at ``records_per_s`` until ``stop``."""
    interval = RECORDS_PER_REQUEST / records_per_s
    load.started = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    n = 0

    async def one(batch: int) -> None:
        records = [
            {"key": f"key-{(batch * RECORDS_PER_REQUEST + i) % KEYS}", "value": VALUE}
            for i in range(RECORDS_PER_REQUEST)
        ]
        sent = time.monotonic()
        try:
            async with session.post(url, json={"records": records}) as response:
                body = await response.json()
                status = response.status
        except aiohttp.ClientError as exc:
            load.errors.append(repr(exc))
            return
        now = time.monotonic()
        load.requests += 1
        if status != 200:
            load.errors.append(f"{status} {body}")
            return
        load.records += len(records)
        load.latencies.append(now - sent)
        if load.first_child_at is None and any(o["partition"] != 0 for o in body["offsets"]):
            load.first_child_at = now
            if stop_on_child:
                stop.set()

    while not stop.is_set():
        due = load.started + n * interval
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        task = asyncio.ensure_future(one(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    await asyncio.gather(*pending)


async def metric(session: aiohttp.ClientSession, server: Server, admin: str, name: str) -> float:
    headers = {"Authorization": f"Bearer {admin}"}
    async with session.get(server.url + "/metrics", headers=headers) as response:
        text = await response.text()
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name)
    )


async def create_topic(
    session: aiohttp.ClientSession, server: Server, topic: str, autoscale: dict[str, Any]
) -> None:
    async with session.put(
        f"{server.url}/v1/topics/{topic}", json={"autoscale": autoscale}
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"creating {topic}: {response.status} {await response.text()}")


async def active_count(session: aiohttp.ClientSession, server: Server, topic: str) -> int:
    async with session.get(f"{server.url}/v1/topics/{topic}") as response:
        body = await response.json()
    return sum(1 for p in body["partitions"] if p["state"] == "active")


async def reaction(session: aiohttp.ClientSession, server: Server) -> list[dict[str, Any]]:
    trials = []
    rate = 2 * REACTION["split_records_per_s"]
    for trial in range(REACTION_TRIALS):
        topic = f"reaction-{trial}"
        await create_topic(session, server, topic, REACTION)
        # Let measuring start on the idle topic, as on a topic that was quiet before.
        # The start of the load sweeps across the evaluation interval from trial to trial.
        await asyncio.sleep(1.5 + trial / REACTION_TRIALS)
        stop = asyncio.Event()
        load = Load()
        url = f"{server.url}/v1/topics/{topic}/records"
        task = asyncio.ensure_future(
            produce_paced(session, url, rate, stop, load, stop_on_child=True)
        )
        try:
            await asyncio.wait_for(stop.wait(), 6 * REACTION["window_s"])
        except TimeoutError:
            stop.set()
        await task
        end = load.first_child_at or time.monotonic()
        trials.append(
            {
                "seconds": None if load.first_child_at is None else end - load.started,
                "rate": load.records / max(end - load.started, 1e-9),
                "errors": len(load.errors),
            }
        )
        print(f"reaction trial {trial}: {trials[-1]}", flush=True)
    return trials


async def changes(session: aiohttp.ClientSession, server: Server, admin: str) -> dict[str, Any]:
    topic = "changes"
    await create_topic(session, server, topic, CHANGES)
    await asyncio.sleep(1.5)
    url = f"{server.url}/v1/topics/{topic}/records"
    heavy, trickle = Load(), Load()
    peak = 1
    stop = asyncio.Event()
    task = asyncio.ensure_future(produce_paced(session, url, 4500, stop, heavy))
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and peak < CHANGES["max_partitions"]:
        await asyncio.sleep(0.25)
        peak = max(peak, await active_count(session, server, topic))
    await asyncio.sleep(2)  # a little longer at the limit
    stop.set()
    await task
    stop = asyncio.Event()
    task = asyncio.ensure_future(produce_paced(session, url, 20, stop, trickle))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await active_count(session, server, topic) == 1:
            break
        await asyncio.sleep(0.25)
    stop.set()
    await task
    final = await active_count(session, server, topic)
    split_count = await metric(
        session, server, admin, 'eventbus_autoscale_changes_total{action="split"'
    )
    merge_count = await metric(
        session, server, admin, 'eventbus_autoscale_changes_total{action="merge"'
    )
    reshapes = await metric(session, server, admin, "eventbus_partition_reshapes_total")
    pause = await metric(session, server, admin, "eventbus_partition_reshape_pause_seconds_total")
    return {
        "heavy": heavy,
        "trickle": trickle,
        "peak": peak,
        "final": final,
        "splits": split_count - REACTION_TRIALS,  # the reaction topics split once each
        "merges": merge_count,
        "pause_ms": 1000 * pause / reshapes if reshapes else 0.0,
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(server: Server, admin: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    auth = {"Authorization": f"Bearer {server.key}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        trials = await reaction(session, server)
        result = await changes(session, server, admin)
    return trials, result


def report(scratch: Path, trials: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    command = "make bench  # runs python -m bench.autoscale_bench --output docs/benchmarks.md"
    window = REACTION["window_s"]
    times = [t["seconds"] for t in trials if t["seconds"] is not None]
    worst = max(times) if len(times) == len(trials) else None
    met = worst is not None and worst < 2 * window
    heavy, trickle = result["heavy"], result["trickle"]
    errors = len(heavy.errors) + len(trickle.errors) + sum(t["errors"] for t in trials)
    rows = [
        f"| {n + 1} | {t['rate']:,.0f} | "
        + ("no split" if t["seconds"] is None else f"{t['seconds']:.2f}")
        + f" | {t['errors']} |"
        for n, t in enumerate(trials)
    ]
    return [
        *section_head(
            "Autoscaler: time to split, and produce through splits and merges",
            command,
            scratch,
            ("aiohttp", "orjson", "xxhash"),
        ),
        "One `eventbus serve` process with its defaults (the autoscaler evaluates every",
        "second) on loopback; the load comes from the benchmark's own process, paced, in",
        f"JSON requests of {RECORDS_PER_REQUEST} records of about {len(VALUE)} bytes over "
        f"{KEYS} keys.",
        "",
        "### Time from load above the threshold to the split taking effect",
        "",
        f"Each trial is a fresh topic (`split_records_per_s` "
        f"{REACTION['split_records_per_s']}, `window_s` {window}); the producer sends twice "
        "the threshold from its first request, which falls at another moment of the "
        "autoscaler's one-second evaluation cycle in each trial. The time runs from that "
        "first request to the first produce answer that names a child partition.",
        "",
        "| trial | records/s sent | seconds to split | produce errors |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"- Median {statistics.median(times):.2f} s, worst "
        + ("n/a" if worst is None else f"{worst:.2f} s")
        + f" against the target of 2 x window_s = {2 * window} s -> "
        + ("met." if met else "NOT met."),
        f"- Expected: about window_s ({window} s), since each of its five slices must be hot (the",
        "  slice the load began in counts when it was loaded long enough to pass the threshold,",
        "  else one more slice is needed), plus up to one evaluation interval (1 s), plus the",
        "  change itself.",
        "",
        "### Producing through splits and merges",
        "",
        f"One topic (`split_records_per_s` {CHANGES['split_records_per_s']}, `window_s` "
        f"{CHANGES['window_s']}, `cooldown_s` {CHANGES['cooldown_s']}, `max_partitions` "
        f"{CHANGES['max_partitions']}, `merge_window_s` {CHANGES['merge_window_s']}) takes "
        "4,500 records/s until it reaches its limit, then 20 records/s while it merges back.",
        "",
        f"- Active partitions: 1, up to {result['peak']} under load, back to {result['final']}; "
        f"{result['splits']:.0f} splits and {result['merges']:.0f} merges.",
        f"- Produce requests: {heavy.requests + trickle.requests:,}, records: "
        f"{heavy.records + trickle.records:,}; **errors: {errors}** (target 0; every request "
        "of the run counted, the reaction trials too).",
        f"- Produce latency under load: p50 {1000 * _percentile(heavy.latencies, 0.5):.1f} ms, "
        f"p99 {1000 * _percentile(heavy.latencies, 0.99):.1f} ms, max "
        f"{1000 * max(heavy.latencies, default=float('nan')):.1f} ms.",
        f"- Produce to a topic is held for {result['pause_ms']:.1f} ms per split or merge on "
        "average (requests already appending finish, one catalog transaction, the children's "
        "logs opened).",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the report section here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="autoscale-bench-", dir=args.dir))
    server = Server(scratch / "data")
    try:
        credentials = dict(
            line.partition("=")[::2]
            for line in (scratch / "data" / "credentials").read_text().split()
        )
        trials, result = asyncio.run(run(server, credentials["EVENTBUS_ADMIN_KEY"]))
    finally:
        server.stop()
    lines = report(scratch, trials, result)
    publish(lines, args.output, "autoscale")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
