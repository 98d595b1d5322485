"""Quotas across nodes: a tenant's home lends slices of its rate buckets to other nodes.

On one machine every process asks the tenant's home for each charge (``quota_home.py`` in
``gateway/processes/``: a tenth of a millisecond, and exact counts). Across nodes that would
put a network round trip on every request, so a node that is not the home takes a *lease of
tokens* instead: an amount taken out of the tenant's real bucket here, which it spends
locally until the lease expires, asking for more before it runs out and giving back what it
did not spend (the holder's side is ``gateway/processes/token_leases.py``).

The bound. Tokens a holder spends were first taken out of the bucket, so the tenant's
accepted total over any window is what the bucket gave in it (its capacity, one second of
rate, plus what refilled) plus what holders held when the window opened. The home keeps the
second small: all the leases of one tenant and quota outstanding at once (as the home
counts them: what each holder said it still held, plus what it was granted) stay within
``outstanding_s`` seconds of rate, and each holder's within an equal share of that among the
holders holding a lease, so busy holders get alike and an idle one cannot sit on the rate.
Over any window of W seconds a tenant's accepted total is thus at most
``rate x (W + 1 + outstanding_s)`` plus one request per holder: with the default
``outstanding_s`` of 0.25, within 5% of the single bucket's ``rate x (W + 1)`` over five
seconds. A lease whose holder dies is lost to the others until it expires (``lease_s``),
and never more than that lease.

A grant pays a charge that is waiting (``need``) exactly as the bucket would: when the bucket
holds ``need`` (or, for a charge above its capacity, is full: the debt is then the bucket's),
else it is refused with the exact wait, which the holder turns into the 429's
``retry_after_ms``. A renewal ahead of running out (``need`` 0) is given what is there, maybe
nothing. A holder in debt (a consume read that returned more than it held) hands the debt
over with its next ask, and the bucket carries it as it would its own.

The home's clock is the quota book's; lease lengths travel as durations, so nodes' clocks
need not agree: a holder counts its lease from the moment it asked, so it always stops
spending before the home stops counting the lease.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.tenancy.quotas import RATE_QUOTAS, QuotaBook
from partitions.errors import InvalidInputError

LEASE_S = 1.0
OUTSTANDING_S = 0.25


class InvalidLeaseError(InvalidInputError):
    code = "invalid_token_lease"


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """A holder's ask for tokens of one tenant's quota.

    ``held`` is what it still holds of its lease (negative: a debt it hands over), ``need``
    a charge waiting on this answer (0: a renewal ahead of time), ``want`` what it expects
    to spend before its next ask."""

    tenant: str
    quota: str
    holder: str
    held: float
    need: float
    want: float

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.tenant,
            "q": self.quota,
            "h": self.holder,
            "held": self.held,
            "n": self.need,
            "w": self.want,
        }

    @classmethod
    def from_json(cls, body: Any) -> LeaseAsk:
        try:
            ask = cls(
                str(body["t"]),
                str(body["q"]),
                str(body["h"]),
                float(body["held"]),
                float(body["n"]),
                float(body["w"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidLeaseError(f"a token lease ask is malformed: {exc!r}") from None
        if ask.quota not in RATE_QUOTAS or ask.need < 0 or ask.want < 0:
            raise InvalidLeaseError("a token lease ask names no rate quota, or a negative amount")
        return ask


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The home's answer: ``amount`` tokens (``need`` included) to spend for ``lease_s``
    seconds from the ask, or none and the seconds until the bucket can pay (``wait_s``).
    ``rate`` is the quota (None: unlimited now; the holder then passes what it asked)."""

    amount: float
    lease_s: float
    rate: float | None
    wait_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"a": self.amount, "s": self.lease_s, "r": self.rate, "w": self.wait_s}

    @classmethod
    def from_json(cls, body: Any) -> LeaseGrant:
        rate = body["r"]
        return cls(
            float(body["a"]),
            float(body["s"]),
            None if rate is None else float(rate),
            float(body["w"]),
        )


