"""Child process of the catalog crash test: splits and merges partitions until killed.

Prints ``READY`` once open, then ``DONE <created ids>`` after each committed change.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from partitions.catalog_sqlite import SqliteCatalog
from partitions.errors import TenantExistsError, TopicExistsError


async def main(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    catalog = await SqliteCatalog.open(path)
    try:
        await catalog.create_tenant("acme")
    except TenantExistsError:
        pass
    try:
        await catalog.create_topic("acme", "orders", {})
    except TopicExistsError:
        pass
    print("READY", flush=True)
    step = 0
    while True:
        step += 1
        active = sorted(
            (p for p in await catalog.list_partitions("acme", "orders") if p.active),
            key=lambda p: p.hash_range.start,
        )
        if len(active) > 8 or (len(active) > 1 and rng.random() < 0.4):
            i = rng.randrange(len(active) - 1)
            change = await catalog.merge_partitions(
                "acme",
                "orders",
                [active[i].partition_id, active[i + 1].partition_id],
                end_offsets=[step, step],
            )
        else:
            target = rng.choice([p for p in active if p.hash_range.end - p.hash_range.start > 1])
            at = rng.randrange(target.hash_range.start + 1, target.hash_range.end)
            change = await catalog.split_partition(
                "acme", "orders", target.partition_id, at=at, end_offset=step
            )
        ids = ",".join(str(p.partition_id) for p in change.created)
        print(f"DONE {ids}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
