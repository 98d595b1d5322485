"""HTTP benchmark: produce and consume through a real server, JSON against binary.

Run with ``make bench`` (or ``python -m bench.http_bench --output docs/benchmarks.md``).

Starts ``eventbus serve`` on loopback with a fresh data directory, then runs each scenario
of :mod:`bench.http_load` in a separate process, one after another: produce with 1 and 1000
records of 1 KiB per request, partition reads and consumer-group fetches of up to 1000
records, each in JSON and in the binary batch format. Reported per scenario: requests and
records per second, payload MB/s, p50 and p99 latency of a request, and the CPU that the
server and the load process used per second of wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.report import section_head, write_section
from gateway.client import AsyncClient
from partitions.batch import NewRecord

ROOT = Path(__file__).resolve().parent.parent
FILL_RECORDS = 200_000
FILL_BATCH = 1000


@dataclass(frozen=True)
class Scenario:
    scenario: str
    fmt: str
    batch: int
    concurrency: int

    @property
    def label(self) -> str:
        if self.scenario == "produce":
            per = "1 record" if self.batch == 1 else f"{self.batch} records"
            return f"produce, {per} per request"
        return "partition read" if self.scenario == "read" else "group fetch"


SCENARIOS = [
    Scenario("produce", "json", 1, 64),
    Scenario("produce", "binary", 1, 64),
    Scenario("produce", "json", 1000, 4),
    Scenario("produce", "binary", 1000, 4),
    Scenario("read", "json", 1000, 4),
    Scenario("read", "binary", 1000, 4),
    Scenario("fetch", "json", 1000, 4),
    Scenario("fetch", "binary", 1000, 4),
]


class Server:
    """An ``eventbus serve`` child process on a free loopback port: one process, or
    ``workers`` worker processes under a supervisor; ``module`` is what runs it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 0,
        module: str = "gateway.cli",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--log-level",
                "WARNING",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self.url = listening_url(self.process, "eventbus listening on ", 60, self.stop)
        credentials = dict(
            line.partition("=")[::2] for line in (data_dir / "credentials").read_text().split()
        )
        self.key = credentials["EVENTBUS_API_KEY"]

    def cpu_seconds(self) -> float:
        """CPU time of the server: its process and, with workers, the worker processes."""
        return sum(_cpu_seconds(pid) for pid in [self.process.pid, *_children(self.process.pid)])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        if self.process.stdout is not None:
            self.process.stdout.close()


def listening_url(
    process: subprocess.Popen[bytes], prefix: str, timeout_s: float, stop: Callable[[], None]
) -> str:
    """The URL a child server prints on its first line (after ``prefix``) once it listens;
    ``stop`` it and raise if it exits or says nothing within ``timeout_s``."""
    if process.stdout is None:
        raise RuntimeError("no pipe to the server")
    fd = process.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout_s
    while not line.endswith(b"\n"):
        if time.monotonic() > deadline or process.poll() is not None:
            stop()
            raise RuntimeError(f"the server did not start (no {prefix.strip()!r} line)")
        if select.select([fd], [], [], 0.1)[0]:
            line += os.read(fd, 4096)
    return line.decode().strip().removeprefix(prefix)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (workers are forked by a spawner, the server's child)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        out.extend(children)
        frontier.extend(children)
    return out


async def prepare(server: Server, topics: list[str]) -> None:
    """Create the topics; fill ``filled`` for the read and fetch scenarios."""
    async with AsyncClient(server.url, server.key) as client:
        for topic in topics:
            await client.create_topic(topic)
        value = b"v" * (1024 - 8)
        batch = [
            NewRecord(
                value=value,
                key=f"key-{n % 1000:04d}".encode(),
                key_is_text=True,
                value_is_text=True,
            )
            for n in range(FILL_BATCH)
        ]
        for _ in range(FILL_RECORDS // FILL_BATCH):
            await client.produce("filled", batch)


def run_load(
    server: Server, case: Scenario, topic: str, seconds: float, *, extra: Sequence[str] = ()
) -> dict[str, Any]:
    before_server = server.cpu_seconds()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        sys.executable,
        "-m",
        "bench.http_load",
        "--url",
        server.url,
        "--key",
        server.key,
        "--scenario",
        case.scenario,
        "--format",
        case.fmt,
        "--topic",
        topic,
        "--batch",
        str(case.batch),
        "--concurrency",
        str(case.concurrency),
        "--seconds",
        str(seconds),
        *extra,
    ]
    out = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=seconds + 120,
    )
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    wall = result["seconds"]
    result["server_cpu"] = (server.cpu_seconds() - before_server) / wall
    load_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    result["load_cpu"] = load_cpu / wall
    return result


