"""Load for RabbitMQ Streams: one producer or consumer of the comparison, in a process.

``python -m bench.rabbit_load --port P --op produce|consume --stream S --records N
--start-at T`` connects with rbfly (the fastest RabbitMQ Streams client for Python that
installs here: its codec and publisher are compiled with Cython), waits until the wall
clock reaches ``T`` so that several of these processes start together, then:

- produce: ``--records`` messages of ``--value-bytes`` to stream ``S`` in batches of
  ``--batch`` (``PublisherBatchFast``: a batch is sent, then ``flush`` waits until the
  broker confirmed every message of it);
- consume: subscribes to ``S`` from its first offset and counts ``--records`` messages.

It prints one JSON line: records, the wall clock when it started and ended, and the CPU
seconds it used in between. RabbitMQ's own load tool is a Java program that no package
source here ships, so this is a Python client, and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from typing import Any

import orjson

# RabbitMQ's default user, which may connect only from loopback: a scratch node's, not a secret.
RABBIT_USER = "guest"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _until(start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.time()))


async def produce(client: Any, args: argparse.Namespace) -> int:
    import rbfly.streams as rbs

    value = os.urandom(args.value_bytes // 2 + 1).hex().encode()[: args.value_bytes]
    await client.create_stream(args.stream)
    async with client.publisher(args.stream, cls=rbs.PublisherBatchFast) as publisher:
        await _until(args.start_at)
        sent = 0
        while sent < args.records:
            count = min(args.batch, args.records - sent)
            for _ in range(count):
                publisher.batch(value)
            await publisher.flush()
            sent += count
    return sent


async def consume(client: Any, args: argparse.Namespace) -> int:
    import rbfly.streams as rbs

    await _until(args.start_at)
    got = 0
    async for _message in client.subscribe(args.stream, offset=rbs.Offset.offset(0)):
        got += 1
        if got >= args.records:
            break
    return got


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import rbfly.streams as rbs

    uri = f"rabbitmq-stream://{RABBIT_USER}:{RABBIT_USER}@127.0.0.1:{args.port}"
    client = rbs.streams_client(uri)
    try:
        work = produce if args.op == "produce" else consume
        task = asyncio.create_task(work(client, args))
        await _until(args.start_at)
        cpu = _cpu_s()
        records = await task
        ended = time.time()
        return {"records": records, "ended": ended, "load_cpu_s": _cpu_s() - cpu}
    finally:
        await client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--op", choices=("produce", "consume"), required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="wall clock, epoch s")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    result["started"] = args.start_at
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
