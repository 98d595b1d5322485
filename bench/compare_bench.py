"""Comparison benchmark: eventbus against Redis Streams, RabbitMQ Streams and bare aiohttp,
each driven by its own best client.

Run with ``make bench`` (or ``python -m bench.compare_bench --output docs/benchmarks.md``).

In one run, on this machine, one system after another, everything on 127.0.0.1:

1. a bare aiohttp server (:mod:`bench.echo_server`): single-record requests from wrk with
   64 connections, then a fixed 1,000 requests/s from our open-loop tool;
2. ``eventbus serve --workers 0``, then ``--workers 2`` (each produce answered after its
   fsync), topics of one partition with autoscaling off. Through wrk
   (:mod:`bench.wrk`): produce of 1000 records of 1 KiB per request (JSON, and a binary
   batch built beforehand), binary partition reads and binary group fetches of 1000
   records, single-record JSON produce. Through ``bench.http_load``: single-record
   produce at a fixed 1,000 requests/s, and end-to-end latency to a long-polling group
   member at 1,000 records/s (wrk has no fixed-rate mode and cannot be a group member
   that long-polls);
3. Redis (``appendfsync always``) through ``redis-benchmark`` (:mod:`bench.redis_bench`):
   ``XADD`` of 1 KiB values at two settings, ``XRANGE - + COUNT 1000`` at two, and
   single-command ``XADD`` from 64 clients;
4. RabbitMQ Streams through rbfly, 4 producer processes, then 4 consumer processes
   (:mod:`bench.rabbit_load`).

Every case runs ``--runs`` times (at least 3; a system's cases take turns) and the median
is reported with every run's value, next to the CPU that the system and its load used.
Last, one more eventbus process runs under cProfile while single-record produce saturates
it: where its time goes, by area.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import rabbit_load, redis_bench
from bench.compare_cases import (
    BATCH,
    BATCH_CLIENTS,
    FILL_RECORDS,
    RABBIT,
    RABBIT_PROCESSES,
    RABBIT_RECORDS,
    RATE,
    READERS,
    RECORD_BYTES,
    REDIS,
    REDIS_READERS,
    REDIS_SETTINGS,
    SINGLE_CLIENTS,
    WORKER_MODES,
    Results,
    redis_xadd,
    redis_xrange,
)
from bench.compare_report import report
from bench.http_bench import ROOT, Server, _children, _cpu_seconds, listening_url
from bench.http_load import binary_body, count_chunks, json_body, make_records
from bench.peers import PeerUnavailableError, RabbitStreamPeer, RedisPeer
from bench.report import publish
from bench.wrk import GROUP_FETCH_SCRIPT, REQUEST_SCRIPT, WrkRun, run_wrk
from gateway.client import AsyncClient, wire

START_DELAY_S = 3.0  # for load processes to import and connect before they start together
MAX_BYTES = 2 << 20
REDIS_VALUE = os.urandom(RECORD_BYTES // 2).hex()  # 1 KiB of text


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def tree_cpu(pid: int) -> Callable[[], float]:
    return lambda: sum(_cpu_seconds(p) for p in [pid, *_children(pid)])


def http_load(
    url: str, key: str, cpu: Callable[[], float], scenario: str, *args: str
) -> dict[str, Any]:
    """One run of ``bench.http_load`` (our Python load tool) with the system's CPU; its
    rate counts records delivered end to end, or requests answered."""
    before = cpu()
    command = ["bench.http_load", "--url", url, "--key", key, "--scenario", scenario, *args]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        check=False,
        env=_env(),
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"http_load failed: {done.stderr.decode(errors='replace')[-800:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    wall = result["seconds"]
    result["server_cpu"] = (cpu() - before) / wall
    result["load_cpu"] = result["load_cpu_s"] / wall
    result["rate"] = result["records" if scenario == "e2e" else "requests"] / wall
    return result


def _single_args(seconds: float) -> list[str]:
    return ["--format", "json", "--batch", "1", "--client", "raw", "--seconds", f"{seconds:g}"]


def wrk_load(
    url: str,
    cpu: Callable[[], float],
    script: Path,
    script_args: list[str],
    *,
    connections: int,
    seconds: float,
    records: Callable[[WrkRun], float],
) -> dict[str, Any]:
    """One wrk run; ``records`` turns its numbers into records (or requests) counted."""
    before = cpu()
    threads = connections if script == GROUP_FETCH_SCRIPT else min(connections, 2)
    run, load_cpu = run_wrk(
        url, script, script_args, connections=connections, threads=threads, seconds=seconds
    )
    wall = run.seconds
    return {
        "rate": records(run) / wall,
        "requests": run.requests,
        "seconds": wall,
        "errors": run.errors,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "bytes_read": run.bytes_read,
        "server_cpu": (cpu() - before) / wall,
        "load_cpu": load_cpu / wall,
        **run.counters,
    }


class Bodies:
    """Request bodies written to files before any clock starts, for wrk's script to load."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        records = make_records(BATCH, random.Random(0))
        self.single = directory / "single.json"
        self.single.write_bytes(json_body(records[:1]))
        self.batch_json = directory / "batch.json"
        self.batch_json.write_bytes(json_body(records))
        self.batch_binary = directory / "batch.bin"
        self.batch_binary.write_bytes(binary_body(records))


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


