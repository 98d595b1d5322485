"""Usage metering and bills through a real server on loopback.

The meter's clock is one the test sets (``usage_clock_ms``), so tests cross UTC hours
without sleeping. The background task flushes every minute and samples once an hour here,
so nothing happens behind a test's back: where a test needs a sample, a flush or an export
it asks the app's meter for it (tests of the task itself set short intervals).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.client import wire
from gateway.http.keys import METERING
from gateway.tenancy.billing import PricePlan
from gateway.tenancy.metering import Meter, NothingHeld, hour_of, hour_text
from gateway.tenancy.usage_export import (
    EXPORTED_SETTING,
    Metering,
    UsageExporter,
    export_key,
    run_metering,
)
from gateway.wiring.metering import BrokerFootprint
from gateway.wiring.state import OBJECT_STORE
from gateway.wiring.storage import OBJECTS_DIR
from partitions.batch import NewRecord, encode_batch
from partitions.catalog import HOUR_MS, UsageCounters, UsageRecord
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.errors import UsagePartlyAddedError
from partitions.worker import LocalPartitionWorker
from tests.brokers import local_broker
from tests.clocks import FileClock
from tests.conftest import ADMIN_KEY, Api, start_api, stop_api
from tests.servers import WORKERS
from tests.tenants import new_tenant
from tests.tmpfs import fill, small_tmpfs
from tiered_storage.layout import parse_segment_key

H = HOUR_MS
MIN = 60_000


class Clock:
    """Milliseconds since the epoch, set by the test; shared with server processes through
    a file when the suite runs them (:meth:`share`)."""

    def __init__(self, ms: int) -> None:
        self.path: Path | None = None
        self._ms = ms

    def __call__(self) -> int:
        return self._ms

    @property
    def ms(self) -> int:
        return self._ms

    @ms.setter
    def ms(self, value: int) -> None:
        self._ms = value
        if self.path is not None:
            FileClock.write(self.path, value)

    def advance(self, ms: int) -> None:
        self.ms += ms

    def share(self, path: Path) -> None:
        self.path = path
        self.ms = self._ms


# Whole hours ahead of the wall clock: tenants made now were created before them.
T0 = hour_of(time.time_ns() // 1_000_000) + 3 * H


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 10 * MIN)


# Nothing flushed or sampled in the background while a test runs (worker processes take
# their flags, which allow flushes at most 5 s apart: readings are exact either way).
QUIET = {"usage_flush_ms": 5_000 if WORKERS else 60_000, "usage_sample_ms": 3_600_000}


async def open_api(data_dir: Path, clock: Clock, **settings: Any) -> Api:
    return await start_api(data_dir, usage_clock_ms=clock, **{**QUIET, **settings})


@pytest.fixture
async def api(tmp_path: Path, clock: Clock) -> AsyncIterator[Api]:
    client = await open_api(tmp_path / "data", clock)
    yield client
    await stop_api(client)


def metering(api: Api) -> Metering:
    return api.server.app[METERING]


@contextlib.asynccontextmanager
async def catalog_of(api: Api) -> AsyncIterator[SqliteCatalog]:
    """The server's catalog, opened by the test (SQLite takes several handles)."""
    catalog = await SqliteCatalog.open(api.data_dir / CATALOG_FILE)
    try:
        yield catalog
    finally:
        await catalog.close()


async def admin_usage(api: Api, tenant: str, **params: str) -> dict[str, Any]:
    """One tenant's usage as the admin reads it (admin requests are not metered), by
    default over the day around T0 (not this month: T0 may be near a month's end)."""
    period = {"from": hour_text(T0 - 24 * H), "to": hour_text(T0 + 24 * H), **params}
    status, body = await api.call(
        "GET", "/v1/admin/usage", key=ADMIN_KEY, params={"tenant": tenant, **period}
    )
    assert status == 200, body
    (bill,) = body["tenants"]
    assert bill["tenant"] == tenant
    return dict(bill)


async def counters(api: Api, tenant: str, **params: str) -> dict[str, Any]:
    return dict((await admin_usage(api, tenant, **params))["usage"])


def payload(key: bytes | None, value: bytes, headers: dict[str, str]) -> int:
    """Key, value and header bytes, counted by the test itself."""
    return (
        len(key or b"")
        + len(value)
        + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    )


def json_payload(record: dict[str, Any]) -> int:
    """The payload of a record as the JSON API renders it (text or base64)."""
    key = record.get("key")
    key_bytes = key.encode() if key is not None else None
    if "key_b64" in record:
        key_bytes = base64.b64decode(record["key_b64"])
    if "value" in record:
        value = record["value"].encode()
    else:
        value = base64.b64decode(record["value_b64"])
    return payload(key_bytes, value, record.get("headers") or {})


# --- what is counted ---------------------------------------------------------------------


