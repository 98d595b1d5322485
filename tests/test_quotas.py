"""Token buckets and the quota book, on a clock the test moves: tokens are counted."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.tenancy.quotas import (
    STALE_QUOTAS_S,
    InvalidQuotasError,
    QuotaBook,
    QuotaExceededError,
    Quotas,
    StorageQuotaExceededError,
    TenantQuotas,
    TokenBucket,
    apply_quota_changes,
    parse_quota_changes,
)
from partitions.catalog import TenantLimits, TenantRecord
from partitions.catalog_sqlite import SqliteCatalog
from partitions.errors import CatalogUnavailableError
from tests.clocks import FileClock
from tests.https import FakeClock


def test_a_bucket_admits_its_rate_over_time() -> None:
    bucket = TokenBucket(rate=100, capacity=100, tokens=100, updated=0.0)
    accepted = 0
    now = 0.0
    while now < 60:
        while bucket.take(7, now) == 0.0:
            accepted += 7
        now += 0.01
    # A full bucket at the start, then 100 per second: 100 + 6000, to within one request.
    assert 6100 - 7 <= accepted <= 6100


def test_a_refused_take_says_exactly_when_it_will_pass() -> None:
    bucket = TokenBucket(rate=10, capacity=50, tokens=0, updated=0.0)
    wait = bucket.take(25, 0.0)
    assert wait == pytest.approx(2.5)
    assert bucket.take(25, 2.4) > 0  # nothing was taken by the refusals
    assert bucket.take(25, 2.5) == 0.0
    assert bucket.tokens == pytest.approx(0.0)


def test_a_cost_above_the_capacity_passes_with_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket(rate=10, capacity=10, tokens=10, updated=0.0)
    assert bucket.take(35, 0.0) == 0.0
    assert bucket.tokens == -25
    assert bucket.wait_positive(0.0) == pytest.approx(2.5, abs=0.01)
    assert bucket.wait_positive(2.51) == 0.0


def test_charging_after_the_read_makes_the_next_read_wait() -> None:
    bucket = TokenBucket(rate=1000, capacity=1000, tokens=1000, updated=0.0)
    assert bucket.wait_positive(0.0) == 0.0
    bucket.charge(4000, 0.0)  # a read larger than the bucket
    assert bucket.wait_positive(1.0) == pytest.approx(2.0, abs=0.01)
    assert bucket.wait_positive(3.01) == 0.0


def test_quota_changes_are_validated() -> None:
    assert parse_quota_changes({"max_topics": 0, "requests_per_s": None}) == {
        "max_topics": 0,
        "requests_per_s": None,
    }
    for bad in (
        {"produce_bytes_per_s": 0},  # a rate of zero would refuse forever
        {"max_topics": -1},
        {"max_topics": 1.5},
        {"max_topics": True},
        {"max_topics": "ten"},
        {"nonsense": 1},
        [1],
    ):
        with pytest.raises(InvalidQuotasError):
            parse_quota_changes(bad)
    stored = {"max_topics": 5, "requests_per_s": 10}
    changed = apply_quota_changes(stored, {"max_topics": "default", "max_partitions": None})
    assert changed == {"requests_per_s": 10, "max_partitions": None}
    assert Quotas(max_topics=3).overlay(changed) == Quotas(
        max_topics=3, requests_per_s=10, max_partitions=None
    )


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[SqliteCatalog]:
    store = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    await store.create_tenant("acme", quotas={"requests_per_s": 5, "max_stored_bytes": 1000})
    await store.create_tenant("globex")
    yield store
    await store.close()


async def test_defaults_and_overrides(catalog: SqliteCatalog) -> None:
    clock = FakeClock()
    stored = {"acme": 0}

    async def stored_bytes(tenant: str) -> int:
        return stored[tenant]

    defaults = Quotas(requests_per_s=100, max_topics=10)
    book = QuotaBook(
        TenantQuotas(catalog, defaults, clock=clock),
        stored_bytes=stored_bytes,
    )
    assert await book.quotas("globex") == defaults
    assert await book.quotas("acme") == Quotas(
        requests_per_s=5, max_topics=10, max_stored_bytes=1000
    )
    assert await book.limits("acme") == TenantLimits(max_topics=10)
    assert await book.partition_limit("acme") is None
    # Five requests, then refused with the exact wait; the refusal takes nothing.
    for _ in range(5):
        await book.admit_request("acme")
    with pytest.raises(QuotaExceededError) as refused:
        await book.admit_request("acme")
    assert refused.value.details == {"quota": "requests_per_s", "limit": 5, "retry_after_ms": 200}
    clock.now += 0.2
    await book.admit_request("acme")
    # Another tenant is untouched by acme's use.
    for _ in range(50):
        await book.admit_request("globex")
    # A change is read at the next request once forgotten; the bucket keeps its level.
    await catalog.update_tenant("acme", expected_version=1, quotas={"requests_per_s": 1000})
    with pytest.raises(QuotaExceededError):
        await book.admit_request("acme")
    book.forget("acme")
    with pytest.raises(QuotaExceededError) as refused:
        await book.admit_request("acme")  # the new rate, and the bucket as it was
    assert refused.value.details["limit"] == 1000
    clock.now += 0.0105
    for _ in range(10):  # 10 tokens in 10 ms at the new rate
        await book.admit_request("acme")


async def test_storage_is_measured_and_grows_with_each_produce(catalog: SqliteCatalog) -> None:
    clock = FakeClock()
    stored = {"acme": 900}
    measured = []

    async def stored_bytes(tenant: str) -> int:
        measured.append(tenant)
        return stored[tenant]

    book = QuotaBook(
        TenantQuotas(catalog, Quotas(), clock=clock),
        stored_bytes=stored_bytes,
        storage_retry_s=30,
    )
    await book.check_storage("acme")
    book.note_stored("acme", 99)
    await book.check_storage("acme")  # 999: still under
    book.note_stored("acme", 1)
    with pytest.raises(StorageQuotaExceededError) as refused:
        await book.check_storage("acme")
    assert refused.value.details["retry_after_ms"] == 30_000
    assert measured == ["acme"]  # measured once; the rest was counted
    stored["acme"] = 10  # retention removed data: seen at the next measurement
    clock.now += 1
    await book.check_storage("acme")
    assert measured == ["acme", "acme"]
    await book.check_storage("globex")  # no limit: never measured
    assert measured == ["acme", "acme"]


async def test_produce_tokens_are_given_back_when_the_write_fails(catalog: SqliteCatalog) -> None:
    await catalog.update_tenant("globex", expected_version=1, quotas={"produce_bytes_per_s": 100})
    clock = FakeClock()

    async def nothing(tenant: str) -> int:
        return 0

    book = QuotaBook(TenantQuotas(catalog, Quotas(), clock=clock), stored_bytes=nothing)
    # The bucket holds one second of rate (100): a produce of 500 passes with it full and
    # leaves a debt of 400, so the next waits for 400 + 100 tokens.
    await book.admit_produce("globex", 500)
    with pytest.raises(QuotaExceededError) as refused:
        await book.admit_produce("globex", 500)
    assert refused.value.details["retry_after_ms"] == 5000
    book.refund_produce("globex", 500)  # the write failed: the bucket is full again
    await book.admit_produce("globex", 500)


# A process that reads a file clock in a loop for as long as its stdin stays open.
_CLOCK_READER = """
import sys, threading
from pathlib import Path
from tests.clocks import FileClock
clock = FileClock(Path(sys.argv[1]))
print("mapped", flush=True)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
reads = 0
while not done.is_set():
    clock()
    reads += 1
