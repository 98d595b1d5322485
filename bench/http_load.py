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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway import wire
from gateway.client import AsyncClient
from partitions.batch import NewRecord, encode_batch

RECORD_BYTES = 1024
KEYS = 1000
READ_RECORDS = 1000
# The server's answers are not compressed: on loopback it would cost CPU and save nothing.
NO_COMPRESSION = {"Accept-Encoding": "identity"}


@dataclass
class Tally:
    requests: int = 0
    records: int = 0
    payload_bytes: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


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


async def produce_loop(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    tally: Tally,
    stop: float,
    bodies: list[bytes],
) -> None:
    content_type = wire.JSON if args.format == "json" else wire.BATCH
    url = f"{args.url}/v1/topics/{args.topic}/records"
    for body in itertools.cycle(bodies):
        if time.monotonic() >= stop:
            return
        started = time.perf_counter()
        headers = {"Content-Type": content_type}
        if not args.no_idempotency:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        async with session.post(url, data=body, headers=headers) as response:
            answer = await response.read()
        if response.status != 200:
            tally.errors += 1
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.requests += 1
        tally.records += len(orjson.loads(answer)["offsets"])
        tally.payload_bytes += args.batch * RECORD_BYTES


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
        if args.format == "json":
            params = {"offset": str(offset), "max_records": str(READ_RECORDS)}
            params["max_bytes"] = str(2 << 20)
            async with session.get(url, params=params, headers=NO_COMPRESSION) as response:
                body = orjson.loads(await response.read())
            records = body["records"]
            count = len(records)
            size = sum(len(r["value"]) + len(r.get("key") or "") for r in records)
            offset = body["next_offset"]
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
        if args.format == "json":
            request: dict[str, Any] = {
                "max_records": READ_RECORDS,
                "max_bytes": 2 << 20,
                "auto_offset_reset": "earliest",
                "auto_commit": True,
            }
            if member:
                request["member_id"] = member
            async with session.post(
                url.format(group=group), data=orjson.dumps(request), headers=NO_COMPRESSION
            ) as response:
                body = orjson.loads(await response.read())
            member = body["member_id"]
            count = len(body["records"])
            size = sum(len(r["value"]) + len(r.get("key") or "") for r in body["records"])
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
    async with (
        aiohttp.ClientSession(headers=headers, connector=connector) as session,
        AsyncClient(args.url, args.key, accept_compression=False) as client,
    ):
        bodies = (
            [produce_bodies(args, n) for n in range(args.concurrency)]
            if args.scenario == "produce"
            else []
        )
        stop = time.monotonic() + args.seconds
        started = time.perf_counter()
        if args.scenario == "produce":
            loops = [produce_loop(session, args, tally, stop, b) for b in bodies]
        elif args.scenario == "read":
            loops = [read_loop(session, client, args, tally, stop) for _ in range(args.concurrency)]
        else:
            loops = [
                fetch_loop(session, client, args, tally, stop) for _ in range(args.concurrency)
            ]
        await asyncio.gather(*loops)
        elapsed = time.perf_counter() - started
    return {
        "requests": tally.requests,
        "records": tally.records,
        "payload_bytes": tally.payload_bytes,
        "seconds": elapsed,
        "errors": tally.errors,
        "p50_ms": percentile(tally.latencies, 0.50) * 1000,
        "p99_ms": percentile(tally.latencies, 0.99) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--scenario", choices=("produce", "read", "fetch"), required=True)
    parser.add_argument("--format", choices=("json", "binary"), required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-idempotency", action="store_true", help="produce without Idempotency-Key"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