def row(case: Scenario, result: dict[str, Any]) -> str:
    wall = result["seconds"]
    per = case.batch if case.scenario == "produce" else f"up to {case.batch}"
    cells = [
        case.label.split(",")[0],
        case.fmt,
        str(per),
        str(case.concurrency),
        f"{result['requests'] / wall:,.0f}",
        f"{result['records'] / wall:,.0f}",
        f"{result['payload_bytes'] / wall / 1e6:,.1f}",
        f"{result['p50_ms']:.1f}",
        f"{result['p99_ms']:.1f}",
        f"{result['server_cpu']:.2f}",
        f"{result['load_cpu']:.2f}",
        str(result["errors"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the report section here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each scenario")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="http-bench-", dir=args.dir))
    server = Server(scratch / "data")
    try:
        topics = [f"produce-{n}" for n in range(len(SCENARIOS))] + ["filled"]
        asyncio.run(prepare(server, topics))
        rows = []
        results: dict[tuple[str, str, int], dict[str, Any]] = {}
        for n, case in enumerate(SCENARIOS):
            topic = f"produce-{n}" if case.scenario == "produce" else "filled"
            result = run_load(server, case, topic, args.seconds)
            results[(case.scenario, case.fmt, case.batch)] = result
            rows.append(row(case, result))
            print(rows[-1], flush=True)
    finally:
        server.stop()
    if args.output:
        write_section(args.output, "http", report(args, scratch, rows, results))
        print(f"wrote {args.output}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _ratio(results: dict[tuple[str, str, int], dict[str, Any]], scenario: str, batch: int) -> str:
    binary = results[(scenario, "binary", batch)]
    json = results[(scenario, "json", batch)]
    if not json["records"]:
        return "n/a"
    return f"{binary['records'] / binary['seconds'] / (json['records'] / json['seconds']):.2f}x"


def report(
    args: argparse.Namespace,
    scratch: Path,
    rows: list[str],
    results: dict[tuple[str, str, int], dict[str, Any]],
) -> list[str]:
    command = "make bench  # runs python -m bench.http_bench --output docs/benchmarks.md"
    return [
        *section_head(
            "HTTP produce and consume",
            command,
            scratch,
            ("aiohttp", "orjson", "crc32c"),
        ),
        "One `eventbus serve` process with its defaults (TLS off) on loopback; each scenario's",
        f"load comes from a separate process (`bench/http_load.py`) for {args.seconds:g} s. "
        "Records are 1 KiB",
        "(key and text value). Produce requests each carry their own `Idempotency-Key`, as the",
        "client sends them; reads and fetches ask for up to 1000 records and 2 MiB, and the",
        "reader decodes every record (orjson for JSON, the batch decoder for binary).",
        f"Reads and fetches consume a topic filled with {FILL_RECORDS:,} records. Answers are",
        "not compressed (on loopback that costs CPU and saves nothing). Server and load share",
        "the machine's cores, so *CPU s/s* (CPU seconds per wall second) shows who is the limit.",
        "",
        "| case | format | records/request | concurrency | requests/s | records/s | payload MB/s"
        " | p50 ms | p99 ms | server CPU s/s | load CPU s/s | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Binary against JSON, records/s in the same run:",
        "",
        f"- produce, 1 record per request: {_ratio(results, 'produce', 1)}",
        f"- produce, 1000 records per request: {_ratio(results, 'produce', 1000)}",
        f"- partition read: {_ratio(results, 'read', 1000)}",
        f"- group fetch: {_ratio(results, 'fetch', 1000)}",
        "",
        "Who is the limit (a process using 0.9 CPU s/s or more is bound by its one core; the",
        "server also runs its fsync thread, whose kernel time counts in its CPU):",
        "",
        *[_limit(case, results[(case.scenario, case.fmt, case.batch)]) for case in SCENARIOS],
        "",
        "Profiled once (py-spy on the server, `--format binary --batch 1000`, one partition),",
        "its steps then timed on their own: a producer's batch is checked where it lies, in",
        "about 0.6 ms per request of 1000 records (`partitions/incoming.py`; decoding it and",
        "encoding it again took about 4 ms), and stored as it came, the producer tag inserted",
        "after its header (0.1 ms). What a request costs besides is the SHA-256 of its body for",
        "the `Idempotency-Key` (about 1.5 ms a MiB), the JSON answer of 1000 offsets (0.5 ms),",
        "and the disk: writes, fsyncs and tiering's copies of sealed segments. Binary reads and",
        "fetches are bound by the *reader* decoding records in Python (load CPU near 1), not",
        "by the server, which sends stored batch bytes as they are.",
        "",
    ]


def _limit(case: Scenario, result: dict[str, Any]) -> str:
    bound = [
        name
        for name, cpu in (("server", result["server_cpu"]), ("load", result["load_cpu"]))
        if cpu >= 0.9
    ]
    who = " and ".join(bound) if bound else "neither process (waiting on the disk or the network)"
    return f"- {case.label}, {case.fmt}: {who}"


if __name__ == "__main__":
    sys.exit(main())
