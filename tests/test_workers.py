"""`eventbus serve --workers N`: real worker processes on one port, a worker SIGKILLed under
load and restarted, a tenant's quota held across processes, placement by measured
throughput, and a drain at SIGTERM; and the pure pieces (placement, merged metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from autoscaler.measure import Geometry, LoadMeters, MeterOutbox
from gateway.broker.service import key_hash
from gateway.client import AsyncClient
from gateway.http.metrics import merge_metrics
from gateway.processes.placement import Replaced, WorkerLoad, place
from partitions.batch import NewRecord
from partitions.incoming import RecordList
from partitions.partition_key import PartitionKey
from tests.clocks import QUOTA_CLOCK_FILE_ENV, USAGE_CLOCK_FILE_ENV
from tests.conftest import ADMIN_KEY
from tests.https import FakeClock
from tests.servers import CLOCK_FILES, CLOCKED_SERVER, WORKERS, ServerProcess

pytestmark = [
    pytest.mark.slow,
    # These start their own worker processes: once is enough.
    pytest.mark.skipif(WORKERS > 0, reason="runs its own worker processes in every mode"),
]


@contextlib.contextmanager
def workers(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Two worker processes; with a clock file in ``env``, on the clocks the test moves."""
    clocked = any(name in (env or {}) for name in CLOCK_FILES.values())
    server = ServerProcess(
        tmp_path / "data",
        args=["--workers", "2", *args],
        env={"EVENTBUS_ADMIN_KEY": ADMIN_KEY, **(env or {})},
        module=CLOCKED_SERVER if clocked else "gateway.cli",
    ).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            assert server.stop() == 0, server.stderr()[-3000:]
        server.kill()  # closes its pipe when the test stopped it itself


def worker_pid(server: ServerProcess, index: int) -> int:
    return int((server.data_dir / "run" / f"worker-{index}.pid").read_text())


def http_socket(server: ServerProcess, index: int) -> Path:
    """Worker ``index``'s own HTTP socket: a request sent there is served by that worker."""
    return server.data_dir / "run" / f"worker-{index}-http.sock"


@contextlib.asynccontextmanager
async def worker_session(server: ServerProcess, index: int) -> AsyncIterator[aiohttp.ClientSession]:
    """An admin session whose requests worker ``index`` serves."""
    async with session(connector=aiohttp.UnixConnector(path=str(http_socket(server, index)))) as s:
        yield s


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.stderr().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


@contextlib.asynccontextmanager
async def session(key: str = ADMIN_KEY, **kwargs: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, **kwargs) as s:
        yield s