async def test_metered_bytes_equal_the_record_bytes_produced_and_read(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    assert (await acme.call("PUT", "/v1/topics/t"))[0] == 201
    produced_bytes = produced = 0

    json_records = [
        {"key": "k1", "value": "héllo wörld", "headers": {"trace": "ä1", "n": "2"}},
        {"value_b64": "AAEC/w==", "key_b64": "3q2+7w=="},
        {"value": ""},
        {"key": "ключ", "value": "x" * 1000},
    ]
    status, _ = await acme.call("POST", "/v1/topics/t/records", json={"records": json_records})
    assert status == 200
    produced_bytes += payload(b"k1", "héllo wörld".encode(), {"trace": "ä1", "n": "2"})
    produced_bytes += payload(bytes.fromhex("deadbeef"), b"\x00\x01\x02\xff", {})
    produced_bytes += payload(None, b"", {}) + payload("ключ".encode(), b"x" * 1000, {})
    produced += 4

    ndjson = b'{"value": "one", "headers": {"h": "v"}}\n{"key": "k", "value": "two"}\n'
    status, _ = await acme.call(
        "POST",
        "/v1/topics/t/records",
        data=ndjson,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200
    produced_bytes += payload(None, b"one", {"h": "v"}) + payload(b"k", b"two", {})
    produced += 2

    binary = [NewRecord(value=b"v" * i, key=b"key", headers=(("a", "b" * i),)) for i in range(5)]
    status, _ = await acme.call(
        "POST",
        "/v1/topics/t/records",
        data=encode_batch(binary, now_ms=0, max_record_bytes=1 << 20),
        headers={"Content-Type": wire.BATCH},
    )
    assert status == 200
    produced_bytes += sum(payload(r.key, r.value, dict(r.headers)) for r in binary)
    produced += 5

    read_bytes = read = 0
    # JSON read of everything, then a binary read from the middle of the first batch.
    status, got = await acme.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0"}
    )
    assert status == 200 and len(got["records"]) == produced
    read_bytes += sum(json_payload(r) for r in got["records"])
    read += produced
    assert read_bytes == produced_bytes  # the test's own count agrees both ways

    status, _, body = await acme.raw(
        "GET",
        "/v1/topics/t/partitions/0/records",
        params={"offset": "2"},
        headers={"Accept": wire.BATCH},
    )
    assert status == 200
    records = [r for _, r in wire.decode_chunks(body)]
    assert [r.offset for r in records] == list(range(2, produced))
    read += len(records)
    read_bytes += sum(r.payload_bytes for r in records)

    # Group fetches: JSON for one group, binary for another.
    status, fetched = await acme.call(
        "POST",
        "/v1/topics/t/groups/g1/fetch",
        json={"auto_offset_reset": "earliest", "max_records": 3},
    )
    assert status == 200 and len(fetched["records"]) == 3
    read += 3
    read_bytes += sum(json_payload(r) for r in fetched["records"])
    status, _, body = await acme.raw(
        "POST",
        "/v1/topics/t/groups/g2/fetch",
        data=orjson.dumps({"auto_offset_reset": "earliest"}),
        headers={"Accept": wire.BATCH, "Content-Type": "application/json"},
    )
    assert status == 200
    records = [r for _, r in wire.decode_chunks(body)]
    assert len(records) == produced
    read += len(records)
    read_bytes += sum(r.payload_bytes for r in records)

    status, usage = await acme.call("GET", "/v1/usage")
    assert status == 200, usage
    assert usage["usage"]["records_in"] == produced
    assert usage["usage"]["bytes_in"] == produced_bytes
    assert usage["usage"]["records_out"] == read
    assert usage["usage"]["bytes_out"] == read_bytes
    # Three produces, two reads, two fetches (the usage read itself is counted after it).
    assert usage["usage"]["requests"] == 8
    # Another tenant's usage is its own.
    assert (await counters(api, "default"))["requests"] == 0


async def test_empty_polls_are_free(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    assert (await acme.call("PUT", "/v1/topics/t"))[0] == 201  # 1 request
    read = "/v1/topics/t/partitions/0/records"
    for _ in range(3):
        status, got = await acme.call("GET", read, params={"offset": "0", "wait_ms": "20"})
        assert status == 200 and got["records"] == []
        status, got = await acme.call("POST", "/v1/topics/t/groups/g/fetch", json={"wait_ms": 20})
        assert status == 200 and got["records"] == []
        status, _, body = await acme.raw(
            "GET", read, params={"offset": "0"}, headers={"Accept": wire.BATCH}
        )
        assert status == 200 and body == b""
    used = await counters(api, "acme")
    assert (used["requests"], used["records_out"], used["bytes_out"]) == (1, 0, 0)

    # A long-poll answered by data is billed, and so is a read refused for bad input.
    poll = asyncio.ensure_future(acme.call("GET", read, params={"offset": "0", "wait_ms": "5000"}))
    await asyncio.sleep(0.05)
    assert (await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "ab"}]}))[
        0
    ] == 200
    status, got = await poll
    assert status == 200 and [r["value"] for r in got["records"]] == ["ab"]
    assert (await acme.call("GET", read, params={"offset": "99"}))[0] == 416
    used = await counters(api, "acme")
    assert (used["requests"], used["records_out"], used["bytes_out"]) == (4, 1, 2)


