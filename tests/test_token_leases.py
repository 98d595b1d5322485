"""Quotas across nodes by token leases: a home and lease holders over real TCP channels on
127.0.0.1, each holder charging as fast as its loop goes, on one clock the test moves.

Each step of the clock (10 ms) every busy holder charges until it is refused, in an order
that turns each step (as requests from several nodes interleave), so tokens are counted
exactly, whatever the machine's speed: the tenant's accepted total over five seconds stays
within 10% of the quota plus the bucket's burst, busy holders share alike, an idle one holds
little, and a dead holder's lease is lost only until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.processes.token_leases import (
    LeasedQuotaHome,
    QuotaHomeUnreachableError,
    serve_token_leases,
)
from gateway.tenancy.quotas import QuotaBook, QuotaExceededError, Quotas, TenantQuotas
from gateway.tenancy.token_leases import OUTSTANDING_S, TokenLeases
from partitions.catalog_sqlite import SqliteCatalog
from partitions.channel import ChannelClient, ChannelServer
from partitions.channel_auth import PeerAuth, TcpAddress
from tests.https import FakeClock

SECRET = b"the nodes share this secret, 42 bytes long"
RATE = 1000  # requests per second
WINDOW_S = 5.0
STEP_S = 0.01
SLACK = 0.10


@dataclass
class Holder:
    name: str
    client: ChannelClient
    home: LeasedQuotaHome
    accepted: int = 0
    waits_ms: list[int] = field(default_factory=list)

    async def greedy(self, limit: int = 200) -> None:
        """Charge until refused (or ``limit`` charges: a loop's worth in one step)."""
        for _ in range(limit):
            try:
                await self.home.ask("admit_request", "acme", 0)
            except QuotaExceededError as refused:
                self.waits_ms.append(refused.details["retry_after_ms"])
                return
            self.accepted += 1


@dataclass
class Cluster:
    clock: FakeClock
    book: QuotaBook
    leases: TokenLeases
    server: ChannelServer
    address: TcpAddress
    holders: list[Holder] = field(default_factory=list)

    async def holder(self, name: str, horizon_s: float = 0.2) -> Holder:
        client = ChannelClient(self.address, name="home", auth=PeerAuth(SECRET, name))
        home = LeasedQuotaHome(client, name, clock=self.clock, horizon_s=horizon_s)
        made = Holder(name, client, home)
        self.holders.append(made)
        return made

    async def run(self, busy: list[Holder], seconds: float, idle: tuple[Holder, ...] = ()) -> None:
        """Busy holders charge greedily each step; idle ones once every half second, first
        in their step (its requests arrive between the busy ones')."""
        steps = round(seconds / STEP_S)
        every = round(0.5 / STEP_S)
        for step in range(steps):
            if step % every == 0:
                for holder in idle:
                    await holder.greedy(limit=1)
            turn = step % len(busy)
            for holder in busy[turn:] + busy[:turn]:
                await holder.greedy()
            for _ in range(3):  # renewals ahead of time land before the clock moves
                await asyncio.sleep(0)
            self.clock.advance(STEP_S)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, quotas: dict[str, int] | None = None) -> AsyncIterator[Cluster]:
    catalog = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    await catalog.create_tenant("acme", quotas=quotas or {"requests_per_s": RATE})
    clock = FakeClock()

    async def nothing(tenant: str) -> int:
        return 0

    book = QuotaBook(TenantQuotas(catalog, Quotas(), clock=clock), stored_bytes=nothing)
    leases = TokenLeases(book)
    server = ChannelServer(TcpAddress("127.0.0.1", 0), auth=PeerAuth(SECRET, "home"))
    serve_token_leases(server, leases, book)
    await server.start()
    assert server.address is not None
    made = Cluster(clock, book, leases, server, server.address)
    try:
        yield made
    finally:
        for holder in made.holders:
            await holder.home.close()
            await holder.client.close()
        await server.close()
        await catalog.close()


def _bound(seconds: float) -> float:
    """The single bucket's bound (a full bucket, then the rate) with the slack the issue
    allows for leases."""
    return (1 + SLACK) * RATE * seconds + RATE


