"""The holder's side of token leases, and the channel ops that carry them between nodes.

:class:`LeasedQuotaHome` is the :class:`~gateway.tenancy.quotas.QuotaHome` of a node that is
not the tenant's home: the quota book asks it as it asks a worker process's home, but it
answers rate charges from a lease of tokens it holds (``gateway/tenancy/token_leases.py``
says how the home grants them and what bound that keeps). Per tenant and quota it

- spends from its lease without a call, while the lease holds the charge and has not expired;
- renews ahead of running out, one renewal in flight per tenant and quota: a charge the lease
  cannot pay waits for that renewal, then asks for what it still lacks;
- sizes each ask from its recent spend (what it spent since its last grant, per second, times
  ``horizon_s``), so an idle node holds little and a busy one renews a few times a second;
- gives back what it did not spend when the lease expires (:meth:`expire`, run by
  :meth:`run`) and when it closes;
- carries a consume read's excess as a debt, handed to the home with its next ask.

When the home cannot be reached the rule is: **spend what the lease still holds until it
expires, then refuse**, with a retriable 503 ``quota_home_unreachable`` naming a wait. A node
cut off from the home thus never admits more than it was lent, and the bound holds whatever
the network does. Tokens given back that do not arrive are lost (the tenant gets less, never
more); a debt whose hand-over may have been lost is handed over again (the same).

The storage quota is not leased: ``check_storage`` and ``note_stored`` go to the home as
exact asks (``QUOTA``), as between a server's worker processes.

Channel ops (``peers.py``), JSON bodies:

- ``TOKEN_LEASE``: a :class:`~gateway.tenancy.token_leases.LeaseAsk`, answered with a
  :class:`~gateway.tenancy.token_leases.LeaseGrant`.
- ``TOKEN_RETURN``: ``{"t": tenant, "q": quota, "h": holder, "a": tokens}``, answered null.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.processes.peers import QUOTA, TOKEN_LEASE, TOKEN_RETURN, json_handler
from gateway.tenancy.quotas import Clock, QuotaBook, refusal, retry_details
from gateway.tenancy.token_leases import LeaseAsk, LeaseGrant, TokenLeases
from partitions.channel import ChannelClient, ChannelServer
from partitions.errors import EventBusError, WorkerUnreachableError

log = logging.getLogger(__name__)

# The rate charges a holder answers from its lease: operation -> quota.
_ADMITS = {
    "admit_request": "requests_per_s",
    "admit_produce": "produce_bytes_per_s",
    "admit_consume": "consume_bytes_per_s",
}
_CHARGES = {"refund_produce": "produce_bytes_per_s", "charge_consume": "consume_bytes_per_s"}
# An unlimited quota's lease covers any charge.
_UNLIMITED = math.inf


class QuotaHomeUnreachableError(EventBusError):
    """The tenant's quota home cannot be reached and this node's lease of its tokens is spent
    or expired: refused rather than admitted past the quota."""

    code = "quota_home_unreachable"
    status = 503
    retriable = True


@dataclass(slots=True)
class _Lease:
    """What this node holds of one tenant's quota."""

    balance: float = 0.0  # negative: a consume debt not yet handed to the home
    expires: float = -math.inf
    rate: float | None = None  # the quota, as the home last said
    spent: float = 0.0  # since ``since``
    since: float = 0.0
    spend_rate: float = 0.0  # per second, measured at the last grant
    renewing: asyncio.Task[None] | None = None

    def usable(self, now: float) -> float:
        return self.balance if now < self.expires or self.balance < 0 else 0.0