@dataclass(slots=True)
class _Held:
    amount: float
    expires: float


@dataclass(slots=True)
class _Lent:
    """The leases out of one tenant's bucket of one quota, by holder."""

    holders: dict[str, _Held] = field(default_factory=dict)

    def current(self, now: float) -> dict[str, _Held]:
        for name in [name for name, held in self.holders.items() if held.expires <= now]:
            del self.holders[name]
        return self.holders


class TokenLeases:
    """The home's side: leases of tokens out of the tenants' buckets in ``book``."""

    def __init__(
        self,
        book: QuotaBook,
        *,
        lease_s: float = LEASE_S,
        outstanding_s: float = OUTSTANDING_S,
    ) -> None:
        self._book = book
        self.lease_s = lease_s
        self.outstanding_s = outstanding_s
        self._lent: dict[tuple[str, str], _Lent] = {}

    def outstanding(self, tenant: str, quota: str) -> dict[str, float]:
        """What each holder may hold of the tenant's quota now, as the home counts it."""
        lent = self._lent.get((tenant, quota))
        if lent is None:
            return {}
        return {name: held.amount for name, held in lent.current(self._book.clock()).items()}

    async def grant(self, ask: LeaseAsk) -> LeaseGrant:
        bucket = await self._book.rate_bucket(ask.tenant, ask.quota)
        if bucket is None:
            return LeaseGrant(ask.need + ask.want, self.lease_s, None)
        now = self._book.clock()
        holders = self._lent.setdefault((ask.tenant, ask.quota), _Lent()).current(now)
        held = max(ask.held, 0.0)
        if ask.held < 0:
            bucket.charge(-ask.held, now)
        wait = bucket.take(ask.need, now) if ask.need else 0.0
        if wait:
            self._record(holders, ask.holder, held, now)
            return LeaseGrant(0.0, self.lease_s, bucket.rate, wait)
        # The need is paid (maybe into debt, as a large charge does); now the lease on top.
        room = self._room(holders, ask.holder, bucket.rate) - held
        extra = max(0.0, min(ask.want, room, bucket.tokens))
        bucket.tokens -= extra
        self._record(holders, ask.holder, held + extra, now + self.lease_s)
        return LeaseGrant(ask.need + extra, self.lease_s, bucket.rate)

    def _room(self, holders: dict[str, _Held], holder: str, rate: float) -> float:
        """The most ``holder`` may hold: an equal share of the outstanding bound among the
        holders with a lease, and no more than the others leave of it."""
        cap = self.outstanding_s * rate
        others = sum(held.amount for name, held in holders.items() if name != holder)
        sharing = len(holders) + (holder not in holders)
        return min(cap / sharing, cap - others)

    def _record(
        self, holders: dict[str, _Held], holder: str, amount: float, expires: float
    ) -> None:
        known = holders.get(holder)
        if amount <= 0:
            holders.pop(holder, None)
        elif known is None:
            holders[holder] = _Held(amount, expires)
        else:
            known.amount, known.expires = amount, max(known.expires, expires)

    async def give_back(self, tenant: str, quota: str, holder: str, amount: float) -> None:
        """A holder's unspent tokens: back into the bucket (up to its capacity)."""
        if quota not in RATE_QUOTAS or amount <= 0:
            raise InvalidLeaseError("tokens given back name no rate quota, or no tokens")
        bucket = await self._book.rate_bucket(tenant, quota)
        now = self._book.clock()
        if bucket is not None:
            bucket.refund(amount, now)
        lent = self._lent.get((tenant, quota))
        if lent is not None:
            holders = lent.current(now)
            known = holders.get(holder)
            if known is not None:
                known.amount -= amount
                if known.amount <= 1e-9:
                    del holders[holder]

    def drop(self, tenant: str) -> None:
        """The tenant was deleted: its leases with it."""
        for key in [key for key in self._lent if key[0] == tenant]:
            del self._lent[key]
