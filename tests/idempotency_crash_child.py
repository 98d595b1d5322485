"""``eventbus serve``, except that the process SIGKILLs itself right after the first batch
tagged with an idempotency key starting with ``die`` is durable, before any answer is sent;
the request's batches to other partitions are held back until then, so they are never
written.

So a test can make a crash fall exactly between an append and its answer, with the request
written only in part.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from gateway.cli.main import main
from partitions.batch import producer_tag
from partitions.idempotency import decode_tag
from partitions.log.values import AppendResult
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker

_append = LocalPartitionWorker.append


_dying: list[PartitionKey] = []


async def _append_then_die(
    self: LocalPartitionWorker, key: PartitionKey, batch: bytes
) -> AppendResult:
    tag = producer_tag(batch)
    if not tag or not decode_tag(tag).key.startswith("die"):
        return await _append(self, key, batch)
    if _dying:
        await asyncio.sleep(60)  # the process is killed long before
    _dying.append(key)
    await _append(self, key, batch)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


LocalPartitionWorker.append = _append_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
