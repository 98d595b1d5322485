"""The API keys' last uses over worker processes: each worker notes the uses of the keys it
authenticates and writes them to the catalog behind its requests; a key listing, whichever
worker serves it, asks the others for what they noted and did not write yet
(``KEY_USES``), so that it shows every key's newest use."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.processes.peers import KEY_USES, Peers
from gateway.tenancy.key_uses import KeyUses
from partitions.errors import EventBusError


class SharedKeyUses:
    """The other workers' noted key uses, as this worker's listing sees them."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers

    async def unwritten(self, tenant: str) -> dict[str, int]:
        async def one(worker: int) -> dict[str, int]:
            try:
                answer = await self._peers.ask(worker, KEY_USES, tenant)
            except EventBusError:
                return {}  # restarting: what it noted is lost, as in a crash
            return {str(k): int(v) for k, v in answer.items()}

        merged: dict[str, int] = {}
        for uses in await asyncio.gather(*(one(w) for w in self._peers.clients)):
            for key_id, used_ms in uses.items():
                merged[key_id] = max(used_ms, merged.get(key_id, used_ms))
        return merged


def serve_key_uses(peers: Peers, uses: KeyUses) -> None:
    """Say what this worker noted of a tenant's keys and did not write yet."""

    async def unwritten(body: Any) -> dict[str, int]:
        return uses.unwritten_here(str(body))

    peers.register_json(KEY_USES, unwritten)
