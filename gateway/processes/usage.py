"""Metering over worker processes: each counts its own requests and flushes them (the
catalog adds them up); the leader alone samples what tenants store and exports completed
hours, once every worker's counts of them are in the catalog; a reading first has every
other worker flush (``USAGE_SETTLE``). While the disk is full a worker cannot flush, and
a reading served by another worker lacks its counts since its last flush until it can."""

from __future__ import annotations

from typing import Any

from gateway.processes.peers import USAGE_SETTLE, USAGE_SETTLED, Peers
from gateway.tenancy.metering import Meter
from partitions.errors import DiskFullError, EventBusError


class SharedMeters:
    """The other workers' meters, as this worker's meter and exporter see them."""

    def __init__(self, peers: Peers, *, leader: bool) -> None:
        self._peers = peers
        self._leader = leader

    async def settle(self) -> None:
        await self._peers.broadcast(USAGE_SETTLE, None)

    async def settled_before(self, end_ms: int) -> bool:
        if not self._leader:
            return False  # the leader exports, once everyone's counts are in
        for worker in self._peers.clients:
            try:
                if not await self._peers.ask(worker, USAGE_SETTLED, end_ms):
                    return False
            except EventBusError:
                return False  # not reachable: its counts may still come
        return True


def serve_usage(peers: Peers, meter: Meter) -> None:
    """Flush (and sample) when another worker reads usage; say whether an hour is in."""

    async def settle(body: Any) -> None:
        await meter.sample()
        try:
            await meter.flush()
        except DiskFullError:
            # The reading goes on without this worker's counts since its last flush;
            # they stay here and are stored once there is room (metering's loop says so).
            pass

    async def settled(body: int) -> bool:
        return meter.settled_before(int(body))

    peers.register_json(USAGE_SETTLE, settle)
    peers.register_json(USAGE_SETTLED, settled)
