"""Load generator for the peer brokers, run in a process of its own.

``python -m bench.peer_load --peer redis|rabbit --port P --op produce|consume --records N``
writes (or reads back from the first entry) ``N`` records of ``--value-bytes`` bytes and
prints one JSON line: records, seconds, and the CPU seconds this process used.

- Redis: ``XADD`` pipelined ``--batch`` commands per round trip (one fsync serves a whole
  pipeline under ``appendfsync always``); consume is ``XRANGE`` of ``--batch`` entries at a
  time from the first one.
- RabbitMQ Streams (rstream): ``send_batch`` of ``--batch`` messages with a confirmation
  callback per message; done when every message is confirmed. Consume subscribes from the
  first offset and counts messages until ``N``.
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


def _value(size: int) -> bytes:
    return os.urandom(size // 2 + 1).hex().encode()[:size]


def redis_produce(args: argparse.Namespace) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=args.port)
    value = _value(args.value_bytes)
    done = 0
    while done < args.records:
        pipe = client.pipeline(transaction=False)
        count = min(args.batch, args.records - done)
        for _ in range(count):
            pipe.xadd(args.stream, {"v": value})
        pipe.execute()
        done += count
    client.close()
    return done


def redis_consume(args: argparse.Namespace) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=args.port)
    start = "-"
    got = 0
    while got < args.records:
        entries = client.xrange(args.stream, min=start, count=args.batch)
        if not entries:
            break
        got += len(entries)
        last = entries[-1][0].decode()
        millis, _, seq = last.partition("-")
        start = f"{millis}-{int(seq) + 1}"
    client.close()
    return got


async def rabbit_produce(args: argparse.Namespace) -> int:
    from rstream import Producer

    value = _value(args.value_bytes)
    confirmed = 0
    all_confirmed = asyncio.Event()

    def on_confirm(_status: Any) -> None:
        nonlocal confirmed
        confirmed += 1
        if confirmed >= args.records:
            all_confirmed.set()

    async with Producer(
        "127.0.0.1", args.port, username=RABBIT_USER, password=RABBIT_USER
    ) as producer:
        await producer.create_stream(args.stream, exists_ok=True)
        sent = 0
        while sent < args.records:
            count = min(args.batch, args.records - sent)
            await producer.send_batch(args.stream, [value] * count, on_publish_confirm=on_confirm)
            sent += count
        await asyncio.wait_for(all_confirmed.wait(), timeout=300)
    return confirmed


async def rabbit_consume(args: argparse.Namespace) -> int:
    from rstream import Consumer, ConsumerOffsetSpecification, MessageContext, OffsetType

    got = 0
    enough = asyncio.Event()

    def on_message(_message: Any, _context: MessageContext) -> None:
        nonlocal got
        got += 1
        if got >= args.records:
            enough.set()

    async with Consumer(
        "127.0.0.1", args.port, username=RABBIT_USER, password=RABBIT_USER
    ) as consumer:
        await consumer.start()
        await consumer.subscribe(
            args.stream,
            on_message,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
            initial_credit=32,
        )
        await asyncio.wait_for(enough.wait(), timeout=300)
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=("redis", "rabbit"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--op", choices=("produce", "consume"), required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--stream", default="bench")
    args = parser.parse_args()
    cpu = _cpu_s()
    started = time.perf_counter()
    if args.peer == "redis":
        records = redis_produce(args) if args.op == "produce" else redis_consume(args)
    else:
        work = rabbit_produce(args) if args.op == "produce" else rabbit_consume(args)
        records = asyncio.run(work)
    seconds = time.perf_counter() - started
    result = {"records": records, "seconds": seconds, "load_cpu_s": _cpu_s() - cpu}
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