async def test_three_busy_holders_stay_within_the_quota_and_share_it(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        holders = [await nodes.holder(f"node-{n}") for n in range(3)]
        await nodes.run(holders, WINDOW_S)
        total = sum(holder.accepted for holder in holders)
        assert total <= _bound(WINDOW_S), total
        # Not starved by the leases either: the rate is used.
        assert total >= (1 - SLACK) * RATE * WINDOW_S, total
        mean = total / len(holders)
        for holder in holders:
            assert abs(holder.accepted - mean) <= 0.15 * mean, [h.accepted for h in holders]
        # What is lent out at once stays within the bound the home keeps.
        assert sum(nodes.leases.outstanding("acme", "requests_per_s").values()) <= (
            OUTSTANDING_S * RATE + 1e-6
        )


async def test_the_bound_holds_in_every_window_after_the_burst(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        holders = [await nodes.holder(f"node-{n}") for n in range(2)]
        await nodes.run(holders, 1.0)  # the full bucket's burst is spent
        before = sum(holder.accepted for holder in holders)
        await nodes.run(holders, WINDOW_S)
        inside = sum(holder.accepted for holder in holders) - before
        assert inside <= (1 + SLACK) * RATE * WINDOW_S, inside
        assert inside >= (1 - SLACK) * RATE * WINDOW_S, inside


async def test_leases_held_through_a_lull_add_little_to_a_full_bucket(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        # Holders that ask for five seconds of their spend at a time: the home's bound on
        # what is lent out at once is all that stops them hoarding.
        holders = [await nodes.holder(f"node-{n}", horizon_s=5.0) for n in range(3)]
        await nodes.run(holders, 1.0)
        nodes.clock.advance(1.0)  # a lull: the bucket is full again
        for holder in holders:
            await holder.greedy(limit=1)  # each takes what the home lends it
        held = sum(holder.home.held("acme", "requests_per_s") for holder in holders)
        assert held <= 0.25 * RATE + 1
        nodes.clock.advance(0.9)  # the bucket refills; the leases have not expired yet
        before = sum(holder.accepted for holder in holders)
        await nodes.run(holders, WINDOW_S)
        inside = sum(holder.accepted for holder in holders) - before
        assert inside <= _bound(WINDOW_S), (inside, held)


async def test_an_idle_holder_does_not_starve_a_busy_one(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        busy, idle = await nodes.holder("busy"), await nodes.holder("idle")
        await nodes.run([busy], WINDOW_S, idle=(idle,))
        assert idle.accepted == round(WINDOW_S / 0.5)  # each of its rare charges passed
        assert busy.accepted >= (1 - SLACK) * RATE * WINDOW_S + RATE - idle.accepted
        # The idle node holds little: a few of its own charges' worth, not a share.
        assert idle.home.held("acme", "requests_per_s") <= 0.02 * RATE
        assert busy.accepted + idle.accepted <= _bound(WINDOW_S)


async def test_a_refusal_names_the_wait_after_which_a_charge_passes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        only = await nodes.holder("only")
        await only.greedy(limit=10 * RATE)
        assert only.accepted == RATE  # the full bucket, then refused
        wait_ms = only.waits_ms[-1]
        assert 0 < wait_ms <= 1000 / RATE * 1.5
        with pytest.raises(QuotaExceededError) as again:
            await only.home.ask("admit_request", "acme", 0)
        assert again.value.status == 429
        assert again.value.details["quota"] == "requests_per_s"
        nodes.clock.advance(again.value.details["retry_after_ms"] / 1000)
        await only.home.ask("admit_request", "acme", 0)


async def test_a_dead_holder_costs_at_most_its_lease_until_it_expires(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        doomed = await nodes.holder("doomed")
        survivors = [await nodes.holder("a"), await nodes.holder("b")]
        await nodes.run([doomed, *survivors], 1.0)
        nodes.clock.advance(0.2)  # the bucket refills; one charge takes a lease of it
        await doomed.greedy(limit=1)
        lent = nodes.leases.outstanding("acme", "requests_per_s")
        lost = lent["doomed"]
        assert 0 < lost <= OUTSTANDING_S * RATE / 3 + 1
        # It dies: its connection drops, its lease is never given back.
        nodes.holders.remove(doomed)
        await doomed.client.close()
        before = sum(holder.accepted for holder in survivors)
        await nodes.run(survivors, WINDOW_S)
        gained = sum(holder.accepted for holder in survivors) - before
        assert gained >= (1 - SLACK) * RATE * WINDOW_S - lost, (gained, lost)
        assert gained <= (1 + SLACK) * RATE * WINDOW_S
        # Expired at the home: the two survivors now share the whole outstanding bound.
        assert "doomed" not in nodes.leases.outstanding("acme", "requests_per_s")


async def test_an_unreachable_home_leaves_only_the_lease_to_spend(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        cut_off = await nodes.holder("cut-off")
        await nodes.run([cut_off], 0.5)
        nodes.clock.advance(0.2)
        await cut_off.greedy(limit=1)
        held = cut_off.home.held("acme", "requests_per_s")
        assert held > 0
        await nodes.server.close()
        spent = 0
        with pytest.raises(QuotaHomeUnreachableError) as refused:
            for _ in range(10 * RATE):
                await cut_off.home.ask("admit_request", "acme", 0)
                spent += 1
        assert spent <= held
        assert refused.value.status == 503 and refused.value.retriable
        assert refused.value.details["retry_after_ms"] > 0


async def test_a_consume_debt_is_handed_to_the_home_and_waited_out(tmp_path: Path) -> None:
    async with cluster(tmp_path, {"consume_bytes_per_s": RATE}) as nodes:
        reader = await nodes.holder("reader")
        await reader.home.ask("admit_consume", "acme", 0)
        reader.home.tell("charge_consume", "acme", 3 * RATE)  # a large read: in debt
        with pytest.raises(QuotaExceededError) as refused:
            await reader.home.ask("admit_consume", "acme", 0)
        # The bucket was full (RATE) before the read: it owes about 2 seconds of rate.
        assert 1500 <= refused.value.details["retry_after_ms"] <= 2500
        nodes.clock.advance(refused.value.details["retry_after_ms"] / 1000)
        await reader.home.ask("admit_consume", "acme", 0)