async def test_a_replayed_idempotent_produce_is_a_request_that_adds_no_bytes(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    body = {"records": [{"value": "abc"}, {"key": "k", "value": "de"}]}
    for _ in range(3):
        status, got = await acme.call(
            "POST", "/v1/topics/t/records", json=body, headers={"Idempotency-Key": "once"}
        )
        assert status == 200 and [o["offset"] for o in got["offsets"]] == [0, 1]
    used = await counters(api, "acme")
    assert (used["requests"], used["records_in"], used["bytes_in"]) == (4, 2, 6)


async def test_refused_requests_count_and_admin_requests_do_not(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    assert (await acme.call("GET", "/v1/topics/nope"))[0] == 404
    assert (await acme.call("PUT", "/v1/topics/bad..name!"))[0] == 400
    assert (await acme.call("PUT", "/v1/topics/small", json={"max_record_bytes": 10}))[0] == 201
    too_large = {"records": [{"value": "ok"}, {"value": "x" * 11}]}
    status, body = await acme.call("POST", "/v1/topics/small/records", json=too_large)
    assert (status, body["error"]["code"]) == (413, "record_too_large")
    used = await counters(api, "acme")  # a refused produce wrote nothing: no bytes
    assert (used["requests"], used["records_in"], used["bytes_in"]) == (4, 0, 0)
    await api.call(
        "PATCH", "/v1/admin/tenants/acme", key=ADMIN_KEY, json={"quotas": {"requests_per_s": 1}}
    )
    statuses = [(await acme.call("GET", "/v1/topics"))[0] for _ in range(3)]
    assert 429 in statuses
    assert (await api.call("GET", "/v1/topics", key="ebk_nobody"))[0] == 401
    assert (await counters(api, "acme"))["requests"] == 7


# --- readings, hours and the period ---------------------------------------------------------


@pytest.mark.single_process("flushes the meter inside the server process")
async def test_readings_include_unflushed_counts_and_flushing_changes_no_reading(
    api: Api,
) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "12345"}]})
    before = await counters(api, "acme")
    assert (before["requests"], before["bytes_in"]) == (2, 5)
    catalog = metering(api).catalog
    assert await catalog.list_usage(T0, T0 + H, tenant="acme") == []  # nothing flushed yet
    await metering(api).meter.flush()
    (row,) = await catalog.list_usage(T0, T0 + H, tenant="acme")
    assert (row.counters.requests, row.counters.bytes_in) == (2, 5)
    assert await counters(api, "acme") == before  # the same, not twice


@pytest.mark.single_process("flushes the meter inside the server process")
async def test_usage_is_kept_per_utc_hour(api: Api, clock: Clock) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "a"}]})
    clock.ms = T0 + H + 5 * MIN
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "bb"}]})
    await metering(api).meter.flush()  # one hour from the catalog, one not yet flushed
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "ccc"}]})
    first = await counters(api, "acme", **{"from": hour_text(T0), "to": hour_text(T0 + H)})
    second = await counters(api, "acme", **{"from": hour_text(T0 + H), "to": hour_text(T0 + 2 * H)})
    both = await counters(api, "acme", **{"from": hour_text(T0)})  # to: the end of this hour
    assert (first["requests"], first["bytes_in"]) == (2, 1)
    assert (second["requests"], second["bytes_in"]) == (2, 5)
    assert (both["requests"], both["bytes_in"]) == (4, 6)
    status, body = await acme.call("GET", "/v1/usage", params={"from": hour_text(T0)})
    assert status == 200
    assert (body["from"], body["to"]) == (hour_text(T0), hour_text(T0 + 2 * H))
    assert body["usage"]["bytes_in"] == 6


@pytest.mark.parametrize(
    ("params", "parameter", "says"),
    [
        ({"from": "2026-01-05T13:30:00Z"}, "from", "whole hour"),
        ({"from": "2026-01-05T13:00:00.5Z"}, "from", "whole hour"),
        ({"to": "2026-01-05T13:00:00+01:00"}, "to", "UTC"),
        ({"to": "2026-01-05"}, "to", "RFC 3339"),  # a date, not a date and time
        ({"to": "2026-01-05 13:00:00Z"}, "to", "RFC 3339"),
        ({"from": "2026-13-05T13:00:00Z"}, "from", "RFC 3339"),
        ({"from": "2026-02-30T13:00:00Z"}, "from", "not a valid date"),
        ({"from": "yesterday"}, "from", "RFC 3339"),
        ({"from": "1969-12-31T23:00:00Z", "to": "1970-01-01T01:00:00Z"}, "from", "1970"),
        ({"from": "2026-01-05T13:00:00Z", "to": "2026-01-05T13:00:00Z"}, "from", "before to"),
        ({"from": "2026-01-05T14:00:00Z", "to": "2026-01-05T13:00:00Z"}, "from", "before to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T01:00:00Z"}, "to", "744 hours"),
    ],
)
async def test_bad_periods_are_refused_clearly(
    api: Api, params: dict[str, str], parameter: str, says: str
) -> None:
    for key, path in ((api.key, "/v1/usage"), (ADMIN_KEY, "/v1/admin/usage")):
        status, body = await api.call("GET", path, key=key, params=params)
        assert status == 400, body
        assert body["error"]["code"] == "invalid_parameter"
        assert body["error"]["details"] == {"parameter": parameter}
        assert says in body["error"]["message"]