class LeasedQuotaHome:
    """A tenant's rate buckets, spent here from leases of the home's tokens (see the module
    docstring). ``client`` reaches the home's channel; ``holder`` names this node to it."""

    def __init__(
        self,
        client: ChannelClient,
        holder: str,
        *,
        clock: Clock = time.monotonic,
        horizon_s: float = 0.2,
        renew_ahead_s: float = 0.05,
        unreachable_retry_s: float = 1.0,
    ) -> None:
        self._client = client
        self.holder = holder
        self.clock = clock
        self.horizon_s = horizon_s
        self.renew_ahead_s = renew_ahead_s
        self.unreachable_retry_s = unreachable_retry_s
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._sent: set[asyncio.Task[None]] = set()

    def held(self, tenant: str, quota: str) -> float:
        """What this node may still spend of the tenant's quota now."""
        lease = self._leases.get((tenant, quota))
        return 0.0 if lease is None else lease.usable(self.clock())

    # --- the QuotaHome Protocol -----------------------------------------------------------

    async def ask(self, operation: str, tenant: str, cost: int) -> None:
        quota = _ADMITS.get(operation)
        if quota is None:
            await self._exact(operation, tenant, cost)
            return
        lease = self._leases.setdefault((tenant, quota), _Lease(since=self.clock()))
        # admit_consume asks only that the bucket hold more than nothing: one token's worth.
        charge = float(cost) if operation == "admit_produce" else 1.0
        spends = operation != "admit_consume"
        while True:
            now = self.clock()
            self._expire(tenant, quota, lease, now)
            if lease.usable(now) >= charge:
                if spends:
                    lease.balance -= charge
                    lease.spent += charge
                self._renew_ahead(tenant, quota, lease, now)
                return
            if lease.renewing is not None:
                await asyncio.shield(lease.renewing)
                continue
            await self._lease(tenant, quota, lease, need=charge - max(lease.usable(now), 0.0))

    def tell(self, operation: str, tenant: str, cost: int) -> None:
        quota = _CHARGES.get(operation)
        if quota is None:
            self._send(self._exact(operation, tenant, cost), operation, tenant)
            return
        lease = self._leases.setdefault((tenant, quota), _Lease(since=self.clock()))
        if operation == "refund_produce":
            lease.balance += cost
            lease.spent -= cost
        else:
            lease.balance -= cost
            lease.spent += cost

    # --- asking the home ------------------------------------------------------------------

    async def _exact(self, operation: str, tenant: str, cost: int) -> None:
        body = orjson.dumps({"m": operation, "t": tenant, "c": cost})
        await self._client.call(QUOTA, body)

    def _want(self, lease: _Lease, now: float) -> float:
        """What to ask for on top of a waiting charge: the recent spend over the horizon.
        The spend is measured over periods of at least ``horizon_s``; within one, what was
        spent so far is a floor of the rate, so a node that turns busy asks for more each
        time and one that went quiet asks for little."""
        elapsed = now - lease.since
        if elapsed >= self.horizon_s:
            lease.spend_rate = max(lease.spent, 0.0) / elapsed
            lease.spent, lease.since = 0.0, now
        else:
            lease.spend_rate = max(lease.spend_rate, lease.spent / self.horizon_s)
        return lease.spend_rate * self.horizon_s

    async def _lease(self, tenant: str, quota: str, lease: _Lease, need: float) -> None:
        """Ask the home for ``need`` tokens, a waiting charge (refused if it cannot pay), as
        the one call in flight for the lease."""
        task = asyncio.get_running_loop().create_task(self._ask_home(tenant, quota, lease, need))
        task.add_done_callback(_retrieved)
        lease.renewing = task
        await asyncio.shield(task)

    async def _ask_home(self, tenant: str, quota: str, lease: _Lease, need: float) -> None:
        try:
            await self._ask_home_once(tenant, quota, lease, need)
        finally:
            if lease.renewing is asyncio.current_task():
                lease.renewing = None

    async def _ask_home_once(self, tenant: str, quota: str, lease: _Lease, need: float) -> None:
        sent = self.clock()
        held = lease.usable(sent)
        ask = LeaseAsk(tenant, quota, self.holder, held, need, self._want(lease, sent))
        try:
            meta, _ = await self._client.call(TOKEN_LEASE, orjson.dumps(ask.to_json()))
        except WorkerUnreachableError as exc:
            if not need:
                log.debug("renewing a token lease of tenant %s failed: %s", tenant, exc)
                return
            raise QuotaHomeUnreachableError(
                f"the home of the tenant's {quota} quota cannot be reached and this node's "
                f"lease of it is spent; retry in {self.unreachable_retry_s:.3f} s",
                **retry_details(quota, int(lease.rate or 0), self.unreachable_retry_s),
            ) from exc
        grant = LeaseGrant.from_json(orjson.loads(meta))
        if held < 0:
            lease.balance -= held  # the debt is the home's now
        lease.rate = grant.rate
        if grant.rate is None:
            lease.balance = _UNLIMITED
            lease.expires = sent + grant.lease_s
            return
        if grant.wait_s:
            if need:
                raise refusal(quota, int(grant.rate), grant.wait_s)
            return
        lease.balance += grant.amount
        lease.expires = sent + grant.lease_s

    def _renew_ahead(self, tenant: str, quota: str, lease: _Lease, now: float) -> None:
        if lease.renewing is not None or lease.balance == _UNLIMITED:
            return
        if lease.balance >= lease.spend_rate * self.renew_ahead_s and lease.balance > 0:
            return
        task = asyncio.get_running_loop().create_task(self._ask_home(tenant, quota, lease, 0.0))
        task.add_done_callback(_retrieved)
        lease.renewing = task

    # --- giving back ----------------------------------------------------------------------

    def _expire(self, tenant: str, quota: str, lease: _Lease, now: float) -> None:
        if now >= lease.expires and lease.balance > 0:
            unspent, lease.balance = lease.balance, 0.0
            if unspent != _UNLIMITED:
                self._send(self._give_back(tenant, quota, unspent), "give_back", tenant)

    def expire(self) -> None:
        """Give back the unspent tokens of every lease that has expired."""
        now = self.clock()
        for (tenant, quota), lease in self._leases.items():
            self._expire(tenant, quota, lease, now)

    async def run(self, every_s: float = 0.25) -> None:
        """Give back expired leases' tokens every ``every_s`` (a loop)."""
        while True:
            self.expire()
            await asyncio.sleep(every_s)

    async def _give_back(self, tenant: str, quota: str, amount: float) -> None:
        body = {"t": tenant, "q": quota, "h": self.holder, "a": amount}
        await self._client.call(TOKEN_RETURN, orjson.dumps(body))

    def _send(self, call: Any, operation: str, tenant: str) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(call, operation, tenant))
        self._sent.add(task)
        task.add_done_callback(self._sent.discard)

    async def _logged(self, call: Any, operation: str, tenant: str) -> None:
        try:
            await call
        except EventBusError as exc:
            log.warning("quota %s of tenant %s not sent to its home: %s", operation, tenant, exc)

    async def close(self) -> None:
        """Give back every lease's unspent tokens, and wait for what was sent."""
        for lease in self._leases.values():
            if lease.renewing is not None:
                lease.renewing.cancel()
            lease.expires = -math.inf
        self.expire()
        await asyncio.gather(*self._sent, return_exceptions=True)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


def serve_token_leases(server: ChannelServer, leases: TokenLeases, book: QuotaBook) -> None:
    """Answer other nodes' lease asks and returns, and their exact storage asks."""

    async def lease(body: Any) -> Any:
        return (await leases.grant(LeaseAsk.from_json(body))).to_json()

    async def give_back(body: Any) -> None:
        await leases.give_back(str(body["t"]), str(body["q"]), str(body["h"]), float(body["a"]))

    async def exact(body: Any) -> None:
        await book.serve(str(body["m"]), str(body["t"]), int(body["c"]))

    server.register(TOKEN_LEASE, json_handler(lease))
    server.register(TOKEN_RETURN, json_handler(give_back))
    server.register(QUOTA, json_handler(exact))