def measure_echo(results: Results, bodies: Bodies, runs: int, seconds: float) -> None:
    echo = EchoServer()
    cpu = tree_cpu(echo.process.pid)
    single = ["POST", str(bodies.single), f"Content-Type:{wire.JSON}"]
    try:
        for _ in range(runs):
            result = wrk_load(
                echo.url + "/echo",
                cpu,
                REQUEST_SCRIPT,
                single,
                connections=SINGLE_CLIENTS,
                seconds=seconds,
                records=lambda run: run.requests,
            )
            results.add("echo", result)
            paced = [*_single_args(seconds), "--rate", str(RATE), "--topic", "-"]
            results.add("echo-paced", http_load(echo.url, "none", cpu, "echo", *paced))
    finally:
        echo.stop()


async def _prepare(server: Server, topics: list[str], fill: bytes) -> tuple[int, float]:
    """Create ``topics`` (one partition that stays one: the autoscaler would split it under
    this load) and fill ``filled``. Returns the records of the binary read that wrk repeats,
    and the records per byte of a full binary group fetch answer (all alike)."""
    async with AsyncClient(server.url, server.key) as client:
        for name in [*topics, "filled"]:
            await client.create_topic(name, {"autoscale": {"enabled": False}})
    auth = {"Authorization": f"Bearer {server.key}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        for _ in range(FILL_RECORDS // BATCH):
            url = f"{server.url}/v1/topics/filled/records"
            async with session.post(url, data=fill, headers={"Content-Type": wire.BATCH}) as r:
                r.raise_for_status()
        binary = {"Accept": wire.BATCH, "Accept-Encoding": "identity"}  # as wrk asks
        read = f"{server.url}/v1/topics/filled/partitions/0/records"
        params = {"offset": "0", "max_records": str(BATCH), "max_bytes": str(MAX_BYTES)}
        async with session.get(read, params=params, headers=binary) as r:
            answer = await r.read()
        read_records = count_chunks(answer)
        fetch = f"{server.url}/v1/topics/filled/groups/probe/fetch"
        request = {"auto_offset_reset": "earliest", "max_records": BATCH, "max_bytes": MAX_BYTES}
        async with session.post(fetch, json=request, headers=binary) as r:
            answer = await r.read()
        per_fetch = count_chunks(answer) / len(answer)
    return read_records, per_fetch


def measure_eventbus(
    results: Results, bodies: Bodies, scratch: Path, workers: int, runs: int, seconds: float
) -> None:
    server = Server(scratch / f"data-{workers}", workers=workers)
    cpu = server.cpu_seconds
    kinds = ("produce-json", "produce-binary", "single", "paced", "e2e")
    topics = [f"{kind}-{n}" for kind in kinds for n in range(runs)]
    try:
        read_records, per_fetch = asyncio.run(
            _prepare(server, topics, bodies.batch_binary.read_bytes())
        )
        auth = f"Authorization:Bearer {server.key}"
        produce = [
            ("json", bodies.batch_json, wire.JSON),
            ("binary", bodies.batch_binary, wire.BATCH),
        ]

        def wrk(key: str, path: str, script: Path, script_args: list[str], connections: int,
                records: Callable[[WrkRun], float]) -> None:  # fmt: skip
            result = wrk_load(
                server.url + path, cpu, script, [*script_args, auth],
                connections=connections, seconds=seconds, records=records,
            )  # fmt: skip
            results.add(f"{key}-w{workers}", result)

        for n in range(runs):
            for fmt, body, kind in produce:
                path = f"/v1/topics/produce-{fmt}-{n}/records"
                script_args = ["POST", str(body), f"Content-Type:{kind}"]
                wrk(f"produce-{fmt}", path, REQUEST_SCRIPT, script_args, BATCH_CLIENTS,
                    lambda run: run.requests * BATCH)  # fmt: skip
            query = f"offset=0&max_records={BATCH}&max_bytes={MAX_BYTES}"
            wrk("read-binary", f"/v1/topics/filled/partitions/0/records?{query}", REQUEST_SCRIPT,
                ["GET", "-", f"Accept:{wire.BATCH}"], READERS,
                lambda run: run.requests * read_records)  # fmt: skip
            wrk("fetch-binary", "", GROUP_FETCH_SCRIPT,
                ["filled", f"r{n}", str(BATCH), str(MAX_BYTES)], READERS,
                lambda run: run.counters["answer_bytes"] * per_fetch)  # fmt: skip
            wrk("single", f"/v1/topics/single-{n}/records", REQUEST_SCRIPT,
                ["POST", str(bodies.single), f"Content-Type:{wire.JSON}"], SINGLE_CLIENTS,
                lambda run: run.requests)  # fmt: skip
            for kind in ("paced", "e2e"):
                args = [*_single_args(seconds), "--rate", str(RATE), "--topic", f"{kind}-{n}"]
                scenario = "produce" if kind == "paced" else "e2e"
                result = http_load(server.url, server.key, cpu, scenario, *args)
                results.add(f"{kind}-w{workers}", result)
            asyncio.run(_delete(server, [f"produce-json-{n}", f"produce-binary-{n}"]))
    finally:
        server.stop()


async def _delete(server: Server, topics: list[str]) -> None:
    """Drop what a run produced, so that the disk holds one run's records at a time."""
    async with AsyncClient(server.url, server.key) as client:
        for name in topics:
            await client.delete_topic(name)


def measure_redis(results: Results, peer: RedisPeer, runs: int, seconds: float) -> None:
    """Redis through redis-benchmark: XADD at each setting then XRANGE of what it wrote,
    and single-command XADD; a Redis that fails is reported so."""
    try:
        peer.start()
        results.versions[REDIS] = f"redis-server {peer.version()}, {redis_bench.version()}"
        cpu = tree_cpu(peer.process.pid) if peer.process else (lambda: 0.0)

        def bench(key: str, command: list[str], clients: int, pipeline: int, guess: float,
                  per_request: int) -> None:  # fmt: skip
            how = {"clients": clients, "pipeline": pipeline}
            requests = redis_bench.sized(peer.port, command, seconds=seconds, guess_rate=guess,
                                         **how)  # fmt: skip
            before = cpu()
            run, wall, load_cpu = redis_bench.run(peer.port, command, requests=requests, **how)
            result = {"rate": run.rate * per_request, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms}
            result.update(server_cpu=(cpu() - before) / wall, load_cpu=load_cpu / wall)
            results.add(key, result)

        for n in range(runs):
            for clients, pipeline in REDIS_SETTINGS:
                stream = f"s{n}-{clients}x{pipeline}"
                xadd = ["XADD", stream, "*", "v", REDIS_VALUE]
                bench(redis_xadd(clients, pipeline).key, xadd, clients, pipeline, 50_000, 1)
            for clients in REDIS_READERS:
                xrange = ["XRANGE", stream, "-", "+", "COUNT", str(BATCH)]
                bench(redis_xrange(clients).key, xrange, clients, 1, 200, BATCH)
            for clients, pipeline in REDIS_SETTINGS:
                redis_bench.drop_stream(peer.port, f"s{n}-{clients}x{pipeline}")
            single = ["XADD", f"single{n}", "*", "v", REDIS_VALUE]
            bench(redis_xadd(SINGLE_CLIENTS, 1).key, single, SINGLE_CLIENTS, 1, 10_000, 1)
            redis_bench.drop_stream(peer.port, f"single{n}")
    except (PeerUnavailableError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        results.failures[REDIS] = str(exc)
        print(f"{REDIS}: {exc}", flush=True)
    finally:
        peer.stop()


def rabbit_parallel(port: int, op: str, stream: str, cpu: Callable[[], float]) -> dict[str, Any]:
    """:data:`RABBIT_PROCESSES` processes of ``bench.rabbit_load`` that start together;
    their records over the time from the start to the last one's end."""
    start_at = time.time() + START_DELAY_S
    records = RABBIT_RECORDS * (1 if op == "produce" else RABBIT_PROCESSES)
    command = [sys.executable, "-m", "bench.rabbit_load", "--port", str(port), "--op", op]
    command += ["--stream", stream, "--records", str(records), "--start-at", f"{start_at:.6f}"]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(RABBIT_PROCESSES)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    before = cpu()
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_out, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{rabbit_load.__name__} {op} failed: {err.decode()[-500:]}")
    ran = [orjson.loads(out.splitlines()[-1]) for out, _err in outputs]
    wall = max(r["ended"] for r in ran) - start_at
    return {
        "rate": sum(r["records"] for r in ran) / wall,
        "server_cpu": (cpu() - before) / wall,
        "load_cpu": sum(r["load_cpu_s"] for r in ran) / wall,
    }


def measure_rabbit(results: Results, peer: RabbitStreamPeer, runs: int) -> None:
    try:
        peer.start()
        results.versions[RABBIT] = f"RabbitMQ {peer.version()}"
        cpu = tree_cpu(peer.process.pid) if peer.process else (lambda: 0.0)
        for n in range(runs):
            for op in ("produce", "consume"):
                results.add(f"rabbit-{op}", rabbit_parallel(peer.stream_port, op, f"s{n}", cpu))
    except (PeerUnavailableError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        results.failures[RABBIT] = str(exc)
        print(f"{RABBIT}: {exc}", flush=True)
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
        asyncio.run(_create(server, ["single"]))
        args = [*_single_args(seconds), "--concurrency", str(SINGLE_CLIENTS), "--topic", "single"]
        result = http_load(server.url, server.key, server.cpu_seconds, "produce", *args)
    finally:
        server.stop()
    files = sorted(str(p) for p in directory.glob("*.prof"))
    if not files:
        raise RuntimeError("the profiled server wrote no statistics")
    return pstats.Stats(*files), result


async def _create(server: Server, names: list[str]) -> None:
    async with AsyncClient(server.url, server.key) as client:
        for name in names:
            await client.create_topic(name, {"autoscale": {"enabled": False}})


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
        bodies = Bodies(scratch / "bodies")
        measure_echo(results, bodies, args.runs, args.seconds)
        for workers in WORKER_MODES:
            measure_eventbus(results, bodies, scratch, workers, args.runs, args.seconds)
        measure_redis(results, RedisPeer(scratch / "redis"), args.runs, args.seconds)
        measure_rabbit(results, RabbitStreamPeer(scratch / "rabbit"), args.runs)
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
