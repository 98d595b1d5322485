"""The token bucket of the rate quotas (``quotas.py`` says how each quota uses it).

Tokens refill continuously at the bucket's rate, up to its capacity; a request takes
tokens when there are enough, or learns how long until there will be. A cost above the
capacity passes with a full bucket and leaves a debt, which the next request waits out.
Time is given by the caller (seconds, monotonic), so that tests count tokens without
sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tokens short of a cost that still pay it: a retry after exactly the wait a refusal named
# finds the tokens, whatever the clock's float rounding lost of them (a millionth of one).
_ROUNDING = 1e-6


@dataclass(slots=True)
class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``capacity``; ``tokens`` may go below
    zero only through :meth:`charge` (a debt)."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens if there are enough: answers 0.0, or the seconds to wait
        until there will be (nothing taken). A cost above the capacity passes with a full
        bucket and leaves a debt."""
        self._refill(now)
        need = min(cost, self.capacity)
        if self.tokens + _ROUNDING >= need:
            self.tokens -= cost
            return 0.0
        return (need - self.tokens) / self.rate

    def wait_positive(self, now: float) -> float:
        """0.0 when the bucket holds more than nothing, else the seconds until it will."""
        self._refill(now)
        if self.tokens > 0:
            return 0.0
        # A hair past zero, so that a retry after this long finds tokens.
        return (-self.tokens) / self.rate + 1e-3

    def charge(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens -= cost

    def refund(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + cost)

    def reshape(self, rate: float, capacity: float, now: float) -> None:
        """A new rate (a PATCH): keep what the bucket holds, within the new capacity."""
        self._refill(now)
        self.rate, self.capacity = rate, capacity
        self.tokens = min(self.tokens, capacity)
