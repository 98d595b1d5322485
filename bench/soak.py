"""Soak: the resident memory of every server process over a long, steady run (`make soak`).

Run with ``make soak`` (or ``python -m bench.soak --minutes 10 --output docs/benchmarks.md``).

Starts ``eventbus serve`` as a user would (``--workers`` at its default, one per core) on
loopback with a fresh data directory, and makes ``--topics`` topics of ``--partitions-per-
topic`` active partitions each (split by hand; 100 partitions by default; then autoscaling
on, held at that count), with small segments and a byte retention, so that segments roll,
are uploaded to the default ``file://`` object store and are deleted all through the run.
A load process of its own (``--load``) then, for ``--minutes``:

- produces ``--rate`` requests a second, open loop, of ``--batch`` keyed records of 1 KiB,
  through :class:`gateway.client.AsyncClient` (binary batches, an ``Idempotency-Key`` each),
  round-robin over the topics, 1000 keys spread over every partition;
- consumes every topic with a group member of its own (long-polling binary fetches with
  ``auto_commit``), and at the end waits until everything produced was consumed.

Every ``--sample-s`` seconds the resident set size (``VmRSS``) of every server process (the
supervisor, the spawner that forks workers, and each worker) is read from ``/proc``. The
report gives, per process, its RSS after the first minute, its peak, its RSS at the end,
and the slope of a least-squares line through the samples of the second half of the run
(MiB per minute): flat is a slope near zero. The targets: every process under 150 MiB, and
flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.http_bench import ROOT, Server, _children
from bench.http_load import make_records
from bench.report import publish, section_head
from gateway.client import AsyncClient
from partitions.batch import NewRecord

COMMAND = "make soak  # runs python -m bench.soak --minutes 10 --output docs/benchmarks.md"
TARGET_MIB = 150
# About what one answered request over ten partitions keeps (docs/operations.md, Memory).
ANSWER_BYTES = 550
MIB = 1024 * 1024
TOPIC_CONFIG = {
    "autoscale": {"enabled": False},
    "segment_bytes": 4 * MIB,
    "retention_bytes": 16 * MIB,
}


# --- the load process ---------------------------------------------------------------------


@dataclass
class LoadTally:
    requests: int = 0
    produced: int = 0
    consumed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def _produce(args: argparse.Namespace, topics: list[str], tally: LoadTally) -> None:
    rng = random.Random(7)
    period = 1 / args.rate
    started = time.monotonic()
    deadline = started + args.minutes * 60
    in_flight: set[asyncio.Task[None]] = set()
    async with AsyncClient(args.url, args.key) as client:

        async def one(topic: str, batch: list[NewRecord]) -> None:
            began = time.monotonic()
            try:
                await client.produce(topic, batch)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                tally.errors.append(f"produce: {exc}")
                return
            tally.latencies.append(time.monotonic() - began)
            tally.requests += 1
            tally.produced += len(batch)

        n = 0
        while (due := started + n * period) < deadline:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            batch = make_records(args.batch, rng)
            task = asyncio.ensure_future(one(topics[n % len(topics)], batch))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        await asyncio.gather(*in_flight)


async def _consume(
    args: argparse.Namespace, topic: str, tally: LoadTally, done: asyncio.Event
) -> None:
    group = f"soak-{topic}"
    async with AsyncClient(args.url, args.key) as client:
        member: str | None = None
        while True:
            try:
                result = await client.fetch(
                    topic,
                    group,
                    member,
                    max_records=1000,
                    wait_ms=1000,
                    auto_commit=True,
                    auto_offset_reset="earliest",
                )
            except Exception as exc:  # noqa: BLE001 - counted; the member joins again
                tally.errors.append(f"fetch: {exc}")
                member = None
                await asyncio.sleep(0.5)
                continue
            member = result.member_id
            tally.consumed += len(result.records)
            # After production: stop once everything came back and this topic is drained.
            if done.is_set() and not result.records and tally.consumed >= tally.produced:
                break
        await client.leave(topic, group, member)


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    topics = [f"soak-{n}" for n in range(args.topics)]
    tally = LoadTally()
    produced = asyncio.Event()
    consumers = [asyncio.ensure_future(_consume(args, t, tally, produced)) for t in topics]
    await _produce(args, topics, tally)
    produced.set()
    try:
        await asyncio.wait_for(asyncio.gather(*consumers), 180)
    except TimeoutError:
        tally.errors.append("the consumers did not drain the topics within 180 s")
    latencies = sorted(tally.latencies) or [0.0]
    return {
        "requests": tally.requests,
        "produced": tally.produced,
        "consumed": tally.consumed,
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


# --- the measuring process ----------------------------------------------------------------


async def make_topics(server: Server, topics: int, per_topic: int) -> None:
    """``topics`` topics of ``per_topic`` active partitions (each split of an active
    partition makes one more), then autoscaling on with the count held there."""
    auth = {"Authorization": f"Bearer {server.key}"}
    async with AsyncClient(server.url, server.key) as client:
        for n in range(topics):
            await client.create_topic(f"soak-{n}", TOPIC_CONFIG)

    async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any) -> None:
        async with session.request(method, url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"{method} {url}: {response.status} {await response.text()}")

    # The autoscaler measures and decides all through the run, at the shape made here.
    bounds = {"enabled": True, "min_partitions": per_topic, "max_partitions": per_topic}
    async with aiohttp.ClientSession(headers=auth) as session:
        for n in range(topics):
            topic = f"{server.url}/v1/topics/soak-{n}"
            for partition in range(per_topic - 1):
                await call(session, "POST", f"{topic}/partitions/{partition}/split", None)
            await call(session, "PATCH", topic, {"autoscale": bounds})


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _roles(supervisor: int) -> dict[int, str]:
    """The server's processes by role: the supervisor, the spawner it forked (which loaded
    the server once), and the workers the spawner forked, numbered by pid."""
    roles = {supervisor: "supervisor"}
    descendants = _children(supervisor)
    spawners = [pid for pid in descendants if _parent(pid) == supervisor]
    for pid in spawners:
        roles[pid] = "spawner"
    workers = sorted(pid for pid in descendants if pid not in roles)
    for n, pid in enumerate(workers):
        roles[pid] = f"worker process {n + 1}"
    return roles


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [kib / 1024 for _, kib in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread * 60


@dataclass
class Soak:
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    partitions: int = 0
    took_s: float = 0.0


def soak(args: argparse.Namespace, scratch: Path) -> Soak:
    workers = os.cpu_count() or 1
    server = Server(scratch / "data", workers=workers)
    out = Soak()
    began = time.monotonic()
    try:
        asyncio.run(make_topics(server, args.topics, args.partitions_per_topic))
        out.partitions = args.topics * args.partitions_per_topic
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.soak",
                "--load",
                "--url",
                server.url,
                "--key",
                server.key,
                *("--minutes", str(args.minutes), "--rate", str(args.rate)),
                *("--batch", str(args.batch), "--topics", str(args.topics)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        started = time.monotonic()
        roles = _roles(server.process.pid)
        while load.poll() is None:
            now = time.monotonic() - started
            for pid, role in roles.items():
                kib = _rss_kib(pid)
                if kib is not None:
                    out.samples.setdefault(role, []).append((now, kib))
            time.sleep(args.sample_s)
        stdout = load.stdout.read() if load.stdout else b""
        if load.returncode != 0:
            raise RuntimeError(f"the load process failed ({load.returncode})")
        out.load = orjson.loads(stdout.splitlines()[-1])
    finally:
        server.stop()
    out.took_s = time.monotonic() - began
    return out


def report(args: argparse.Namespace, scratch: Path, result: Soak) -> list[str]:
    load = result.load
    lines = section_head(
        "Soak: resident memory over a steady run",
        COMMAND,
        scratch,
        ("aiohttp", "uvloop", "orjson"),
    )
    lines += [
        f"`eventbus serve` with its default `--workers` ({os.cpu_count()} on this machine),"
        f" {args.topics} topics of {args.partitions_per_topic} active partitions"
        f" ({result.partitions} partitions) split by hand, then autoscaling on with"
        " `min_partitions` = `max_partitions` (it measures and decides; the count stays),"
        " 1 MiB segments, 4 MiB retention per partition, the default `file://` object store"
        " (segments roll, are uploaded and deleted all through the run). One load process for"
        f" {args.minutes:g} minutes: {args.rate:g} produce requests/s of {args.batch} keyed"
        " records of 1 KiB through the Python client (binary, an `Idempotency-Key` each),"
        " and one long-polling group member per topic with `auto_commit`. RSS is read every"
        f" {args.sample_s:g} s from `/proc`; the slope is that of a least-squares line"
        " through the second half of the run.",
        "",
        f"- produced {load['produced']:,} records in {load['requests']:,} requests"
        f" (p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms), consumed"
        f" {load['consumed']:,}, errors {load['errors']}",
        "",
        "| process | RSS after 1 min MiB | peak MiB | at the end MiB"
        " | slope, second half, MiB/min | under 150 MiB | flat (under 0.5 MiB/min) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    half = args.minutes * 60 / 2
    for role in sorted(result.samples):
        samples = result.samples[role]
        early = next((kib for t, kib in samples if t >= 60), samples[0][1])
        peak = max(kib for _, kib in samples)
        slope = slope_mib_per_min([s for s in samples if s[0] >= half])
        under, flat = peak / 1024 < TARGET_MIB, abs(slope) < 0.5
        verdicts.append(under and flat)
        lines.append(
            f"| {role} | {early / 1024:.1f} | {peak / 1024:.1f} | {samples[-1][1] / 1024:.1f}"
            f" | {slope:+.2f} | {'yes' if under else '**no**'} | {'yes' if flat else '**no**'} |"
        )
    minutes = max(1, round(args.minutes))
    lines += [
        "",
        "The largest RSS sampled in each minute, MiB:",
        "",
        "| process | " + " | ".join(f"min {m + 1}" for m in range(minutes)) + " |",
        "| --- |" + " --- |" * minutes,
    ]
    for role in sorted(result.samples):
        peaks = []
        for m in range(minutes):
            inside = [kib for t, kib in result.samples[role] if m * 60 <= t < (m + 1) * 60]
            peaks.append(f"{max(inside) / 1024:.1f}" if inside else "-")
        lines.append(f"| {role} | " + " | ".join(peaks) + " |")
    met = all(verdicts) and load["errors"] == 0 and load["consumed"] >= load["produced"]
    per_s = load["requests"] / (args.minutes * 60)
    lines += [
        "",
        "Answers of idempotent produce are remembered for ten minutes, so over a ten-minute"
        " soak their table grows the whole time, by design: at"
        f" {per_s:.0f} requests/s and some {ANSWER_BYTES} bytes an answer, about"
        f" {per_s * ANSWER_BYTES * 60 / MIB:.2f} MiB a minute split between the workers by key;"
        " it stops growing at ten minutes.",
    ]
    lines += [
        "",
        f"Target (issue 13): every process under {TARGET_MIB} MiB and flat over the soak, with"
        f" nothing lost: **{'met' if met else 'NOT met'}**.",
        "",
        f"(The whole soak took {result.took_s / 60:.1f} minutes.)",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the report section here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--partitions-per-topic", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="produce requests/s")
    parser.add_argument("--batch", type=int, default=100, help="records per request")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        summary = asyncio.run(run_load(args))
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = soak(args, Path(tmp))
        lines = report(args, Path(tmp), result)
    publish(lines, args.output, "soak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
