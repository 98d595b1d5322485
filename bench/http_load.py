"""Load generator of the HTTP benchmark: one scenario, in its own process.

``python -m bench.http_load --url URL --key KEY --scenario NAME ...`` runs ``--concurrency``
loops against the server for ``--seconds`` and prints one JSON line: requests, records,
payload bytes, seconds, latency percentiles and errors. ``bench.http_bench`` starts the
server and runs one of these per scenario, so the load never shares a process with it.

Scenarios:

- ``produce``: ``--batch`` records of 1 KiB per request, JSON or binary (``--format``),
  every request with its own ``Idempotency-Key``, as the client sends them.
- ``read``: partition reads of up to 1000 records from a filled topic, each loop reading
  from offset 0 to the end and again; JSON or binary; records decoded by the reader.
- ``fetch``: consumer-group fetches of up to 1000 records with ``auto_commit``, each loop
  its own group; when a group reaches the end the loop starts a new group.
- ``echo``: the produce requests, sent to a bare aiohttp server's ``POST /echo``
  (``bench.echo_server``): what aiohttp alone costs per request, the ceiling for ours.
- ``e2e``: end-to-end latency. A group member joins at the end of the topic and
  long-polls (binary fetches with ``wait_ms``) while a producer sends ``--rate``
  single-record requests per second, each record's value starting with its send time
  (nanoseconds since the epoch); the member records receive time minus send time.

Options for the comparison benchmark (``bench.compare_bench``):

- ``--rate R`` (produce, echo): open loop at a fixed ``R`` requests per second instead of
  ``--concurrency`` closed loops; latency counts from when each request was due, so a
  request sent late because an earlier one was slow counts its wait too.
- ``--records N`` (produce): stop after ``N`` records, ``--seconds`` being a bound.
- ``--client raw`` (produce, echo, e2e's producer): a minimal HTTP/1.1 client on
  asyncio streams (one keep-alive connection per loop), several times cheaper per
  request than aiohttp's, so that a single load process can outrun the server.
- ``--count-only`` (binary read and fetch): count the records of an answer from its batch
  headers instead of decoding every record, so that the reader is not the bottleneck.

The printed line includes ``load_cpu_s``, the CPU this process used while the clock ran
(process start and request bodies prepared before it are not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.client import AsyncClient, wire
from partitions.batch import NewRecord, encode_batch, read_header

RECORD_BYTES = 1024
KEYS = 1000
READ_RECORDS = 1000
# The server's answers are not compressed: on loopback it would cost CPU and save nothing.
NO_COMPRESSION = {"Accept-Encoding": "identity"}
# An end-to-end record's value starts with its send time, in nanoseconds, this many digits.
STAMP_DIGITS = 20
# How long the end-to-end member waits for the last records once the producer stopped.
E2E_DRAIN_S = 10.0

# (path, body, headers) -> (status, answer body): one POST, by either client.
Post = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, bytes]]]


@dataclass
class Tally:
    requests: int = 0
    records: int = 0
    payload_bytes: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    # Records the produce loops have claimed, for --records.
    reserved: int = 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends a prepared POST and reads an answer
    framed by ``Content-Length`` (both servers measured here frame answers so). Nothing
    else of HTTP: it exists to cost the load process little per request."""

    def __init__(self, host: str, port: int, headers: str) -> None:
        self.host = host
        self.port = port
        self.headers = headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.headers}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode())
        self.writer.write(body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length: int | None = None
        close = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise RuntimeError("this client reads only answers with a Content-Length")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise RuntimeError("an answer without Content-Length")
        answer = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class RawPool:
    """Idle :class:`RawConnection` s, one taken per request in flight (new ones as needed)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.idle: list[RawConnection] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = self.idle.pop() if self.idle else RawConnection(self.host, self.port, self.headers)
        try:
            answer = await conn.post(path, body, headers)
        except BaseException:
            await conn.close()
            raise
        self.idle.append(conn)
        return answer

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()
        self.idle.clear()


def aiohttp_post(session: aiohttp.ClientSession, url: str) -> Post:
    async def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with session.post(url + path, data=body, headers=headers) as response:
            return response.status, await response.read()

    return post


def make_records(count: int, rng: random.Random) -> list[NewRecord]:
    out = []
    for _ in range(count):
        key = f"key-{rng.randrange(KEYS)}".encode()
        # Hex text: printable, so the JSON body carries it as it is.
        value = rng.randbytes((RECORD_BYTES - len(key) + 1) // 2).hex()[: RECORD_BYTES - len(key)]
        out.append(NewRecord(value=value.encode(), key=key, key_is_text=True, value_is_text=True))
    return out


def json_body(records: list[NewRecord]) -> bytes:
    return orjson.dumps(
        {"records": [{"key": (r.key or b"").decode(), "value": r.value.decode()} for r in records]}
    )


def binary_body(records: list[NewRecord]) -> bytes:
    return encode_batch(records, now_ms=int(time.time() * 1000), max_record_bytes=1 << 30)


def produce_bodies(args: argparse.Namespace, seed: int) -> list[bytes]:
    """A few distinct request bodies for one loop, encoded before the clock starts."""
    rng = random.Random(seed)  # noqa: S311 - test data
    bodies = []
    for _ in range(4):
        records = make_records(args.batch, rng)
        bodies.append(json_body(records) if args.format == "json" else binary_body(records))
    return bodies


def _produce_path(args: argparse.Namespace) -> str:
    return "/echo" if args.scenario == "echo" else f"/v1/topics/{args.topic}/records"


def _produce_headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {"Content-Type": wire.JSON if args.format == "json" else wire.BATCH}
    if not args.no_idempotency:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


async def produce_one(
    post: Post, args: argparse.Namespace, tally: Tally, body: bytes, since: float
) -> None:
    """One produce (or echo) request; its latency counts from ``since``."""
    status, answer = await post(_produce_path(args), body, _produce_headers(args))
    if status != 200:
        tally.errors += 1
        return
    tally.latencies.append(time.perf_counter() - since)
    tally.requests += 1
    tally.records += args.batch if args.scenario == "echo" else len(orjson.loads(answer)["offsets"])
    tally.payload_bytes += args.batch * RECORD_BYTES


async def produce_loop(
    post: Post,
    args: argparse.Namespace,
    tally: Tally,
    stop: float,
    bodies: list[bytes],
) -> None:
    for body in itertools.cycle(bodies):
        if time.monotonic() >= stop:
            return
        if args.records:
            if tally.reserved >= args.records:
                return
            tally.reserved += args.batch
        await produce_one(post, args, tally, body, time.perf_counter())


async def paced(
    args: argparse.Namespace, send: Callable[[int, float], Coroutine[Any, Any, None]]
) -> tuple[float, float]:
    """Call ``send(n, due)`` ``--rate`` times a second for ``--seconds``, each in its own
    task at its due time (an open loop: a slow answer does not delay the next request).
    Returns when every call finished: (the start, the time the last request was due)."""
    interval = 1.0 / args.rate
    total = max(1, int(args.rate * args.seconds))
    pending: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for n in range(total):
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(n, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return start, start + (total - 1) * interval


async def paced_produce(post: Post, args: argparse.Namespace, tally: Tally) -> None:
    bodies = produce_bodies(args, 0)

    async def send(n: int, due: float) -> None:
        await produce_one(post, args, tally, bodies[n % len(bodies)], due)

    await paced(args, send)


async def end_to_end(
    post: Post, client: AsyncClient, args: argparse.Namespace, tally: Tally
) -> None:
    """A long-polling member and a producer at ``--rate`` records/s, one record a request;
    every record carries its send time, and the member measures when it got it."""
    group = f"e2e-{uuid.uuid4().hex[:12]}"
    fetch: dict[str, Any] = {"max_records": READ_RECORDS, "auto_commit": True}
    joined = await client.fetch(
        args.topic, group, None, wait_ms=0, auto_offset_reset="latest", **fetch
    )
    member = joined.member_id
    padding = random.Random(0).randbytes(RECORD_BYTES).hex().encode()  # noqa: S311
    produced = 0
    producing = True

    async def consume() -> None:
        nonlocal member
        while producing or tally.records < produced:
            result = await client.fetch(args.topic, group, member, wait_ms=500, **fetch)
            now = time.time_ns()
            member = result.member_id
            for _partition, record in result.records:
                tally.latencies.append((now - int(record.value[:STAMP_DIGITS])) / 1e9)
                tally.records += 1
                tally.payload_bytes += len(record.value) + len(record.key or b"")

    async def send(n: int, _due: float) -> None:
        nonlocal produced
        key = f"key-{n % KEYS}".encode()
        stamp = f"{time.time_ns():0{STAMP_DIGITS}d}".encode()
        value = stamp + padding[: RECORD_BYTES - len(key) - STAMP_DIGITS]
        record = NewRecord(value=value, key=key, key_is_text=True, value_is_text=True)
        body = json_body([record]) if args.format == "json" else binary_body([record])
        status, _answer = await post(_produce_path(args), body, _produce_headers(args))
        if status == 200:
            tally.requests += 1
            produced += 1
        else:
            tally.errors += 1

    consumer = asyncio.create_task(consume())
    try:
        await paced(args, send)
        producing = False
        await asyncio.wait_for(asyncio.shield(consumer), E2E_DRAIN_S)
    except TimeoutError:
        # Records produced but never delivered to the member: errors, not latencies.
        tally.errors += produced - tally.records
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


def count_chunks(body: bytes) -> int:
    """Records of a binary read answer at or past each chunk's ``from_offset``, counted from
    the batch headers alone (the reader does not decode the records themselves)."""
    view = memoryview(body)
    pos = records = 0
    while pos < len(body):
        _partition, from_offset, length = wire.CHUNK_HEADER.unpack_from(body, pos)
        pos += wire.CHUNK_HEADER.size
        end = pos + length
        while pos < end:
            header = read_header(view, pos)
            records += header.next_offset - max(header.base_offset, from_offset)
            pos += header.total_size
    return records


async def read_loop(
    session: aiohttp.ClientSession,
    client: AsyncClient,
    args: argparse.Namespace,
    tally: Tally,
    stop: float,
) -> None:
    offset = 0
    url = f"{args.url}/v1/topics/{args.topic}/partitions/0/records"
    while time.monotonic() < stop:
        started = time.perf_counter()
        if args.format == "json" or args.count_only:
            params = {"offset": str(offset), "max_records": str(READ_RECORDS)}
            params["max_bytes"] = str(2 << 20)
            headers = NO_COMPRESSION if args.format == "json" else _BINARY_READ
            async with session.get(url, params=params, headers=headers) as response:
                raw = await response.read()
                next_offset = response.headers.get("Eventbus-Next-Offset")
            if args.format == "json":
                body = orjson.loads(raw)
                records = body["records"]
                count = len(records)
                size = sum(len(r["value"]) + len(r.get("key") or "") for r in records)
                offset = body["next_offset"]
            else:
                count, size = count_chunks(raw), len(raw)
                offset = int(next_offset or 0)
        else:
            result = await client.read(
                args.topic, 0, offset, max_records=READ_RECORDS, max_bytes=2 << 20, wait_ms=0
            )
            count = len(result.records)
            size = sum(len(r.value) + len(r.key or b"") for r in result.records)
            offset = result.next_offset
        tally.latencies.append(time.perf_counter() - started)
        tally.requests += 1
        tally.records += count
        tally.payload_bytes += size
        if count == 0:
            offset = 0


_BINARY_READ = {**NO_COMPRESSION, "Accept": wire.BATCH}


async def fetch_loop(
    session: aiohttp.ClientSession,
    client: AsyncClient,
    args: argparse.Namespace,
    tally: Tally,
    stop: float,
) -> None:
    member: str | None = None
    group = uuid.uuid4().hex[:12]
    url = f"{args.url}/v1/topics/{args.topic}/groups/{{group}}/fetch"
    while time.monotonic() < stop:
        started = time.perf_counter()
        if args.format == "json" or args.count_only:
            request: dict[str, Any] = {
                "max_records": READ_RECORDS,
                "max_bytes": 2 << 20,
                "auto_offset_reset": "earliest",
                "auto_commit": True,
            }
            if member:
                request["member_id"] = member
            headers = NO_COMPRESSION if args.format == "json" else _BINARY_READ
            async with session.post(
                url.format(group=group), data=orjson.dumps(request), headers=headers
            ) as response:
                raw = await response.read()
                member = response.headers.get("Eventbus-Member-Id")
            if args.format == "json":
                body = orjson.loads(raw)
                member = body["member_id"]
                count = len(body["records"])
                size = sum(len(r["value"]) + len(r.get("key") or "") for r in body["records"])
            else:
                count, size = count_chunks(raw), len(raw)
        else:
            result = await client.fetch(
                args.topic,
                group,
                member,
                max_records=READ_RECORDS,
                max_bytes=2 << 20,
                wait_ms=0,
                auto_commit=True,
                auto_offset_reset="earliest",
            )
            member = result.member_id
            count = len(result.records)
            size = sum(len(r.value) + len(r.key or b"") for _, r in result.records)
        tally.latencies.append(time.perf_counter() - started)
        tally.requests += 1
        tally.records += count
        tally.payload_bytes += size
        if count == 0:
            member, group = None, uuid.uuid4().hex[:12]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.key}"}
    connector = aiohttp.TCPConnector(limit=0)
    tally = Tally()
    raw = RawPool(args.url, headers)
    async with (
        aiohttp.ClientSession(headers=headers, connector=connector) as session,
        AsyncClient(args.url, args.key, accept_compression=False) as client,
    ):
        post = raw.post if args.client == "raw" else aiohttp_post(session, args.url)
        producing = args.scenario in ("produce", "echo")
        bodies = (
            [produce_bodies(args, n) for n in range(args.concurrency)]
            if producing and not args.rate
            else []
        )
        cpu = _cpu_s()
        stop = time.monotonic() + args.seconds
        started = time.perf_counter()
        loops: list[Awaitable[None]]
        if args.scenario == "e2e":
            loops = [end_to_end(post, client, args, tally)]
        elif producing and args.rate:
            loops = [paced_produce(post, args, tally)]
        elif producing:
            loops = [produce_loop(post, args, tally, stop, b) for b in bodies]
        elif args.scenario == "read":
            loops = [read_loop(session, client, args, tally, stop) for _ in range(args.concurrency)]
        else:
            loops = [
                fetch_loop(session, client, args, tally, stop) for _ in range(args.concurrency)
            ]
        try:
            await asyncio.gather(*loops)
        finally:
            await raw.close()
        elapsed = time.perf_counter() - started
        load_cpu = _cpu_s() - cpu
    return {
        "requests": tally.requests,
        "records": tally.records,
        "payload_bytes": tally.payload_bytes,
        "seconds": elapsed,
        "errors": tally.errors,
        "p50_ms": percentile(tally.latencies, 0.50) * 1000,
        "p99_ms": percentile(tally.latencies, 0.99) * 1000,
        "load_cpu_s": load_cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument(
        "--scenario", choices=("produce", "read", "fetch", "echo", "e2e"), required=True
    )
    parser.add_argument("--format", choices=("json", "binary"), required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-idempotency", action="store_true", help="produce without Idempotency-Key"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s, open loop")
    parser.add_argument("--records", type=int, default=0, help="produce: stop after this many")
    parser.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp")
    parser.add_argument(
        "--count-only", action="store_true", help="binary reads: count, do not decode"
    )
    args = parser.parse_args()
    if args.scenario == "e2e" and not args.rate:
        parser.error("e2e needs --rate")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