async def test_periods_that_are_accepted(api: Api) -> None:
    for params in (
        {"from": "2026-01-05T13:00:00.000Z", "to": "2026-01-05T14:00:00+00:00"},
        {"from": "2026-01-05t13:00:00z", "to": "2026-01-05T14:00:00-00:00"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},  # 31 days exactly
    ):
        status, body = await api.call("GET", "/v1/usage", params=params)
        assert status == 200, body
        assert body["from"].endswith(":00:00Z") and body["usage"]["requests"] == 0
    # Without a period: from the start of this UTC month to the end of this hour.
    status, body = await api.call("GET", "/v1/usage")
    assert body["to"] == hour_text(T0 + H)
    assert body["from"][:8] == hour_text(T0)[:8] and body["from"].endswith("-01T00:00:00Z")


# --- storage and partitions over time --------------------------------------------------------


@pytest.mark.single_process("samples storage inside the server process")
async def test_stored_bytes_and_active_partitions_are_integrated_over_time(
    api: Api, clock: Clock
) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "x" * 500}]})
    _, tenant = await api.call("GET", "/v1/admin/tenants/acme", key=ADMIN_KEY)
    stored = tenant["in_use"]["stored_bytes"]
    assert stored > 500
    meter = metering(api).meter
    clock.ms = T0 + 30 * MIN
    await meter.sample()  # acme holds `stored` bytes and one partition from :30
    clock.ms = T0 + H + 45 * MIN  # 30 minutes of hour 0, 45 of hour 1: no sample between
    hour0 = await counters(api, "acme", **{"from": hour_text(T0), "to": hour_text(T0 + H)})
    hour1 = await counters(api, "acme", **{"from": hour_text(T0 + H), "to": hour_text(T0 + 2 * H)})
    assert hour0["stored_byte_seconds"] == stored * 1800
    assert hour0["partition_seconds"] == 1800 and hour0["partition_hours"] == "0.500000"
    assert hour1["stored_byte_seconds"] == stored * 2700
    assert hour1["partition_seconds"] == 2700

    # A split makes two active partitions (the sealed parent's bytes are still stored).
    status, _ = await acme.call("POST", "/v1/topics/t/partitions/0/split")
    assert status == 200
    await meter.sample()  # at 1:45
    clock.ms = T0 + 2 * H
    hour1 = await counters(api, "acme", **{"from": hour_text(T0 + H), "to": hour_text(T0 + 2 * H)})
    assert hour1["partition_seconds"] == 2700 + 2 * 900
    assert hour1["stored_byte_seconds"] == stored * 3600
    assert hour1["stored_byte_hours"] == f"{stored}.000000"

    # An idle hour: no request, and the bill is only for what is stored and kept active.
    clock.ms = T0 + 3 * H
    status, bill = await acme.call(
        "GET", "/v1/usage", params={"from": hour_text(T0 + 2 * H), "to": hour_text(T0 + 3 * H)}
    )
    assert status == 200
    assert bill["usage"]["requests"] == 0 and bill["usage"]["bytes_in"] == 0
    assert bill["usage"]["stored_byte_seconds"] == stored * 3600
    assert bill["usage"]["partition_seconds"] == 2 * 3600
    items = {i["item"]: i for i in bill["line_items"]}
    assert items["partitions"]["quantity"] == "2.000000000"
    assert items["partitions"]["amount_usd"] == "0.00"  # 2 x 0.0015 = 0.003, under a cent
    assert items["storage"]["quantity"] == format(Decimal(stored) / 10**9 / 730, ".9f")
    assert all(items[i]["quantity"] == "0.000000000" for i in ("requests", "data_in", "data_out"))


@pytest.mark.single_process("samples storage inside the server process")
async def test_deleted_topics_and_tenants_stop_being_billed_for_storage(
    api: Api, clock: Clock
) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "x" * 100}]})
    meter = metering(api).meter
    await meter.sample()
    assert (await acme.call("DELETE", "/v1/topics/t"))[0] == 204
    await meter.sample()  # at 0:10, holding nothing now
    clock.advance(H)
    used = await counters(api, "acme", **{"from": hour_text(T0)})
    assert (used["stored_byte_seconds"], used["partition_seconds"]) == (0, 0)


