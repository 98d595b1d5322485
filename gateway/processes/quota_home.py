"""Quotas that hold per tenant across every worker process.

A tenant's rate buckets and its stored-bytes measure live in one process, its *home*
(``homes.quota_home``). There the :class:`~gateway.tenancy.quotas.QuotaBook` charges them
as ever; the other processes ask the home for each charge (:class:`RemoteQuotaHome`,
``QUOTA``), and it answers exactly as it would its own requests (tokens taken, or a 429
with the wait). So N processes never give a tenant N buckets, and refusals name the same
exact ``retry_after_ms``.

A process asks only for the quotas the tenant has: a tenant without rate or storage quotas
(the usual case) costs no call at all. A call costs about a tenth of a millisecond on the
local socket; in exchange, counts are exact, which leases of tokens handed out in advance
would not be (tokens leased to an idle process are lost to the others). Charges made after
a request (the bytes a read returned, what a produce stored) go to the home without
waiting, in order: the same process's next admission for the tenant waits for them first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.processes.peers import QUOTA, Peers
from gateway.tenancy.quotas import QuotaBook
from partitions.errors import EventBusError

log = logging.getLogger(__name__)


class RemoteQuotaHome:
    """The buckets of the tenants whose home is worker ``home``, asked over the channel."""

    def __init__(self, peers: Peers, home: int) -> None:
        self._peers = peers
        self._home = home
        # Charges sent without waiting, per tenant, not answered yet.
        self._sent: dict[str, list[asyncio.Task[None]]] = {}

    async def ask(self, operation: str, tenant: str, cost: int) -> None:
        sent = self._sent.pop(tenant, None)
        if sent:
            await asyncio.gather(*sent, return_exceptions=True)
        await self._peers.ask(self._home, QUOTA, {"m": operation, "t": tenant, "c": cost})

    def tell(self, operation: str, tenant: str, cost: int) -> None:
        task = asyncio.get_running_loop().create_task(self._told(operation, tenant, cost))
        self._sent.setdefault(tenant, []).append(task)

    async def _told(self, operation: str, tenant: str, cost: int) -> None:
        try:
            await self._peers.ask(self._home, QUOTA, {"m": operation, "t": tenant, "c": cost})
        except EventBusError as exc:
            log.warning("quota %s of tenant %s not sent to its home: %s", operation, tenant, exc)
        finally:
            sent = self._sent.get(tenant)
            task = asyncio.current_task()
            if sent is not None and task in sent:
                sent.remove(task)
                if not sent:
                    del self._sent[tenant]


def serve_quotas(peers: Peers, book: QuotaBook) -> None:
    """Answer the other processes' charges of the tenants whose home is here."""

    async def charge(body: dict[str, Any]) -> None:
        await book.serve(str(body["m"]), str(body["t"]), int(body["c"]))

    peers.register_json(QUOTA, charge)
