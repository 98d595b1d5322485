"""Quotas that hold per tenant across every worker process.

A tenant's rate buckets and its stored-bytes measure live in one process, its *home*:
``hash(tenant) mod N``. There, :class:`SharedQuotaBook` is the ordinary
:class:`~gateway.quotas.QuotaBook`. In the other processes it asks the home for each
charge, over the channel, and the home answers exactly as it would its own requests
(tokens taken, or a 429 with the wait). So N processes never give a tenant N buckets, and
refusals name the same exact ``retry_after_ms``.

A process asks only for the quotas the tenant has: a tenant without rate or storage quotas
(the usual case) costs no call at all. A call costs about a tenth of a millisecond on the
local socket; in exchange, counts are exact, which leases of tokens handed out in advance
would not be (tokens leased to an idle process are lost to the others). Charges made after
a request (the bytes a read returned, what a produce stored) go to the home without waiting,
in order: the same process's next admission for the tenant waits for them first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.forwarding import stable_hash
from gateway.quotas import QuotaBook, Quotas
from partitions.errors import EventBusError

log = logging.getLogger(__name__)

# Asks the home worker to run one of the book's operations: (worker, request) -> None.
AskHome = Callable[[int, dict[str, Any]], Awaitable[None]]


def home_of(tenant: str, count: int) -> int:
    return stable_hash("quota", tenant) % count


class SharedQuotaBook(QuotaBook):
    def __init__(self, *args: Any, index: int, count: int, ask: AskHome, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.index = index
        self.count = count
        self._ask = ask
        self._sent: dict[str, list[asyncio.Task[None]]] = {}

    def is_home(self, tenant: str) -> bool:
        return home_of(tenant, self.count) == self.index

    async def _home(self, method: str, tenant: str, cost: int = 0) -> None:
        sent = self._sent.pop(tenant, None)
        if sent:
            await asyncio.gather(*sent, return_exceptions=True)
        await self._ask(home_of(tenant, self.count), {"m": method, "t": tenant, "c": cost})

    def _send(self, method: str, tenant: str, cost: int) -> None:
        task = asyncio.get_running_loop().create_task(self._home_later(method, tenant, cost))
        self._sent.setdefault(tenant, []).append(task)

    async def _home_later(self, method: str, tenant: str, cost: int) -> None:
        try:
            await self._ask(home_of(tenant, self.count), {"m": method, "t": tenant, "c": cost})
        except EventBusError as exc:
            log.warning("quota %s of tenant %s not sent to its home: %s", method, tenant, exc)
        finally:
            sent = self._sent.get(tenant)
            task = asyncio.current_task()
            if sent is not None and task in sent:
                sent.remove(task)
                if not sent:
                    del self._sent[tenant]

    async def _limited(self, tenant: str, quota: str) -> bool:
        quotas: Quotas = await self.quotas(tenant)
        return getattr(quotas, quota) is not None

    def _limited_now(self, tenant: str, quota: str) -> bool:
        """As :meth:`_limited`, from what this process read last (its admission did)."""
        state = self._tenants.get(tenant)
        return state is not None and getattr(state.quotas, quota) is not None

    # --- the book's operations, at the home or asked of it ------------------------------

    async def admit_request(self, tenant: str) -> None:
        if self.is_home(tenant):
            await super().admit_request(tenant)
        elif await self._limited(tenant, "requests_per_s"):
            await self._home("admit_request", tenant)

    async def admit_produce(self, tenant: str, cost: int) -> None:
        if self.is_home(tenant):
            await super().admit_produce(tenant, cost)
        elif await self._limited(tenant, "produce_bytes_per_s"):
            await self._home("admit_produce", tenant, cost)

    def refund_produce(self, tenant: str, cost: int) -> None:
        if self.is_home(tenant):
            super().refund_produce(tenant, cost)
        elif self._limited_now(tenant, "produce_bytes_per_s"):
            self._send("refund_produce", tenant, cost)

    async def admit_consume(self, tenant: str) -> None:
        if self.is_home(tenant):
            await super().admit_consume(tenant)
        elif await self._limited(tenant, "consume_bytes_per_s"):
            await self._home("admit_consume", tenant)

    def charge_consume(self, tenant: str, cost: int) -> None:
        if self.is_home(tenant):
            super().charge_consume(tenant, cost)
        elif cost and self._limited_now(tenant, "consume_bytes_per_s"):
            self._send("charge_consume", tenant, cost)

    async def check_storage(self, tenant: str) -> None:
        if self.is_home(tenant):
            await super().check_storage(tenant)
        elif await self._limited(tenant, "max_stored_bytes"):
            await self._home("check_storage", tenant)

    def note_stored(self, tenant: str, nbytes: int) -> None:
        if self.is_home(tenant):
            super().note_stored(tenant, nbytes)
        elif self._limited_now(tenant, "max_stored_bytes"):
            self._send("note_stored", tenant, nbytes)

    async def serve(self, request: dict[str, Any]) -> None:
        """Run an operation another process asked of this one, the tenant's home."""
        method, tenant, cost = str(request["m"]), str(request["t"]), int(request["c"])
        if method == "admit_request":
            await QuotaBook.admit_request(self, tenant)
        elif method == "admit_produce":
            await QuotaBook.admit_produce(self, tenant, cost)
        elif method == "admit_consume":
            await QuotaBook.admit_consume(self, tenant)
        elif method == "check_storage":
            await QuotaBook.check_storage(self, tenant)
        else:
            await self.quotas(tenant)  # the tenant's state exists before it is charged
            if method == "refund_produce":
                QuotaBook.refund_produce(self, tenant, cost)
            elif method == "charge_consume":
                QuotaBook.charge_consume(self, tenant, cost)
            elif method == "note_stored":
                QuotaBook.note_stored(self, tenant, cost)
            else:
                raise ValueError(f"unknown quota operation {method!r}")
