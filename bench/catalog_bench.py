"""Catalog benchmark: the latency of each catalog operation on SQLite and on DynamoDB (moto),
and what each costs in DynamoDB calls and capacity units.

Run with ``make bench`` (or ``python -m bench.catalog_bench --output docs/benchmarks.md``).

Both stores run the same operations through the ``Catalog`` Protocol, one after the other,
``--runs`` times each after a warm-up; the figures are medians and 90th percentiles.
DynamoDB is moto's server in a process of its own on loopback, answering one request at a
time (as the tests run it): it measures this store's calls and round trips, not AWS, whose
latency is a few milliseconds a call. Capacity units are what moto reports through
``ReturnConsumedCapacity`` (it does not say which are reads and which writes); the
operations' AWS costs, by AWS's own rules, are worked out in docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aioboto3

from bench.moto import FAKE_AWS_ENV, start_moto
from bench.report import publish, section_head
from partitions.catalog import (
    HOUR_MS,
    Catalog,
    IdempotencyRecord,
    RemoteSegmentRecord,
    RemoteSegmentState,
    UsageCounters,
    UsageRecord,
)
from partitions.catalog_dynamodb import DynamoDbCatalog, TableNames, create_tables
from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_sqlite import SqliteCatalog


def say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Measured:
    name: str
    latencies_ms: list[float]
    calls: float  # DynamoDB calls per operation (0 for SQLite)
    units: float  # capacity units per operation, as reported


class Counter:
    """Operations numbered so that each run works on fresh names where it must."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def operations(catalog: Catalog) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """Each operation a request or a background loop makes, as one call."""
    count = Counter()
    hour = (time.time_ns() // 1_000_000) // HOUR_MS * HOUR_MS
    ten = {pid: 100 for pid in range(10)}

    async def create_topic() -> object:
        return await catalog.create_topic("bench", f"t{count.next()}", {})

    async def commit_ten() -> object:
        return await catalog.commit_offsets("bench", "wide", "g", ten)

    async def remember() -> object:
        n = count.next()
        record = IdempotencyRecord("bench", "orders", f"k{n}", "h", "{}", 2**62)
        return await catalog.remember_answer(record, now_ms=0)

    async def add_usage() -> object:
        delta = UsageRecord("bench", hour, UsageCounters(requests=1, bytes_in=1000))
        await catalog.add_usage([delta])
        return None

    async def segment_copy() -> object:
        incarnation = (await catalog.get_topic("bench", "orders")).incarnation
        base = count.next() * 100
        record = RemoteSegmentRecord(
            "bench",
            incarnation,
            0,
            base,
            base + 99,
            1000,
            0,
            0,
            f"k{base}",
            RemoteSegmentState.COPY_STARTED,
        )
        await catalog.add_remote_segment(record)
        return await catalog.set_remote_segment_state(
            "bench",
            incarnation,
            0,
            base,
            from_state=RemoteSegmentState.COPY_STARTED,
            to_state=RemoteSegmentState.COPY_FINISHED,
        )

    return [
        ("authenticate (find API key)", lambda: catalog.find_api_key("bench-hash")),
        ("get tenant", lambda: catalog.get_tenant("bench")),
        ("get topic", lambda: catalog.get_topic("bench", "orders")),
        ("list partitions (11 partitions)", lambda: catalog.list_partitions("bench", "wide")),
        ("create topic", create_topic),
        ("commit 10 partitions' offsets", commit_ten),
        ("get group (10 offsets)", lambda: catalog.get_group("bench", "wide", "g")),
        ("remember a produce answer", remember),
        ("find a produce answer", lambda: catalog.find_answer("bench", "orders", "k1", now_ms=0)),
        ("add usage (one tenant-hour)", add_usage),
        ("list a day of usage", lambda: catalog.list_usage(hour - 23 * HOUR_MS, hour + HOUR_MS)),
        ("segment copy (add, then finish)", segment_copy),
        ("touch an API key", lambda: catalog.touch_api_key("bench", "k", time.time_ns())),
    ]


async def prepare(catalog: Catalog) -> None:
    await catalog.create_tenant("bench")
    await catalog.add_api_key("bench", "k", "bench-hash", {"role": "full"})
    await catalog.create_topic("bench", "orders", {})
    await catalog.create_topic("bench", "wide", {})
    at = 1 << 63
    await catalog.split_partition("bench", "wide", 0, at=at, end_offset=0)  # 1, 2
    for pid in (1, 2, 3, 4):  # 3..10: ten active partitions, eleven in all
        low = (await catalog.get_partition("bench", "wide", pid)).hash_range
        await catalog.split_partition(
            "bench", "wide", pid, at=(low.start + low.end) // 2, end_offset=0
        )


def spent(dynamo: Dynamo | None) -> tuple[float, float]:
    """DynamoDB calls and capacity units spent so far (zeros for SQLite)."""
    if dynamo is None:
        return 0.0, 0.0
    stats = dynamo.usage.by_call.values()
    return float(sum(s.calls for s in stats)), sum(s.units for s in stats)


async def reshapes(catalog: Catalog, dynamo: Dynamo | None, runs: int) -> list[Measured]:
    """A split and a merge of one partition, each timed and counted on its own."""
    times: dict[str, list[float]] = {"split a partition": [], "merge two": []}
    costs = {name: [0.0, 0.0] for name in times}
    for n in range(runs + 2):
        name = f"r{n}"
        await catalog.create_topic("bench", name, {})
        steps = (
            (
                "split a partition",
                partial(catalog.split_partition, "bench", name, 0, at=1 << 63, end_offset=0),
            ),
            (
                "merge two",
                partial(catalog.merge_partitions, "bench", name, [1, 2], end_offsets=[0, 0]),
            ),
        )
        for label, step in steps:
            calls, units = spent(dynamo)
            started = time.perf_counter()
            await step()
            took = (time.perf_counter() - started) * 1000
            if n >= 2:
                times[label].append(took)
                after_calls, after_units = spent(dynamo)
                costs[label][0] += after_calls - calls
                costs[label][1] += after_units - units
    return [
        Measured(label, times[label], costs[label][0] / runs, costs[label][1] / runs)
        for label in times
    ]


async def measure(catalog: Catalog, runs: int) -> list[Measured]:
    await prepare(catalog)
    dynamo = catalog.dynamo if isinstance(catalog, DynamoDbCatalog) else None
    out = []
    for name, operation in operations(catalog):
        for _ in range(3):
            await operation()
        calls_before, units_before = spent(dynamo)
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            await operation()
            latencies.append((time.perf_counter() - started) * 1000)
        calls, units = spent(dynamo)
        out.append(
            Measured(name, latencies, (calls - calls_before) / runs, (units - units_before) / runs)
        )
    out.extend(await reshapes(catalog, dynamo, max(5, runs // 4)))
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, scratch: Path) -> list[str]:
    sqlite = await SqliteCatalog.open(scratch / "catalog.sqlite3")
    try:
        say("sqlite ...")
        on_sqlite = await measure(sqlite, args.runs)
    finally:
        await sqlite.close()
    moto, endpoint = start_moto(scratch, one_at_a_time=True)
    try:
        os.environ.update(FAKE_AWS_ENV)
        names = TableNames.from_prefix("bench")
        async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint) as client:
            await create_tables(client, names)
        dynamodb = await DynamoDbCatalog.open(names, endpoint_url=endpoint)
        try:
            say("dynamodb ...")
            on_dynamodb = await measure(dynamodb, args.runs)
        finally:
            await dynamodb.close()
    finally:
        moto.terminate()
        moto.wait(10)
    return report(args, scratch, on_sqlite, on_dynamodb)


def report(
    args: argparse.Namespace, scratch: Path, sqlite: list[Measured], dynamodb: list[Measured]
) -> list[str]:
    rows = []
    for s, d in zip(sqlite, dynamodb, strict=True):
        rows.append(
            f"| {s.name} | {statistics.median(s.latencies_ms):.2f} | "
            f"{quantile(s.latencies_ms, 0.9):.2f} | {statistics.median(d.latencies_ms):.2f} | "
            f"{quantile(d.latencies_ms, 0.9):.2f} | {d.calls:.1f} | {d.units:.1f} |"
        )
    return [
        *section_head(
            "Catalog operations: SQLite and DynamoDB (moto)",
            f"python -m bench.catalog_bench --runs {args.runs}",
            scratch,
            ("aioboto3", "moto"),
        ),
        f"Each operation {args.runs} times after three warm-up calls (splits and merges: "
        f"{max(5, args.runs // 4)} pairs on fresh topics), one after the other, through the "
        "`Catalog` Protocol. DynamoDB is moto's server in its own process on loopback, "
        "answering one request at a time: the latency is this store's round trips to moto "
        "(a Python server sharing the machine's two cores), not AWS's. Calls and units are "
        "per operation, as moto reports them (`ReturnConsumedCapacity`); the AWS costs are "
        "worked out in docs/operations.md.",
        "",
        "| operation | SQLite median ms | SQLite p90 ms | DynamoDB median ms | "
        "DynamoDB p90 ms | DynamoDB calls | capacity units (moto) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as scratch:
        lines = asyncio.run(run(args, Path(scratch)))
    publish(lines, args.output, "catalog")


if __name__ == "__main__":
    main()
