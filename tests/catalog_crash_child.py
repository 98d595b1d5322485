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
from tests.catalog_checks import random_lineage_change


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
        change = await random_lineage_change(catalog, rng, step, max_active=8)
        ids = ",".join(str(p.partition_id) for p in change.created)
        print(f"DONE {ids}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
