"""The produce quota bounds bursts: over any window of W >= 5 seconds, a tenant's accepted
produce bytes stay within 10% of ``quota x (W + 1)`` plus one request, whatever sizes it
sends, and a client that waits out each ``Retry-After`` still gets its quota.

A greedy producer sends requests of mixed sizes, some larger than the bucket (one second of
rate), and retries each refusal after exactly the wait it was told. Once on a clock the test
moves, and once in real time over HTTPS as a user's client would; with
``EVENTBUS_TEST_WORKERS`` both run against worker processes, whose buckets live in one home.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.conftest import Api, stop_api
from tests.https import FakeClock, start_https_api
from tests.tenants import assert_refused, call, new_tenant, records

QUOTA = 200_000  # produce bytes per second
SLACK = 0.10  # the bound's allowance


def _sizes(seed: int, count: int, largest: int) -> list[int]:
    """Request sizes from 1 kB to ``largest``: mostly under the bucket, some over it."""
    chooser = random.Random(seed)
    return [chooser.randint(1000, largest) for _ in range(count)]


# Each accepted produce: the earliest and latest moments it may have been accepted at,
# and its bytes.
Accepted = list[tuple[float, float, int]]


async def _greedy(
    acme: Api,
    sizes: list[int],
    now: Callable[[], float],
    wait: Callable[[float], Awaitable[None]],
    until: float,
) -> tuple[Accepted, int]:
    """Produce as fast as the quota allows until ``until``: each refusal is retried after
    the exact wait it names. Answers what was accepted and how many refusals there were."""
    accepted: Accepted = []
    refusals = 0
    size = iter(sizes)
    body_size = next(size)
    while now() < until:
        sent = now()
        status, headers, body = await call(
            acme, "POST", "/v1/topics/t/records", json=records(1, body_size)
        )
        if status == 200:
            accepted.append((sent, now(), body_size))
            body_size = next(size)
        else:
            await wait(assert_refused(status, headers, body, "quota_exceeded") / 1000)
            refusals += 1
    return accepted, refusals


def _worst_window(accepted: Accepted, window: float) -> tuple[float, int]:
    """The window of ``window`` seconds holding the most bytes surely accepted in it (sent
    and answered inside), and those bytes."""
    worst = (0.0, 0)
    for start, _, _ in accepted:
        inside = sum(n for sent, done, n in accepted if sent >= start and done <= start + window)
        worst = max(worst, (start, inside), key=lambda pair: pair[1])
    return worst


def _assert_bounded(accepted: Accepted, windows: list[float], largest: int) -> None:
    for window in windows:
        start, inside = _worst_window(accepted, window)
        bound = (1 + SLACK) * QUOTA * (window + 1) + largest
        assert inside <= bound, (window, start, inside, bound)


async def test_bursts_stay_within_one_second_of_quota_on_a_moved_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    server = await start_https_api(tmp_path / "data", quota_clock=clock)
    try:
        acme = await new_tenant(server, "acme", quotas={"produce_bytes_per_s": QUOTA})
        assert (await acme.call("PUT", "/v1/topics/t"))[0] == 201
        largest = 3 * QUOTA  # some requests cost three buckets: each passes, in debt
        sizes = _sizes(seed=21, count=10_000, largest=largest)

        async def wait(seconds: float) -> None:
            clock.advance(seconds)

        def now() -> float:
            clock.advance(0.01)  # each request takes the client 10 ms
            return clock.now

        start = clock.now
        accepted, refusals = await _greedy(acme, sizes, now, wait, until=start + 40)
        assert refusals > 0 and max(n for _, _, n in accepted) > QUOTA
        _assert_bounded(accepted, [5, 7.5, 10, 20, 40], largest)
        # The first second's burst is the bucket and one request, not more.
        first = sum(n for sent, _, n in accepted if sent < start + 1)
        assert first <= QUOTA + largest, first
        # Waiting exactly as told, the client gets its quota over the run.
        total = sum(n for _, _, n in accepted)
        assert total >= (1 - SLACK) * QUOTA * 40, total
        # Nothing refused was written: the log holds exactly the accepted records.
        _, topic = await acme.call("GET", "/v1/topics/t")
        assert topic["partitions"][0]["end_offset"] == len(accepted)
    finally:
        await stop_api(server)


async def test_bursts_stay_bounded_in_real_time_over_https(tmp_path: Path) -> None:
    """What a user sees: six seconds of a greedy producer against a 200 kB/s quota."""
    server = await start_https_api(tmp_path / "data")
    try:
        acme = await new_tenant(server, "acme", quotas={"produce_bytes_per_s": QUOTA})
        assert (await acme.call("PUT", "/v1/topics/t"))[0] == 201
        largest = 2 * QUOTA
        sizes = _sizes(seed=6, count=10_000, largest=largest)
        start = time.monotonic()
        accepted, refusals = await _greedy(
            acme, sizes, time.monotonic, asyncio.sleep, until=start + 6
        )
        elapsed = time.monotonic() - start
        assert refusals > 0
        _assert_bounded(accepted, [5, elapsed], largest)
        total = sum(n for _, _, n in accepted)
        # A client that waits as told is not starved (a loose floor: this machine is busy).
        assert total >= 0.5 * QUOTA * 5, total
    finally:
        await stop_api(server)
