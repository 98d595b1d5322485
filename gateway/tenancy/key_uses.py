"""When each API key was last used: noted in memory as requests are authenticated, written
to the catalog behind them.

No request waits on the catalog for it or fails because of it. The authenticator notes a
key's use whenever it reads the key again from the catalog (at most once a second per key
and process) and a background task (:meth:`KeyUses.run`) writes what was noted, the newest
use of each key, at most every ``write_interval_s``. A pass that fails (the disk is full)
keeps what it did not write, and the next one comes after a backoff that grows while the
failures last; uses noted meanwhile only replace older ones, so nothing grows but the
number of keys in use. So the catalog's ``last_used_ms`` lags a key's real last use by up to
a second and the write interval (for as long as the catalog cannot be written, by that
long), and a crash loses what was not written yet. The key listing of the admin API adds
what this process and the others noted but did not write yet (:meth:`KeyUses.last_uses`),
so it shows the newest use even while the catalog cannot be written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from partitions.backoff import Backoff
from partitions.catalog import Catalog
from partitions.errors import EventBusError

log = logging.getLogger(__name__)

# How long uses gather between two passes, and the longest wait after failed ones.
WRITE_INTERVAL_S = 1.0
RETRY_MAX_S = 30.0

KeyName = tuple[str, str]  # tenant, key id


class OtherKeyUses(Protocol):
    """The key uses the server's other processes noted (``gateway/processes/key_uses.py``)."""

    async def unwritten(self, tenant: str) -> dict[str, int]:
        """The newest use of each of the tenant's keys that another process noted and has
        not written to the catalog yet (ms since the epoch, by key id)."""
        ...


def _merge(into: dict[str, int], uses: Mapping[str, int]) -> None:
    for key_id, used_ms in uses.items():
        if used_ms > into.get(key_id, -1):
            into[key_id] = used_ms


class KeyUses:
    """The API keys' uses noted in this process and not in the catalog yet, and their
    writer."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        others: OtherKeyUses | None = None,
        write_interval_s: float = WRITE_INTERVAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._catalog = catalog
        self._others = others
        self._interval_s = write_interval_s
        self._backoff = Backoff(
            "writing the API keys' last uses",
            log,
            first_s=write_interval_s,
            max_s=max(write_interval_s, retry_max_s),
        )
        # Noted and not taken by a pass yet; taken by the pass in flight.
        self._noted: dict[KeyName, int] = {}
        self._writing: dict[KeyName, int] = {}
        self._wake = asyncio.Event()

    def note(self, tenant: str, key_id: str, used_ms: int) -> None:
        """A request used the key at ``used_ms``: written in the background."""
        name = (tenant, key_id)
        if used_ms > self._noted.get(name, -1):
            self._noted[name] = used_ms
        self._wake.set()

    @property
    def failures(self) -> int:
        """Passes that failed in a row (0 once one succeeds)."""
        return self._backoff.failures

    def unwritten_here(self, tenant: str) -> dict[str, int]:
        """The newest use of each of the tenant's keys noted in this process and not in
        the catalog yet."""
        uses: dict[str, int] = {}
        for source in (self._writing, self._noted):
            _merge(uses, {k: ms for (t, k), ms in source.items() if t == tenant})
        return uses

    async def last_uses(self, tenant: str) -> dict[str, int]:
        """What the catalog does not say yet of the tenant's keys' last uses: what this
        process and (several processes) the others noted and did not write."""
        uses = self.unwritten_here(tenant)
        if self._others is not None:
            _merge(uses, await self._others.unwritten(tenant))
        return uses

    async def write(self) -> None:
        """Write every use noted so far; what a failure leaves unwritten is kept for the
        next pass (the catalog keeps the newest of the uses written, so writing one
        twice does no harm)."""
        batch, self._noted = self._noted, {}
        self._writing = batch
        try:
            for name, used_ms in list(batch.items()):
                await self._catalog.touch_api_key(*name, used_ms)
                del batch[name]
        finally:
            self._writing = {}
            for name, used_ms in batch.items():
                if used_ms > self._noted.get(name, -1):
                    self._noted[name] = used_ms

    async def run(self) -> None:
        """Write what is noted until cancelled: a pass at most every ``write_interval_s``,
        and after failed ones, later and later until one succeeds."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.write()
            except Exception as exc:  # noqa: BLE001 - whatever failed is tried again later
                await asyncio.sleep(self._backoff.failed(exc))
                self._wake.set()
                continue
            self._backoff.succeeded()
            await asyncio.sleep(self._interval_s)

    async def write_remaining(self) -> None:
        """At shutdown, once no request is left: write what is still noted, if the
        catalog takes it (else it is lost, as in a crash, and said so)."""
        try:
            await self.write()
        except EventBusError as exc:
            log.warning(
                "the last uses of %d API keys could not be written (%s); the keys' "
                "last_used_ms stays older",
                len(self._noted),
                exc,
            )
