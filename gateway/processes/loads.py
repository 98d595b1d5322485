"""What each worker process carries: the bytes per second appended to each partition it
owns (a moving average over seconds) and its active partitions, for placement
(``placement.py``), which asks every worker for its load (``LOAD``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gateway.processes.peers import LOAD, Peers
from partitions.errors import EventBusError
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker

LOAD_INTERVAL_S = 1.0


def key_json(key: PartitionKey) -> list[Any]:
    return [key.tenant, key.incarnation, key.partition_id]


def key_of(item: list[Any]) -> PartitionKey:
    return PartitionKey(str(item[0]), str(item[1]), int(item[2]))


class Loads:
    """The load of this worker's partitions, measured every :data:`LOAD_INTERVAL_S`."""

    def __init__(self, local: LocalPartitionWorker) -> None:
        self._local = local
        # Bytes per second appended to each partition owned here (a moving average).
        self._rates: dict[PartitionKey, float] = {}
        self._counted: dict[PartitionKey, int] = {}
        self.bytes_per_s = 0.0

    def register(self, peers: Peers) -> None:
        peers.register_json(LOAD, self.load)

    async def load(self, body: dict[str, Any]) -> dict[str, Any]:
        """This worker's load, and the rates of the partitions ``body`` names."""
        active = 0
        for key in self._local.partition_keys():
            with contextlib.suppress(EventBusError):
                if not self._local.log(key).sealed:
                    active += 1
        keys = [key_of(item) for item in body.get("keys", [])]
        return {
            "rate": self.bytes_per_s,
            "active": active,
            "rates": [self._rates.get(key, 0.0) for key in keys],
        }

    async def measure_forever(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(LOAD_INTERVAL_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            counted = dict(self._local.appended_bytes)
            rates: dict[PartitionKey, float] = {}
            for key, nbytes in counted.items():
                rate = (nbytes - self._counted.get(key, 0)) / elapsed
                previous = self._rates.get(key)
                rates[key] = rate if previous is None else (rate + previous) / 2
            self._rates, self._counted = rates, counted
            self.bytes_per_s = sum(rates.values())