print(reads)
"""


def test_a_file_clock_set_while_another_process_reads_it_never_kills_the_reader(
    tmp_path: Path,
) -> None:
    """Readers map the clock's file: setting the clock must never leave it empty, even for
    an instant, or a reader touching the mapped page then dies of SIGBUS."""
    path = tmp_path / "clock"
    FileClock.write(path, 0.0)
    reader = subprocess.Popen(
        [sys.executable, "-c", _CLOCK_READER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert reader.stdin is not None and reader.stdout is not None
    assert reader.stdout.readline() == b"mapped\n"  # mapped before the clock moves
    for n in range(20_000):
        FileClock.write(path, float(n))
    out, _ = reader.communicate(b"", timeout=30)
    assert reader.returncode == 0, reader.returncode
    assert int(out) > 0
    assert FileClock(path)() == 19_999.0
    assert path.stat().st_size == 8


class OutageCatalog(SqliteCatalog):
    """The real catalog, whose tenant reads answer that it cannot be reached while ``out``."""

    out = False
    reads = 0

    async def get_tenant(self, name: str) -> TenantRecord:
        self.reads += 1
        if self.out:
            raise CatalogUnavailableError("the catalog did not answer in time")
        return await super().get_tenant(name)


async def test_quotas_read_recently_are_applied_through_a_catalog_outage(
    tmp_path: Path,
) -> None:
    catalog = await OutageCatalog.open(tmp_path / "catalog.sqlite3")
    try:
        await catalog.create_tenant("acme", quotas={"requests_per_s": 5})
        await catalog.create_tenant("globex")
        clock = FakeClock()
        quotas = TenantQuotas(catalog, Quotas(requests_per_s=100), clock=clock)
        assert (await quotas.quotas("acme")).requests_per_s == 5
        catalog.out = True
        clock.advance(2.0)
        assert (await quotas.quotas("acme")).requests_per_s == 5  # read, failed: as read
        reads = catalog.reads
        for _ in range(20):  # known out: no request waits on the catalog
            assert (await quotas.quotas("acme")).requests_per_s == 5
        await asyncio.sleep(0)
        assert catalog.reads <= reads + 1
        with pytest.raises(CatalogUnavailableError):
            await quotas.quotas("globex")  # never read: nothing to apply
        clock.advance(STALE_QUOTAS_S)
        with pytest.raises(CatalogUnavailableError):
            await quotas.quotas("acme")  # read too long ago
        catalog.out = False
        assert (await quotas.quotas("acme")).requests_per_s == 5
    finally:
        await catalog.close()