async def describe(http: aiohttp.ClientSession, url: str, topic: str) -> dict[str, Any]:
    async with http.get(f"{url}/v1/topics/{topic}") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def split(http: aiohttp.ClientSession, url: str, topic: str, partition: int) -> Any:
    async with http.post(f"{url}/v1/topics/{topic}/partitions/{partition}/split") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def restarted(server: ServerProcess, index: int, old_pid: int) -> None:
    """Wait (at most 30 s) until the supervisor started worker ``index`` again and it
    serves."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if worker_pid(server, index) != old_pid and http_socket(server, index).exists():
                async with (
                    aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=str(http_socket(server, index)))
                    ) as local,
                    local.get("http://worker/healthz") as response,
                ):
                    if response.status == 200:
                        return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {index} was not started again")


# --- a worker SIGKILLed under load ---------------------------------------------------------


async def test_a_worker_killed_under_load_is_restarted_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    """Four clients produce with idempotency keys (the Python client's) while each worker
    in turn is SIGKILLed: the supervisor starts it again, it recovers its partitions, and
    every record acknowledged is stored exactly once, where its answer said."""
    with workers(tmp_path) as server:
        key = server.keys["EVENTBUS_API_KEY"]
        async with session(key) as http:
            async with http.put(f"{server.url}/v1/topics/t") as response:
                assert response.status == 201
            await split(http, server.url, "t", 0)
            topic = await describe(http, server.url, "t")
            owners = {p["id"]: p["worker"] for p in topic["partitions"] if p["state"] == "active"}
            assert sorted(owners.values()) == [0, 1], owners  # one child on each worker
        acked: dict[str, tuple[int, int]] = {}
        stop = asyncio.Event()
        phases = Counter[str]()
        going_on = asyncio.Event()  # 20 batches acknowledged since the latest restart
        phase = "before"

        async def produce(client_no: int) -> None:
            async with AsyncClient(server.url, key, retries=60, timeout=10) as client:
                for batch_no in range(1_000_000):
                    if stop.is_set():
                        return
                    values = [f"c{client_no}-b{batch_no}-r{n}" for n in range(20)]
                    records = [(f"key-{client_no}-{n % 7}", v) for n, v in enumerate(values)]
                    placed = await client.produce("t", records)
                    acked.update(zip(values, placed, strict=True))
                    phases[phase] += 1
                    if phase.startswith("after") and phases[phase] >= 20:
                        going_on.set()

        producers = [asyncio.ensure_future(produce(n)) for n in range(4)]
        try:
            await asyncio.sleep(1.0)
            for index in (1, 0):  # the leader too
                old = worker_pid(server, index)
                phase = f"killed {index}"
                os.kill(old, signal.SIGKILL)
                await restarted(server, index, old)
                phase = f"after {index}"
                # Produce goes on after the restart: clients back off while the worker is
                # down, so wait for their batches (at most 30 s) rather than a fixed time.
                going_on.clear()
                await asyncio.wait_for(going_on.wait(), timeout=30)
        finally:
            stop.set()
            await asyncio.gather(*producers)
        assert phases["before"] and phases["after 1"] and phases["after 0"], phases
        stored: dict[str, list[tuple[int, int]]] = {}
        async with AsyncClient(server.url, key) as client:
            for pid in owners | {0: 0}:
                offset = 0
                while True:
                    got = await client.read("t", pid, offset, max_records=10_000)
                    for record in got.records:
                        stored.setdefault(record.value.decode(), []).append((pid, record.offset))
                    if got.next_offset >= got.high_watermark:
                        break
                    offset = got.next_offset
        doubled = {value: places for value, places in stored.items() if len(places) > 1}
        assert not doubled, f"{len(doubled)} records stored twice"
        for value, place_acked in acked.items():
            assert stored.get(value) == [place_acked], value
        exits = [line for line in log_lines(server) if line.get("exit_code") == -9]
        assert sorted(line["worker"] for line in exits) == [0, 1]


async def test_a_worker_that_faults_leaves_its_stack_in_the_log_and_is_restarted(
    tmp_path: Path,
) -> None:
    """A worker killed by a fault (here SIGSEGV, as a crash in C code would) writes every
    thread's Python stack to the log before it dies, and the supervisor starts it again."""
    with workers(tmp_path) as server:
        old = worker_pid(server, 1)
        os.kill(old, signal.SIGSEGV)
        await restarted(server, 1, old)
        log = server.stderr()
        assert "Fatal Python error: Segmentation fault" in log
        assert "Current thread" in log or "Thread 0x" in log  # the stacks follow
        exits = [line for line in log_lines(server) if line.get("exit_code") == -signal.SIGSEGV]
        assert [line["worker"] for line in exits] == [1]


async def test_a_worker_lost_while_the_server_stops_is_named_and_the_exit_code_says_so(
    tmp_path: Path,
) -> None:
    """A worker that dies during shutdown is not restarted, but the supervisor says which
    one and how, and exits 1 rather than 0."""
    with workers(tmp_path) as server:
        assert server.process is not None
        victim = worker_pid(server, 0)
        os.kill(victim, signal.SIGSTOP)  # it cannot drain and exit 0 on its own
        try:
            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while "stopping: the workers finish" not in server.stderr():
                assert time.monotonic() < deadline, server.stderr()[-3000:]
                await asyncio.sleep(0.02)
        finally:
            os.kill(victim, signal.SIGKILL)
        code = await asyncio.to_thread(server.process.wait, 60)
        assert code == 1
        stopped = [
            line for line in log_lines(server) if "while the server stopped" in line.get("msg", "")
        ]
        assert [(line["worker"], line["exit_code"]) for line in stopped] == [(0, -signal.SIGKILL)]


# --- quotas across processes -----------------------------------------------------------------


async def test_a_tenants_request_quota_holds_across_worker_processes(tmp_path: Path) -> None:
    """Requests on fresh connections land on both workers (the kernel spreads them), yet
    the tenant gets one bucket, not one per process: counted on a clock the test moves,
    the bucket's 30 at once, then 30 per second, within 10%."""
    clock = FakeClock()
    clock.share(tmp_path / "clock")
    with workers(tmp_path, env={QUOTA_CLOCK_FILE_ENV: str(tmp_path / "clock")}) as server:
        async with session() as http:
            async with http.post(
                f"{server.url}/v1/admin/tenants",
                json={"name": "acme", "quotas": {"requests_per_s": 30}},
            ) as response:
                assert response.status == 201
                acme_key = (await response.json())["api_key"]
        fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request
        async with session(acme_key, connector=fresh) as acme:

            async def accepted_until_refused() -> int:
                count = 0
                while True:
                    async with acme.get(f"{server.url}/v1/topics") as response:
                        if response.status == 429:
                            body = await response.json()
                            assert body["error"]["details"]["quota"] == "requests_per_s"
                            return count
                        assert response.status == 200
                        count += 1

            assert await accepted_until_refused() == 30  # the full bucket, once
            assert await accepted_until_refused() == 0
            accepted = 0
            for _ in range(100):  # ten seconds, a tenth at a time
                clock.advance(0.1)
                accepted += await accepted_until_refused()
            assert abs(accepted - 300) <= 30, accepted
        served = Counter(
            line["worker"]
            for line in log_lines(server)
            if line.get("tenant") == "acme" and line.get("status") == 200
        )
        assert served[0] >= 30 and served[1] >= 30, served  # both processes took a share


async def test_metering_counts_requests_and_storage_once_across_workers(tmp_path: Path) -> None:
    """Requests land on both workers and each counts its own; storage is sampled by one
    worker only, so a tenant holding S bytes for half an hour (on a clock the test moves) is
    billed S x 1800 byte-seconds, not once per process; a reading is exact at once, and the
    same whichever worker serves it."""
    start_ms = (time.time_ns() // 1_000_000) // 1000 * 1000
    clock = FakeClock()
    clock.now = float(start_ms)
    clock.share(tmp_path / "usage-clock")
    env = {USAGE_CLOCK_FILE_ENV: str(tmp_path / "usage-clock")}
    flags = ("--usage-sample-ms", "20", "--usage-flush-ms", "20")
    with workers(tmp_path, *flags, env=env) as server:
        key = server.keys["EVENTBUS_API_KEY"]
        fresh = aiohttp.TCPConnector(force_close=True)
        async with session(key, connector=fresh) as http:
            async with http.put(f"{server.url}/v1/topics/t") as response:
                assert response.status == 201
            for n in range(20):
                records = {"records": [{"value": f"{n:04d}" + "v" * 96}]}
                async with http.post(f"{server.url}/v1/topics/t/records", json=records) as r:
                    assert r.status == 200
        async with session() as admin:
            async with admin.get(f"{server.url}/v1/admin/tenants/default") as response:
                stored = (await response.json())["in_use"]["stored_bytes"]
            hour = start_ms - start_ms % 3_600_000
            period = {
                "tenant": "default",
                "from": _hour_text(hour),
                "to": _hour_text(hour + 2 * 3_600_000),
            }
        # A reading has the leader sample storage first, also one the leader serves itself
        # (asked of the leader directly: through the shared port either worker may take it):
        # at the start, holding `stored` (rather than sleeping for the sampler's timer, which
        # a loaded machine delays).
        async with worker_session(server, 0) as leader:
            async with leader.get("http://worker/v1/admin/usage", params=period) as response:
                assert response.status == 200
        clock.advance(1800 * 1000)  # and the readings below sample half an hour later
        bills = []
        for index in (1, 0):
            async with (
                worker_session(server, index) as one,
                one.get("http://worker/v1/admin/usage", params=period) as response,
            ):
                assert response.status == 200
                bills.extend((await response.json())["tenants"])
        assert bills[0] == bills[1]  # the same bill from either worker
        usage = bills[0]["usage"]
        assert usage["requests"] == 21 and usage["records_in"] == 20
        assert usage["bytes_in"] == 20 * 100
        assert usage["stored_byte_seconds"] == stored * 1800
        assert usage["partition_seconds"] == 1800
        served = Counter(
            line["worker"] for line in log_lines(server) if line.get("route") == ROUTE_RECORDS
        )
        assert served[0] and served[1], served


ROUTE_RECORDS = "/v1/topics/{topic}/records"


def _hour_text(ms: int) -> str:
    from gateway.tenancy.metering import hour_text

    return hour_text(ms)


# --- placement -------------------------------------------------------------------------------


async def test_new_partitions_go_to_the_least_loaded_worker_and_splits_spread_a_hot_topic(
    tmp_path: Path,
) -> None:
    with workers(tmp_path) as server:
        key = server.keys["EVENTBUS_API_KEY"]
        async with session(key) as http:
            async with http.put(f"{server.url}/v1/topics/hot") as response:
                hot_worker = (await response.json())["partitions"][0]["worker"]
            stop = asyncio.Event()

            async def load() -> None:
                async with AsyncClient(server.url, key) as client:
                    while not stop.is_set():
                        await client.produce("hot", [(f"k{n}", "v" * 200) for n in range(200)])

            producer = asyncio.ensure_future(load())
            try:
                await asyncio.sleep(2.5)  # measured: the hot topic's worker carries load
                # New idle topics go to the other worker, though it then has more of them.
                placed = []
                for n in range(3):
                    async with http.put(f"{server.url}/v1/topics/idle-{n}") as response:
                        placed.append((await response.json())["partitions"][0]["worker"])
                assert placed == [1 - hot_worker] * 3
                # The hot partition's children: one stays, one goes to the other worker.
                change = await split(http, server.url, "hot", 0)
                children = [p["id"] for p in change["created"]]
                topic = await describe(http, server.url, "hot")
                workers_of = {p["id"]: p["worker"] for p in topic["partitions"]}
                assert sorted(workers_of[c] for c in children) == [0, 1]
            finally:
                stop.set()
                await producer
            # Both workers now take the hot topic's writes.
            stats = {
                p["id"]: p["end_offset"]
                for p in (await describe(http, server.url, "hot"))["partitions"]
            }
            assert all(stats[c] > 0 for c in children), stats


async def test_keyless_records_stay_on_the_worker_that_took_them(tmp_path: Path) -> None:
    """Keyless records may go to any partition: each worker spreads those it takes over its
    own active partitions, so they never cost a hop to another process."""
    with workers(tmp_path) as server:
        key = server.keys["EVENTBUS_API_KEY"]
        async with session(key) as http:  # one connection: one worker takes every request
            async with http.put(f"{server.url}/v1/topics/t") as response:
                assert response.status == 201
            await split(http, server.url, "t", 0)
            await split(http, server.url, "t", 1)
            await split(http, server.url, "t", 2)
            placed: set[int] = set()
            for _ in range(20):
                body = {"records": [{"value": "v"} for _ in range(5)]}
                async with http.post(f"{server.url}/v1/topics/t/records", json=body) as r:
                    placed |= {o["partition"] for o in (await r.json())["offsets"]}
            topic = await describe(http, server.url, "t")
        active = {p["id"]: p["worker"] for p in topic["partitions"] if p["state"] == "active"}
        assert sorted(active.values()) == [0, 0, 1, 1]
        owners = {active[p] for p in placed}
        assert len(owners) == 1, (placed, active)  # all on the worker that took them
        assert placed == {p for p, w in active.items() if w in owners}  # spread over both


# --- draining at SIGTERM ---------------------------------------------------------------------


async def test_sigterm_drains_every_worker_and_the_data_survives(tmp_path: Path) -> None:
    """At SIGTERM, requests in flight on either worker are answered (long-polls at once),
    including those that need the other worker's partitions; every worker closes its logs
    and the server exits 0. Started again, everything acknowledged is there."""
    with workers(tmp_path) as server:
        key = server.keys["EVENTBUS_API_KEY"]
        async with session(key, connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.put(f"{server.url}/v1/topics/t") as response:
                assert response.status == 201
            await split(http, server.url, "t", 0)
            produced = 0
            for n in range(20):
                records = [{"key": f"k{i}", "value": f"v{n}-{i}"} for i in range(10)]
                async with http.post(
                    f"{server.url}/v1/topics/t/records", json={"records": records}
                ) as response:
                    assert response.status == 200
                    produced += 10
            waits = [
                asyncio.ensure_future(
                    http.post(
                        f"{server.url}/v1/topics/t/groups/g{n}/fetch",
                        json={"auto_offset_reset": "latest", "wait_ms": 20_000},
                    )
                )
                for n in range(6)
            ]
            await asyncio.sleep(0.5)
            assert server.process is not None
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*waits)
            assert [a.status for a in answers] == [200] * 6
            for answer in answers:
                answer.release()
            code = await asyncio.to_thread(server.process.wait, 60)
            assert code == 0, server.stderr()[-3000:]
            assert time.monotonic() - started < 15  # the long-polls did not run out
    with workers(tmp_path) as server:
        async with session(server.keys["EVENTBUS_API_KEY"]) as http:
            topic = await describe(http, server.url, "t")
            assert sum(p["end_offset"] for p in topic["partitions"] if p["id"] != 0) == produced


# --- the pure pieces -------------------------------------------------------------------------


def test_placement_follows_throughput_then_partition_counts() -> None:
    idle = {0: WorkerLoad(0, 0), 1: WorkerLoad(0, 0)}
    assert place(idle, [], 1) == [0]
    assert place({0: WorkerLoad(0, 2), 1: WorkerLoad(0, 1)}, [], 3) == [1, 0, 1]
    # A hot partition's split: its load leaves its worker; the children share it.
    hot = {0: WorkerLoad(4e6, 1), 1: WorkerLoad(0, 3)}
    assert place(hot, [Replaced(0, 4e6)], 2) == [0, 1]
    # A hot worker gets nothing new while another is idle, whatever it holds.
    assert place({0: WorkerLoad(4e6, 1), 1: WorkerLoad(10, 9)}, [], 2) == [1, 1]
    # Loads within the quantum count as equal: the partition count decides.
    assert place({0: WorkerLoad(1000, 1), 1: WorkerLoad(100, 2)}, [], 1) == [0]
    with pytest.raises(ValueError, match="no worker"):
        place({}, [], 1)


def test_metrics_of_several_processes_add_up() -> None:
    one = (
        b"# HELP eventbus_x_total X\n# TYPE eventbus_x_total counter\n"
        b"eventbus_x_total 2.0\neventbus_x_created 100.0\n"
        b'# HELP eventbus_h Y\n# TYPE eventbus_h histogram\neventbus_h_bucket{le="+Inf"} 1.0\n'
    )
    two = (
        b"# HELP eventbus_x_total X\n# TYPE eventbus_x_total counter\n"
        b"eventbus_x_total 3.0\neventbus_x_created 90.0\n"
        b'# HELP eventbus_h Y\n# TYPE eventbus_h histogram\neventbus_h_bucket{le="+Inf"} 4.0\n'
    )
    merged = merge_metrics([one, two]).decode().splitlines()
    assert merged == [
        "# HELP eventbus_x_total X",
        "# TYPE eventbus_x_total counter",
        "eventbus_x_total 5.0",
        "eventbus_x_created 90.0",
        "# HELP eventbus_h Y",
        "# TYPE eventbus_h histogram",
        'eventbus_h_bucket{le="+Inf"} 5.0',
    ]


def test_meters_measured_in_one_process_add_up_in_another() -> None:
    now = [10_000]
    outbox = MeterOutbox(key_hash, clock_ms=lambda: now[0])
    key = PartitionKey("t", "inc", 0)
    records = RecordList([NewRecord(value=b"v" * 100, key=f"k{n}".encode()) for n in range(500)])
    config = {"autoscale": {"window_s": 1}}
    for n in range(0, 500, 10):
        outbox.record(key, config, 1000, records, list(range(n, n + 10)))
    now[0] += 150  # the next bucket
    outbox.record(key, config, 1000, records, list(range(10)))
    taken = outbox.take()
    assert [(at, bucket.nbytes, bucket.nrecords) for _, at, bucket in taken] == [
        (10_000, 50_000, 500),
        (10_100, 1000, 10),
    ]
    first = taken[0][2]
    assert len(first.samples) == 64  # thinned, each kept one standing for the rest
    assert sum(s.nrecords for s in first.samples) == pytest.approx(500)
    assert outbox.take() == []
    leader = LoadMeters(key_hash, clock_ms=lambda: 9_000)
    for shipped_key, at, bucket in taken:
        leader.add_measured(
            shipped_key, Geometry(200, 300), at, bucket.nbytes, bucket.nrecords, bucket.samples
        )
    leader.clock_ms = lambda: 10_400
    rate = leader.rate(key, _config(window_s=1))
    assert rate is not None
    assert rate[0].bytes_per_s == pytest.approx(51_000 / 0.2 / 5)  # one second, 5 slices


def _config(**knobs: int) -> Any:
    from autoscaler.config import autoscale_config

    return autoscale_config({"autoscale": knobs})