# --- the bill ---------------------------------------------------------------------------------


async def test_the_bill_of_the_worked_example_through_the_api(api: Api) -> None:
    """docs/tenancy.md's worked example: usage (stored by hand in the catalog), priced with
    the tenant's plan, answered by GET /v1/usage with the hand-computed amounts."""
    from tests.test_billing import WORKED_AMOUNTS, WORKED_USAGE

    acme = await new_tenant(
        api,
        "acme",
        plan={
            "name": "example",
            "usd_per_gb_in": "0.10",
            "usd_per_gb_out": "0.05",
            "usd_per_gb_month_stored": "0.10",
            "usd_per_million_requests": "0.20",
            "usd_per_partition_hour": "0.0015",
        },
    )
    async with catalog_of(api) as catalog:
        await catalog.add_usage([UsageRecord("acme", T0 - H, WORKED_USAGE)])
    status, bill = await acme.call(
        "GET", "/v1/usage", params={"from": hour_text(T0 - H), "to": hour_text(T0)}
    )
    assert status == 200
    assert {i["item"]: i["amount_usd"] for i in bill["line_items"]} == WORKED_AMOUNTS
    assert bill["total_usd"] == "66.72"
    assert bill["plan"]["name"] == "example"
    assert set(bill) == {"from", "to", "usage", "plan", "line_items", "total_usd"}


async def test_plans_change_the_price_and_the_defaults_apply_without_one(
    tmp_path: Path, clock: Clock
) -> None:
    from gateway.tenancy.billing import PricePlan

    served = await open_api(
        tmp_path / "data", clock, default_plan=PricePlan.from_json({"usd_per_gb_in": "1"})
    )
    try:
        acme = await new_tenant(served, "acme", plan={"usd_per_gb_out": "2"})
        heavy = UsageCounters(bytes_in=3 * 10**9, bytes_out=5 * 10**9)
        async with catalog_of(served) as catalog:
            await catalog.add_usage(
                [UsageRecord("acme", T0 - H, heavy), UsageRecord("default", T0 - H, heavy)]
            )
        period = {"from": hour_text(T0 - H), "to": hour_text(T0)}
        status, bill = await acme.call("GET", "/v1/usage", params=period)
        assert bill["total_usd"] == "13.00"  # 3 GB at the default 1, 5 GB at its own 2
        status, body = await served.call("GET", "/v1/admin/usage", key=ADMIN_KEY, params=period)
        assert [(t["tenant"], t["total_usd"]) for t in body["tenants"]] == [
            ("acme", "13.00"),
            ("default", "3.25"),  # 3 at 1, and 5 at the built-in 0.05
        ]
        assert body["total_usd"] == "16.25"
        # A plan change applies to the next reading; null drops the tenant's price.
        await served.call(
            "PATCH",
            "/v1/admin/tenants/acme",
            key=ADMIN_KEY,
            json={"plan": {"usd_per_gb_out": None, "usd_per_gb_in": "0.5"}},
        )
        status, bill = await acme.call("GET", "/v1/usage", params=period)
        assert bill["total_usd"] == "1.75"  # 3 at 0.5, 5 at 0.05
    finally:
        await stop_api(served)


