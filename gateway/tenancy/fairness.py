"""Fair service across tenants: a bounded number of requests in service, the others queued
per tenant and admitted round-robin.

At most ``slots`` tenant requests are in service at once. A request that finds no free
slot waits in its tenant's queue; each time a slot frees, the next tenant in the ring gets
it for its oldest request and goes to the back of the ring. So a tenant with a thousand
requests queued and one with a single request alternate: the single one waits for at most
one request of each other tenant, never behind the whole flood. Turns are per request, not
per byte; byte quotas bound what one request may cost. A tenant's queue is bounded
(``max_queued``): past it, 429 ``request_queue_full``. One tenant holds at most
``per_tenant`` slots at once, so that requests of one tenant that stay in service long
(bodies uploaded slowly) can never hold them all.

A request that waits for data (a long-poll) gives its slot back for the wait and queues
again, fairly, before it goes on (see :mod:`partitions.waiting`), so waiting reads never
hold slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from partitions.errors import EventBusError
from partitions.waiting import reset_wait_hook, set_wait_hook


class RequestQueueFullError(EventBusError):
    code = "request_queue_full"
    status = 429
    retriable = True


class FairScheduler:
    def __init__(self, slots: int, max_queued: int, per_tenant: int | None = None) -> None:
        if slots < 1 or max_queued < 1 or (per_tenant is not None and per_tenant < 1):
            raise ValueError("a scheduler needs at least one slot and one queue place")
        self.slots = slots
        self.max_queued = max_queued
        self.per_tenant = slots if per_tenant is None else min(per_tenant, slots)
        self._free = slots
        self._busy: dict[str, int] = {}
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        # Tenants with a queued request, in the order they are served.
        self._ring: deque[str] = deque()
        self.queued = 0
        self.admitted = 0

    @property
    def in_service(self) -> int:
        return self.slots - self._free

    def queued_for(self, tenant: str) -> int:
        return len(self._queues.get(tenant, ()))

    def try_acquire(self, tenant: str) -> bool:
        """Take a slot without waiting, if one is free and no queued request of the tenant
        is ahead: a free slot that nobody else could have (queued tenants would have got it
        unless they are at their own limit)."""
        if (
            self._free > 0
            and tenant not in self._queues
            and self._busy.get(tenant, 0) < (self.per_tenant)
        ):
            self._grant(tenant)
            return True
        return False

    async def acquire(self, tenant: str, *, bounded: bool = True) -> None:
        """Wait for a slot, in ``tenant``'s turn. ``bounded``: refuse when the tenant's
        queue is full (a request coming back from a long-poll is not refused)."""
        if self.try_acquire(tenant):
            return
        queue = self._queues.get(tenant)
        if bounded and queue is not None and len(queue) >= self.max_queued:
            raise RequestQueueFullError(
                f"the tenant has {len(queue)} requests waiting for service; retry later",
                queued=len(queue),
            )
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._ring.append(tenant)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        self.queued += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(tenant)  # granted just as it was cancelled: give it back
            else:
                self._withdraw(tenant, future)
            raise

    def _withdraw(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is None or future not in queue:
            return
        queue.remove(future)
        self.queued -= 1
        if not queue:
            del self._queues[tenant]
            self._ring.remove(tenant)

    def _grant(self, tenant: str) -> None:
        self._free -= 1
        self._busy[tenant] = self._busy.get(tenant, 0) + 1
        self.admitted += 1

    def release(self, tenant: str) -> None:
        self._free += 1
        busy = self._busy[tenant] - 1
        if busy:
            self._busy[tenant] = busy
        else:
            del self._busy[tenant]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to queued tenants in ring order; a tenant at its limit is passed
        over, to the back of the ring."""
        passed = 0
        while self._free > 0 and passed < len(self._ring):
            tenant = self._ring[0]
            if self._busy.get(tenant, 0) >= self.per_tenant:
                self._ring.rotate(-1)
                passed += 1
                continue
            self._ring.popleft()
            queue = self._queues[tenant]
            future = queue.popleft()
            self.queued -= 1
            if queue:
                self._ring.append(tenant)
            else:
                del self._queues[tenant]
            if not future.done():
                future.set_result(None)
                self._grant(tenant)
                passed = 0

    def slot(self, tenant: str) -> Turn:
        """Hold a slot for the body of an ``async with``; lend it out during long waits."""
        return Turn(self, tenant)

    def turn_now(self, tenant: str) -> Turn | None:
        """The tenant's turn at once, when a slot is free for it (no waiting, no coroutine:
        the usual case, on every tenant request's path); None: wait for it with
        :meth:`turn`. A turn is ended with :meth:`Turn.end`."""
        if not self.try_acquire(tenant):
            return None
        turn = Turn(self, tenant)
        turn.begin()
        return turn

    async def turn(self, tenant: str) -> Turn:
        """Wait for the tenant's turn (what :meth:`turn_now` could not give at once)."""
        await self.acquire(tenant)
        turn = Turn(self, tenant)
        turn.begin()
        return turn


class Turn:
    """One request's place in service, from :meth:`Turn.begin` (its slot acquired) to
    :meth:`Turn.end`; also an ``async with`` that acquires and ends it. ``held`` is false
    while a long wait lends the place out."""

    __slots__ = ("_scheduler", "_tenant", "_token", "held")

    def __init__(self, scheduler: FairScheduler, tenant: str) -> None:
        self._scheduler = scheduler
        self._tenant = tenant
        self.held = False

    def begin(self) -> None:
        """The slot is acquired: hold it, and lend it out during the request's long waits."""
        self.held = True
        self._token = set_wait_hook(self._lend)

    def end(self) -> None:
        reset_wait_hook(self._token)
        if self.held:
            self.held = False
            self._scheduler.release(self._tenant)

    async def __aenter__(self) -> None:
        await self._scheduler.acquire(self._tenant)
        self.begin()

    async def __aexit__(self, *exc_info: object) -> None:
        self.end()

    @contextlib.asynccontextmanager
    async def _lend(self) -> AsyncIterator[None]:
        """The wait hook: give the place back for a long wait, queue again after it."""
        if not self.held:
            yield
            return
        self.held = False
        self._scheduler.release(self._tenant)
        yield
        # Only when the wait ended normally: a cancelled or failed request takes no slot.
        await self._scheduler.acquire(self._tenant, bounded=False)
        self.held = True
