"""The fair scheduler, driven request by request: admissions are counted, nothing is timed."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tenancy.fairness import FairScheduler, RequestQueueFullError
from partitions.waiting import waiting


class Requests:
    """Requests that take a slot and hold it until the test finishes them one by one."""

    def __init__(self, scheduler: FairScheduler) -> None:
        self.scheduler = scheduler
        self.admitted: list[str] = []
        self._done: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def send(self, name: str) -> None:
        tenant = name.split("-")[0]
        self._done[name] = asyncio.Event()

        async def request() -> None:
            async with self.scheduler.slot(tenant):
                self.admitted.append(name)
                await self._done[name].wait()

        self.tasks.append(asyncio.create_task(request(), name=name))

    async def finish(self, name: str) -> None:
        self._done[name].set()
        await settle()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_flooding_tenant_alternates_with_a_quiet_one() -> None:
    scheduler = FairScheduler(slots=2, max_queued=1000)
    requests = Requests(scheduler)
    for i in range(100):
        requests.send(f"flood-{i}")
    await settle()
    for i in range(3):
        requests.send(f"quiet-{i}")
    await settle()
    assert requests.admitted == ["flood-0", "flood-1"]
    assert scheduler.queued == 98 + 3
    # Serve: each finished request frees a slot for the next tenant in the ring.
    while len(requests.admitted) < 12:
        await requests.finish(requests.admitted[len(requests.admitted) - 2])
    order = requests.admitted
    # The three quiet requests got three of the first ten slots after the flood's two,
    # one every other admission; served first come, first served they would wait for 98.
    assert [name for name in order if name.startswith("quiet")] == ["quiet-0", "quiet-1", "quiet-2"]
    positions = [order.index(f"quiet-{i}") for i in range(3)]
    assert positions == [3, 5, 7]
    assert scheduler.in_service == 2
    for task in requests.tasks:
        task.cancel()
    await asyncio.gather(*requests.tasks, return_exceptions=True)
    assert scheduler.in_service == 0 and scheduler.queued == 0


async def test_three_tenants_share_in_turn() -> None:
    scheduler = FairScheduler(slots=1, max_queued=100)
    requests = Requests(scheduler)
    for tenant in ("a", "b", "c"):
        for i in range(4):
            requests.send(f"{tenant}-{i}")
    await settle()
    while len(requests.admitted) < 12:
        await requests.finish(requests.admitted[-1])
    # a-0 had the free slot; then the ring a, b, c in the order they first queued.
    assert requests.admitted == [
        "a-0",
        "a-1",
        "b-0",
        "c-0",
        "a-2",
        "b-1",
        "c-1",
        "a-3",
        "b-2",
        "c-2",
        "b-3",
        "c-3",
    ]
    await requests.finish("c-3")
    assert scheduler.admitted == 12 and scheduler.in_service == 0


async def test_one_tenant_never_holds_more_than_its_share_of_slots() -> None:
    scheduler = FairScheduler(slots=3, max_queued=100, per_tenant=2)
    requests = Requests(scheduler)
    for i in range(5):
        requests.send(f"slow-{i}")  # say, bodies that arrive slowly
    await settle()
    assert requests.admitted == ["slow-0", "slow-1"]  # the third slot stays free
    requests.send("other-0")
    requests.send("other-1")
    await settle()
    assert requests.admitted == ["slow-0", "slow-1", "other-0"]
    await requests.finish("other-0")  # slow is at its limit: other goes first
    assert requests.admitted[-1] == "other-1"
    await requests.finish("slow-0")
    assert requests.admitted[-1] == "slow-2"
    for task in requests.tasks:
        task.cancel()
    await asyncio.gather(*requests.tasks, return_exceptions=True)
    assert scheduler.in_service == 0 and scheduler.queued == 0


async def test_a_tenant_queue_is_bounded() -> None:
    scheduler = FairScheduler(slots=1, max_queued=2)
    requests = Requests(scheduler)
    for i in range(3):
        requests.send(f"a-{i}")  # one in service, two queued
    await settle()
    with pytest.raises(RequestQueueFullError):
        await scheduler.acquire("a")
    requests.send("b-0")  # another tenant still queues
    await settle()
    assert scheduler.queued == 3
    for task in requests.tasks:
        task.cancel()
    await asyncio.gather(*requests.tasks, return_exceptions=True)
    assert scheduler.queued == 0 and scheduler.in_service == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    scheduler = FairScheduler(slots=1, max_queued=10)
    requests = Requests(scheduler)
    requests.send("a-0")
    requests.send("b-0")
    requests.send("c-0")
    await settle()
    requests.tasks[1].cancel()  # b-0 gives up while queued
    await settle()
    assert scheduler.queued == 1
    await requests.finish("a-0")
    assert requests.admitted == ["a-0", "c-0"]
    await requests.finish("c-0")
    assert scheduler.in_service == 0


async def test_a_long_poll_lends_its_slot_while_it_waits() -> None:
    scheduler = FairScheduler(slots=1, max_queued=10)
    data = asyncio.Event()
    steps: list[str] = []

    async def long_poll() -> None:
        async with scheduler.slot("a"):
            steps.append("poll started")
            async with waiting():
                await data.wait()
            steps.append("poll read")

    async def quick(name: str) -> None:
        async with scheduler.slot("b"):
            steps.append(name)

    poll = asyncio.create_task(long_poll())
    await settle()
    await asyncio.gather(quick("b-0"), quick("b-1"))  # served while the poll waits
    assert steps == ["poll started", "b-0", "b-1"]
    assert scheduler.in_service == 0
    data.set()
    await poll
    assert steps[-1] == "poll read" and scheduler.in_service == 0


async def test_a_poll_cancelled_in_its_wait_releases_nothing_twice() -> None:
    scheduler = FairScheduler(slots=1, max_queued=10)
    entered = asyncio.Event()

    async def long_poll() -> None:
        async with scheduler.slot("a"), waiting():
            entered.set()
            await asyncio.Event().wait()

    poll = asyncio.create_task(long_poll())
    await entered.wait()
    assert scheduler.in_service == 0
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    assert scheduler.in_service == 0
    async with scheduler.slot("b"):
        assert scheduler.in_service == 1