async def test_admin_usage_lists_every_tenant_deleted_ones_too(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    await new_tenant(api, "globex")
    await acme.call("PUT", "/v1/topics/t")
    assert (await api.call("DELETE", "/v1/admin/tenants/acme", key=ADMIN_KEY))[0] == 200
    status, body = await api.call("GET", "/v1/admin/usage", key=ADMIN_KEY)
    assert status == 200
    listed = {t["tenant"]: (t["deleted"], t["usage"]["requests"]) for t in body["tenants"]}
    assert listed == {"acme": (True, 1), "default": (False, 0), "globex": (False, 0)}
    status, body = await api.call(
        "GET", "/v1/admin/usage", key=ADMIN_KEY, params={"tenant": "initech"}
    )
    assert (status, body["error"]["code"]) == (404, "tenant_not_found")
    status, body = await api.call(
        "GET", "/v1/admin/usage", key=ADMIN_KEY, params={"tenant": "Not A Name"}
    )
    assert (status, body["error"]["code"]) == (400, "invalid_parameter")


async def test_a_tenant_sees_no_usage_from_before_it_was_created(api: Api) -> None:
    """Usage rows are kept by tenant name; a tenant made again under an old name must not
    be billed for the hours of the one before it."""
    acme = await new_tenant(api, "acme")
    _, tenant = await api.call("GET", "/v1/admin/tenants/acme", key=ADMIN_KEY)
    created_hour = hour_of(tenant["created_ms"])
    old = UsageCounters(requests=1000, bytes_in=10**12)
    async with catalog_of(api) as catalog:
        await catalog.add_usage([UsageRecord("acme", created_hour - 2 * H, old)])
    period = {"from": hour_text(created_hour - 5 * H), "to": hour_text(created_hour + H)}
    status, bill = await acme.call("GET", "/v1/usage", params=period)
    assert status == 200
    assert bill["usage"]["requests"] == 0 and bill["total_usd"] == "0.00"
    assert (await counters(api, "acme", **period))["requests"] == 1000  # the admin sees it


# --- who may read usage ----------------------------------------------------------------------


async def test_only_full_keys_of_the_whole_tenant_read_its_usage(api: Api) -> None:
    async def key(scope: Any) -> str:
        status, body = await api.call(
            "POST", "/v1/admin/tenants/default/keys", key=ADMIN_KEY, json={"scope": scope}
        )
        assert status == 201
        return str(body["api_key"])

    for scope in ("produce", "consume", {"role": "full", "topics": ["t"]}):
        status, body = await api.call("GET", "/v1/usage", key=await key(scope))
        assert (status, body["error"]["code"]) == (403, "out_of_scope"), scope
    assert (await api.call("GET", "/v1/usage", key=await key("full")))[0] == 200
    status, body = await api.call("GET", "/v1/usage", key=ADMIN_KEY)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await api.call("GET", "/v1/admin/usage")
    assert (status, body["error"]["code"]) == (403, "forbidden")


# --- restarts and the background task --------------------------------------------------------


@pytest.mark.single_process("samples storage inside the server process")
async def test_usage_survives_a_clean_restart_exactly(tmp_path: Path, clock: Clock) -> None:
    data = tmp_path / "data"
    served = await open_api(data, clock)
    acme = await new_tenant(served, "acme")
    await acme.call("PUT", "/v1/topics/t")
    for i in range(5):
        await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "v" * i}]})
    await acme.call("GET", "/v1/topics/t/partitions/0/records", params={"offset": "0"})
    await acme.call("GET", "/v1/topics/t/partitions/0/records", params={"offset": "5"})  # empty
    await served.server.app[METERING].meter.sample()
    clock.advance(20 * MIN)
    before = await admin_usage(served, "acme")
    assert before["usage"]["requests"] == 7 and before["usage"]["stored_byte_seconds"] > 0
    await stop_api(served)  # counts storage up to now, flushes everything

    served = await open_api(data, clock)  # the clock has not moved
    try:
        assert await admin_usage(served, "acme") == before
        clock.advance(H)  # idle: storage goes on being counted, nothing else
        after = (await admin_usage(served, "acme"))["usage"]
        stored = before["usage"]["stored_byte_seconds"] // (20 * 60)
        assert (
            after["stored_byte_seconds"] == before["usage"]["stored_byte_seconds"] + stored * 3600
        )
        assert after["requests"] == 7
    finally:
        await stop_api(served)


@pytest.mark.single_process("sets the export delay, which has no flag")
async def test_the_background_task_flushes_and_exports_on_its_own(
    tmp_path: Path, clock: Clock
) -> None:
    served = await open_api(
        tmp_path / "data", clock, usage_flush_ms=20, usage_sample_ms=20, usage_export_delay_ms=MIN
    )
    try:
        acme = await new_tenant(served, "acme")
        await acme.call("PUT", "/v1/topics/t")
        catalog = served.server.app[METERING].catalog
        for _ in range(500):
            if await catalog.list_usage(T0, T0 + H, tenant="acme"):
                break
            await asyncio.sleep(0.01)
        (row,) = await catalog.list_usage(T0, T0 + H, tenant="acme")
        assert row.counters.requests == 1
        clock.ms = T0 + H + MIN + 1  # hour 0 ended over a minute ago
        exported = tmp_path / "data" / OBJECTS_DIR / export_key("acme", T0)
        for _ in range(500):
            if exported.exists():
                break
            await asyncio.sleep(0.01)
        line = orjson.loads(exported.read_bytes())
        assert line["tenant"] == "acme" and line["hour"] == hour_text(T0)
        assert line["usage"]["requests"] == 1
        # The object appears when its put lands; the counter moves when the put returns.
        for _ in range(500):
            status, text = await served.call("GET", "/metrics", key=ADMIN_KEY)
            assert status == 200
            if "eventbus_usage_exported_objects_total 1.0" in text:
                break
            await asyncio.sleep(0.01)
        assert "eventbus_usage_exported_objects_total 1.0" in text
        assert "eventbus_usage_flush_failures_total 0.0" in text
        flushes = re.search(r"^eventbus_usage_flushes_total (\S+)$", text, re.MULTILINE)
        assert flushes is not None and float(flushes[1]) >= 1
    finally:
        await stop_api(served)


