"""Partition log benchmark, next to the same disk's raw write+fsync speed.

Run with ``make bench`` (or ``python -m bench.log_bench --output docs/benchmarks.md``).

Every case runs ``--runs`` times (default 3) and the median is reported. The raw baselines
are measured by this script on the same directory, in the same run, so the ratios compare
like with like on whatever machine runs it:

- raw bandwidth: sequential ``write`` of the same bytes as one 1000-record batch, then
  ``fdatasync``, repeated; this is the ceiling for batched appends.
- raw fsync rate: a 1 KiB ``write`` then ``fdatasync``, repeated; the ceiling for appends
  that each wait for their own fsync.

Log cases append pre-encoded batches of 1 KiB records (the gateway encodes once; the log
validates, assigns offsets, writes and fsyncs), from several concurrent appenders.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report import section_head, write_section
from partitions.batch import NewRecord, encode_batch
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig

RECORD_BYTES = 1024
CASES = [
    # (records per batch, concurrent appenders)
    (1000, 1),
    (1000, 4),
    (100, 1),
    (100, 8),
    (1, 1),
    (1, 4),
    (1, 16),
    (1, 64),
    (1, 256),
]


@dataclass(frozen=True)
class Measurement:
    records_per_s: float
    mb_per_s: float
    fsyncs_per_s: float
    disk_busy: float  # share of wall time the writer spent in write+fsync
    cpu_share: float  # process CPU seconds per wall second (1.0 = one core busy)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_write_sync(directory: Path, chunk: int, seconds: float) -> tuple[float, float]:
    """Sequential ``write`` of ``chunk`` bytes then ``fdatasync``, repeated for ``seconds``.

    Answers (pairs per second, MB/s).
    """
    path = directory / "raw-write-sync"
    data = os.urandom(chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, data)
            os.fdatasync(fd)
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return count / elapsed, count * chunk / elapsed / 1e6


def encoded_batches(records_per_batch: int, distinct: int = 16) -> list[bytes]:
    batches = []
    for n in range(distinct):
        records = [
            NewRecord(value=os.urandom(RECORD_BYTES - 16), key=f"key-{n}-{i:06d}".encode())
            for i in range(records_per_batch)
        ]
        batches.append(encode_batch(records, now_ms=1, max_record_bytes=1 << 20))
    return batches


async def log_case(
    directory: Path, records_per_batch: int, appenders: int, seconds: float
) -> Measurement:
    batches = encoded_batches(records_per_batch)
    config = LogConfig(segment_bytes=512 * 1024 * 1024)
    log = await PartitionLog.open(directory, config)
    stop = False
    appended_bytes = 0
    appended_records = 0

    async def appender(n: int) -> None:
        nonlocal appended_bytes, appended_records
        i = n
        while not stop:
            batch = batches[i % len(batches)]
            result = await log.append(batch)
            appended_bytes += len(batch)
            appended_records += result.record_count
            i += 1

    # Warm up the executor and the page cache paths, then measure.
    await log.append(batches[0])
    commits_before = log.stats().group_commits
    sync_before = log.stats().sync_seconds
    appended_bytes = appended_records = 0
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(appender(n)) for n in range(appenders)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    commits = log.stats().group_commits - commits_before
    sync = log.stats().sync_seconds - sync_before
    await log.close()
    return Measurement(
        records_per_s=appended_records / elapsed,
        mb_per_s=appended_bytes / elapsed / 1e6,
        fsyncs_per_s=commits / elapsed,
        disk_busy=sync / elapsed,
        cpu_share=cpu / elapsed,
    )


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the markdown report here")
    parser.add_argument("--dir", type=Path, default=Path("bench/out"), help="scratch directory")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="log-bench-", dir=args.dir))
    try:
        return run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    batch_1000_bytes = len(encoded_batches(1000, distinct=1)[0])
    bandwidth, bandwidth_runs = median_of(
        args.runs, lambda: raw_write_sync(scratch, batch_1000_bytes, args.seconds)[1]
    )
    say(f"raw write+fdatasync bandwidth ({batch_1000_bytes} B writes): {bandwidth:.1f} MB/s")
    fsync_rate, fsync_runs = median_of(
        args.runs, lambda: raw_write_sync(scratch, RECORD_BYTES, args.seconds)[0]
    )
    say(f"raw write(1 KiB)+fdatasync rate: {fsync_rate:.0f}/s")

    rows = []
    results: dict[tuple[int, int], Measurement] = {}
    for records_per_batch, appenders in CASES:
        runs = []
        for n in range(args.runs):
            directory = scratch / f"log-{records_per_batch}-{appenders}-{n}"
            runs.append(
                asyncio.run(log_case(directory, records_per_batch, appenders, args.seconds))
            )
            shutil.rmtree(directory)
        med = Measurement(
            records_per_s=statistics.median(r.records_per_s for r in runs),
            mb_per_s=statistics.median(r.mb_per_s for r in runs),
            fsyncs_per_s=statistics.median(r.fsyncs_per_s for r in runs),
            disk_busy=statistics.median(r.disk_busy for r in runs),
            cpu_share=statistics.median(r.cpu_share for r in runs),
        )
        results[(records_per_batch, appenders)] = med
        line = (
            f"| {records_per_batch} | {appenders} | {med.records_per_s:,.0f} | "
            f"{med.mb_per_s:.1f} | {med.mb_per_s / bandwidth:.2f} | {med.fsyncs_per_s:,.0f} | "
            f"{med.records_per_s / max(med.fsyncs_per_s, 1e-9):.1f} | {med.disk_busy:.2f} | "
            f"{med.cpu_share:.2f} |"
        )
        rows.append(line)
        say(line)

    batched = max(results[(1000, 1)].mb_per_s, results[(1000, 4)].mb_per_s)
    single = results[(1, 1)]
    sweep = [(c, results[(1, c)]) for c in (1, 4, 16, 64, 256)]
    best_c, best = max(sweep, key=lambda item: item[1].records_per_s)
    disk_bound = [c for c, m in sweep if m.disk_busy >= 0.5]
    verdicts = [
        f"- Batched append reaches {batched / bandwidth:.2f} of the raw write+fsync bandwidth "
        f"(target: at least 0.50) -> {'met' if batched >= 0.5 * bandwidth else 'NOT met'}.",
        f"- One appender with batches of 1 makes {single.fsyncs_per_s:,.0f} fsyncs/s against "
        f"the raw {fsync_rate:,.0f}/s ({single.fsyncs_per_s / fsync_rate:.2f}); the rest of "
        "each round trip is the hand-off between the event loop and the writer thread.",
        "- Batches of 1 under concurrency: group commit lets one fsync serve many appends, "
        f"up to {best.records_per_s:,.0f} records/s at {best_c} appenders "
        f"({best.records_per_s / fsync_rate:.1f}x the raw fsync rate). The writer spends "
        "at least half of the wall time in write+fsync (disk busy >= 0.50) at "
        + (", ".join(str(c) for c in disk_bound) or "no")
        + " appenders: there the fsync rate is the limit. Beyond that the event loop's "
        "per-append work (one core, the GIL) is: see the CPU column.",
    ]
    for verdict in verdicts:
        say(verdict)

    if args.output:
        command = "make bench  # = python -m bench.log_bench --output docs/benchmarks.md"
        report = [
            *section_head(
                "Partition log (append with fsync)",
                command,
                scratch,
                ("aiohttp", "crc32c", "xxhash"),
            ),
            f"Each figure is the median of {args.runs} runs of {args.seconds:g} s. Records are "
            f"{RECORD_BYTES} bytes (value and key); batches are encoded before the clock starts.",
            "",
            "Raw baselines measured by the same script in the same directory:",
            "",
            f"- sequential write+fdatasync of {batch_1000_bytes}-byte writes (one 1000-record "
            f"batch): **{bandwidth:.1f} MB/s** (runs: "
            + ", ".join(f"{v:.1f}" for v in bandwidth_runs)
            + ")",
            f"- write(1 KiB)+fdatasync: **{fsync_rate:,.0f} per second** (runs: "
            + ", ".join(f"{v:,.0f}" for v in fsync_runs)
            + ")",
            "",
            "| records/batch | appenders | records/s | MB/s | of raw bandwidth | fsyncs/s "
            "| appends per fsync | disk busy | CPU s/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "What the numbers say:",
            "",
            *verdicts,
            "",
            "Reading the table: *of raw bandwidth* can pass 1 when several appenders' batches",
            "share one fsync (a group larger than the raw benchmark's one-batch write). *Disk",
            "busy* is the share of wall time the writer thread spent inside write+fsync; near 1",
            "the disk is the limit, well below 1 the event loop is. *CPU s/s* counts kernel time",
            "spent in fsync as well.",
            "",
            "### What profiling found",
            "",
            "Profiled with cProfile and timestamps around each stage of a single append",
            "(`write_plan` on the writer thread versus the whole round trip):",
            "",
            "- The first profile showed batch-of-1 appends at a quarter of the raw fsync rate.",
            "  The cause was a bug, not Python: `segment_ms` counted from the first record's",
            "  producer timestamp, so records with old timestamps rolled a segment every other",
            "  append. Rolls now count from the segment's first append (wall clock).",
            "- Each hop between the event loop and a thread pool costs about 100 us on this",
            "  virtual machine (measured with a no-op `run_in_executor`). The writer therefore",
            "  runs as a drain on a writer thread that keeps writing while appends keep",
            "  arriving, instead of one hop per group from a writer task.",
            "- Past about 16 concurrent appenders, the event loop's work per append (validate",
            "  the batch, queue it, resolve its future, wake its task) is the limit; that is",
            "  where the gateway's batching of records into batches matters.",
            "",
        ]
        write_section(args.output, "log", report)
        say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
