"""Child process of the crash tests: appends from concurrent producers until killed.

Prints ``READY <high watermark>`` once open, then one ``ACK <producer> <seq> <count>
<base offset>`` line per append whose future resolved (that is, durable), flushed at once.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from partitions.batch import NewRecord
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig

CONFIG = LogConfig(segment_bytes=64 * 1024, index_interval_bytes=1024)


def value_for(producer: str, seq: int, filler: int) -> bytes:
    return f"{producer}:{seq}:".encode() + b"x" * filler


async def main(directory: Path, tag: str, seed: int) -> None:
    rng = random.Random(seed)
    log = await PartitionLog.open(directory, CONFIG)
    out = sys.stdout
    out.write(f"READY {log.high_watermark}\n")
    out.flush()

    async def producer(name: str) -> None:
        seq = 0
        while True:
            count = rng.randint(1, 4)
            records = [
                NewRecord(value=value_for(name, seq + i, rng.randint(0, 3000)))
                for i in range(count)
            ]
            result = await log.append_records(records)
            out.write(f"ACK {name} {seq} {count} {result.base_offset}\n")
            out.flush()
            seq += count

    await asyncio.gather(*(producer(f"{tag}p{i}") for i in range(8)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