@pytest.mark.single_process("drives the meter and the exporter inside the server process")
async def test_the_hourly_export_is_written_once(api: Api, clock: Clock, tmp_path: Path) -> None:
    acme = await new_tenant(api, "acme", plan={"name": "pro"})
    globex = await new_tenant(api, "globex")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json={"records": [{"value": "abc"}]})
    await globex.call("GET", "/v1/topics")
    meter, catalog = metering(api).meter, metering(api).catalog
    exporter = metering(api).exporter
    await meter.sample()
    clock.ms = T0 + H + 30_000  # the hour ended, but not a minute ago yet
    await meter.sample()
    await meter.flush()
    assert await exporter.export_completed() == 0
    clock.ms = T0 + H + MIN
    await acme.call("GET", "/v1/topics")  # hour 1: not exported with hour 0
    await meter.sample()
    await meter.flush()
    assert await exporter.export_completed() == 2

    root = api.data_dir / OBJECTS_DIR
    files = sorted(p for p in (root / "_usage").rglob("*") if p.is_file())
    assert [p.relative_to(root).as_posix() for p in files] == [
        export_key("acme", T0),
        export_key("globex", T0),
    ]
    assert export_key("acme", T0) == f"_usage/hour={hour_text(T0)[:13]}/tenant=acme.jsonl"
    # Not a key of tiered storage's layout: its cleanup of unnamed objects never takes them.
    assert parse_segment_key(export_key("acme", T0)) is None
    lines = [orjson.loads(line) for p in files for line in p.read_bytes().splitlines()]
    assert [(x["tenant"], x["hour"]) for x in lines] == [
        ("acme", hour_text(T0)),
        ("globex", hour_text(T0)),
    ]
    acme_line, globex_line = lines
    assert acme_line["usage"]["requests"] == 2 and acme_line["usage"]["bytes_in"] == 3
    assert acme_line["usage"]["stored_byte_seconds"] > 0
    assert acme_line["plan"]["name"] == "pro" and acme_line["plan"]["usd_per_gb_in"] == "0.1"
    assert globex_line["usage"]["requests"] == 1
    assert await catalog.get_setting(EXPORTED_SETTING) == str(T0 + H)
    seen = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    # A rerun writes nothing new: the same exporter, and a fresh one that lost its place
    # (a crash before the catalog recorded the hour as exported), even after late counts.
    assert await exporter.export_completed() == 0
    await catalog.add_usage([UsageRecord("acme", T0, UsageCounters(requests=99))])
    await catalog.put_setting(EXPORTED_SETTING, str(T0))
    again = UsageExporter(
        catalog,
        meter,
        api.server.app[OBJECT_STORE],
        lambda tenant: asyncio.sleep(0, None),
        delay_ms=MIN,
    )
    assert await again.export_completed() == 0
    assert {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == seen
    assert sorted(p for p in (root / "_usage").rglob("*") if p.is_file()) == files
    assert not any((root / ".tmp").iterdir())  # no temporary file left behind


# --- the meter against a catalog that fails or stalls ----------------------------------------


class FlakyCatalog(SqliteCatalog):
    """The real catalog, whose usage writes fail as a broken disk would while ``failing``,
    and wait for ``release`` once it is set (a slow disk)."""

    failing = False
    release: asyncio.Event | None = None
    writing = asyncio.Event()

    # Add the first delta, then fail naming the others: a flush a store adds in parts.
    partly = False

    async def add_usage(self, deltas: Sequence[UsageRecord]) -> None:
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        if self.partly:
            first, *rest = sorted(deltas, key=lambda d: d.tenant)
            await super().add_usage([first])
            raise UsagePartlyAddedError(
                "cut short", not_added=[[d.tenant, d.hour_ms] for d in rest]
            )
        self.writing.set()
        if self.release is not None:
            await self.release.wait()
        await super().add_usage(deltas)


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[tuple[FlakyCatalog, Meter]]:
    catalog = await FlakyCatalog.open(tmp_path / "catalog.sqlite3")
    catalog.writing = asyncio.Event()
    worker = LocalPartitionWorker(tmp_path / "data")
    async with local_broker(catalog, worker, tmp_path) as broker:
        meter = Meter(catalog, BrokerFootprint(broker, catalog), clock_ms=lambda: T0)
        yield catalog, meter
    await catalog.close()


async def test_a_failed_flush_keeps_its_counts_for_the_next(
    flaky: tuple[FlakyCatalog, Meter],
) -> None:
    catalog, meter = flaky
    meter.count_request("acme")
    meter.count_in("acme", 2, 10)
    catalog.failing = True
    with pytest.raises(sqlite3.OperationalError):
        await meter.flush()
    meter.count_request("acme")  # counted while the catalog was failing
    assert (await meter.usage(T0, T0 + H))["acme"] == UsageCounters(
        requests=2, records_in=2, bytes_in=10
    )
    catalog.failing = False
    await meter.flush()
    await meter.flush()  # nothing left: adds nothing
    (row,) = await catalog.list_usage(T0, T0 + H)
    assert row.counters == UsageCounters(requests=2, records_in=2, bytes_in=10)
    assert (meter.flushes, meter.flush_failures, meter.unflushed) == (1, 1, 0)


async def test_a_flush_added_in_parts_keeps_only_what_was_not_added(
    flaky: tuple[FlakyCatalog, Meter],
) -> None:
    catalog, meter = flaky
    await catalog.create_tenant("globex")
    meter.count_in("acme", 1, 10)
    meter.count_in("globex", 2, 20)
    catalog.partly = True
    with pytest.raises(UsagePartlyAddedError):
        await meter.flush()
    assert meter.unflushed == 1  # acme's row was added; globex's waits
    catalog.partly = False
    await meter.flush()
    rows = {r.tenant: r.counters for r in await catalog.list_usage(T0, T0 + H)}
    assert rows == {
        "acme": UsageCounters(records_in=1, bytes_in=10),
        "globex": UsageCounters(records_in=2, bytes_in=20),
    }


async def test_a_flush_cancelled_while_writing_counts_once(
    flaky: tuple[FlakyCatalog, Meter],
) -> None:
    catalog, meter = flaky
    meter.count_out("acme", 3, 30)
    catalog.release = asyncio.Event()
    flushing = asyncio.ensure_future(meter.flush())
    await catalog.writing.wait()
    flushing.cancel()  # the write is under way: the flush waits for it
    catalog.release.set()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    await meter.flush()
    (row,) = await catalog.list_usage(T0, T0 + H)
    assert row.counters == UsageCounters(records_out=3, bytes_out=30)
    assert (await meter.usage(T0, T0 + H))["acme"] == row.counters


@pytest.mark.single_process("samples storage inside the server process")
async def test_stored_bytes_count_each_byte_once_local_remote_or_both(
    tmp_path: Path, clock: Clock
) -> None:
    """With tiered storage (the default file:// store), segments are uploaded and then
    leave the disk: the metered storage stays what was written, never doubled while a
    segment is in both places, never lost once it is only in the object store."""
    served = await open_api(tmp_path / "data", clock, retention_check_ms=100)
    try:
        config = {"segment_bytes": 1024, "local_retention_bytes": 2048}
        assert (await served.call("PUT", "/v1/topics/t", json=config))[0] == 201
        for i in range(60):
            status, _ = await served.call(
                "POST",
                "/v1/topics/t/records",
                json={"records": [{"value": f"{i:05d}" + "v" * 150}]},
            )
            assert status == 200

        async def partition() -> dict[str, Any]:
            return dict((await served.call("GET", "/v1/topics/t"))[1]["partitions"][0])

        async def stored() -> int:
            _, tenant = await served.call("GET", "/v1/admin/tenants/default", key=ADMIN_KEY)
            return int(tenant["in_use"]["stored_bytes"])

        written = await stored()
        assert written > 60 * 155
        for _ in range(600):  # uploads, then local retention, run on their own
            part = await partition()
            if part["segments_pending_upload"] == 0 and part["local_start_offset"] > 0:
                break
            await asyncio.sleep(0.05)
        assert part["local_start_offset"] > 0 and part["remote_bytes"] > 0
        assert part["local_bytes"] < written  # some segments are only remote now
        assert await stored() == written
        meter = served.server.app[METERING].meter
        await meter.sample()
        clock.advance(H)
        used = await counters(
            served, "default", **{"from": hour_text(T0), "to": hour_text(T0 + 2 * H)}
        )
        assert used["stored_byte_seconds"] == written * 3600
    finally:
        await stop_api(served)


class KeptObjects:
    """An object sink in memory, for an exporter that has nothing to export yet."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, source: bytes | Path) -> str:
        assert isinstance(source, bytes)
        self.objects.setdefault(key, source)
        return "created"


async def test_metering_waits_longer_while_the_disk_is_full_and_catches_up_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.tenancy.usage_export")
    with small_tmpfs(tmp_path / "small-fs", "2m") as disk:
        catalog = await SqliteCatalog.open(disk / CATALOG_FILE)
        try:
            meter = Meter(catalog, NothingHeld(), clock_ms=lambda: T0)

            async def no_plan(tenant: str) -> None:
                return None

            exporter = UsageExporter(catalog, meter, KeptObjects(), no_plan, delay_ms=HOUR_MS)
            metering = Metering(meter, exporter, PricePlan(), catalog)
            fill(disk / "filler")
            meter.count_request("acme")
            loop = asyncio.ensure_future(run_metering(metering, 0.01, 60.0))
            await asyncio.sleep(0.6)
            # Every 10 ms that would be some 60 attempts; waiting longer after each, a few.
            assert 2 <= meter.flush_failures <= 8, meter.flush_failures
            complaints = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(complaints) == 1 and complaints[0].exc_info is None, complaints
            assert (await meter.usage(T0, T0 + H))["acme"] == UsageCounters(requests=1)
            (disk / "filler").unlink()
            for _ in range(300):
                if await catalog.list_usage(T0, T0 + H):
                    break
                await asyncio.sleep(0.01)
            (row,) = await catalog.list_usage(T0, T0 + H)
            assert row.counters == UsageCounters(requests=1)
            assert "works again" in caplog.text
            metering.stop.set()
            await loop
        finally:
            await catalog.close()
