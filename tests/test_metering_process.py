"""Metering in real ``eventbus serve`` processes: a SIGKILL, a clean restart, the flags.

The catalog file is read by the test itself (a second SQLite handle, as another process
would) to see what the server has flushed.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.tenancy.metering import hour_of, hour_text
from partitions.catalog import HOUR_MS, UsageCounters
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from tests.servers import ServerProcess

ADMIN = "ebk_metering-process-admin-key"
REQUEST_COUNTERS = ("requests", "records_in", "bytes_in", "records_out", "bytes_out")


def _server(data: Path, *args: str, **env: str) -> ServerProcess:
    return ServerProcess(data, args=list(args), env={"EVENTBUS_ADMIN_KEY": ADMIN, **env})


async def _call(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    method: str,
    path: str,
    key: str,
    **kw: Any,
) -> Any:
    async with session.request(
        method, server.url + path, headers={"Authorization": f"Bearer {key}"}, **kw
    ) as response:
        body = await response.json()
        assert response.status < 300, body
        return body


async def _flushed(data: Path, tenant: str) -> UsageCounters:
    """What the catalog holds for ``tenant``, over all hours."""
    catalog = await SqliteCatalog.open(data / CATALOG_FILE)
    try:
        rows = await catalog.list_usage(0, 2**62, tenant=tenant)
    finally:
        await catalog.close()
    return sum((r.counters for r in rows), UsageCounters())


async def _metered(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    """Tenant default's usage of the last day, as the admin reads it (not metered)."""
    now = hour_of(time.time_ns() // 1_000_000)
    period = {"from": hour_text(now - 24 * HOUR_MS), "to": hour_text(now + HOUR_MS)}
    body = await _call(
        session, server, "GET", "/v1/admin/usage", ADMIN, params={"tenant": "default", **period}
    )
    return dict(body["tenants"][0]["usage"])


def _requests_part(usage: dict[str, Any] | UsageCounters) -> tuple[int, ...]:
    if isinstance(usage, UsageCounters):
        return tuple(getattr(usage, name) for name in REQUEST_COUNTERS)
    return tuple(usage[name] for name in REQUEST_COUNTERS)


async def _produce(
    session: aiohttp.ClientSession, server: ServerProcess, key: str, requests: int
) -> None:
    for i in range(requests):
        records = [{"key": f"k{i % 10}", "value": "v" * 10} for _ in range(10)]
        await _call(session, server, "POST", "/v1/topics/t/records", key, json={"records": records})


@pytest.mark.slow
async def test_a_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = _server(data, "--usage-flush-ms", "1000").start()
    key = server.keys["EVENTBUS_API_KEY"]
    try:
        async with aiohttp.ClientSession() as session:
            await _call(session, server, "PUT", "/v1/topics/t", key)
            await _produce(session, server, key, 20)  # 200 records of 12 bytes
            # 21 requests counted: wait until a flush has them all.
            for _ in range(150):
                first = await _flushed(data, "default")
                if first.requests == 21:
                    break
                await asyncio.sleep(0.1)
            assert (first.requests, first.records_in, first.bytes_in) == (21, 200, 2400)
            # Five more produces, and the kill within the flush interval that follows.
            await _produce(session, server, key, 5)
            server.kill()
        flushed = await _flushed(data, "default")
        # Everything flushed before is there; of the last interval, anything from nothing
        # to all of it.
        assert 21 <= flushed.requests <= 26
        assert flushed.records_in == 10 * (flushed.requests - 1)
        assert flushed.bytes_in == 12 * flushed.records_in

        server = _server(data, "--usage-flush-ms", "1000").start()
        async with aiohttp.ClientSession() as session:
            metered = await _metered(session, server)
            # The restart counts what was flushed, exactly; admin reads are not metered.
            assert _requests_part(metered) == _requests_part(flushed)
            # The records themselves all survived: only their metering can be lost.
            got = await _call(
                session,
                server,
                "GET",
                "/v1/topics/t/partitions/0/records",
                key,
                params={"offset": "0", "max_records": "1000"},
            )
            assert len(got["records"]) == 250
        assert server.stop() == 0
    finally:
        server.kill()


async def test_usage_survives_a_clean_restart_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = _server(data).start()  # flushes every 5 s: the stop must flush the rest
    key = server.keys["EVENTBUS_API_KEY"]
    try:
        async with aiohttp.ClientSession() as session:
            await _call(session, server, "PUT", "/v1/topics/t", key)
            await _produce(session, server, key, 3)
            await _call(
                session,
                server,
                "GET",
                "/v1/topics/t/partitions/0/records",
                key,
                params={"offset": "0", "max_records": "7"},
            )
            before = await _metered(session, server)
        assert _requests_part(before) == (5, 30, 360, 7, 84)
        assert server.stop() == 0
        assert _requests_part(await _flushed(data, "default")) == _requests_part(before)

        server = _server(data).start()
        async with aiohttp.ClientSession() as session:
            after = await _metered(session, server)
        assert _requests_part(after) == _requests_part(before)
        # Storage goes on being counted while the server runs, never backwards.
        assert after["stored_byte_seconds"] >= before["stored_byte_seconds"]
        assert server.stop() == 0
    finally:
        server.kill()


async def test_default_prices_from_a_plan_file_the_environment_and_flags(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"name": "house", "usd_per_gb_in": "0.5", "usd_per_gb_out": 7}))
    server = _server(
        tmp_path / "data",
        "--price-plan",
        str(plan_file),
        "--default-usd-per-gb-out",
        "0.9",
        EVENTBUS_DEFAULT_USD_PER_MILLION_REQUESTS="3",
    ).start()
    try:
        async with aiohttp.ClientSession() as session:
            body = await _call(session, server, "GET", "/v1/admin/usage", ADMIN)
        plan = body["tenants"][0]["plan"]
        # The file sets the defaults; a flag (or its variable) wins over the file.
        assert plan == {
            "name": "house",
            "usd_per_gb_in": "0.5",
            "usd_per_gb_out": "0.9",
            "usd_per_gb_month_stored": "0.1",
            "usd_per_million_requests": "3",
            "usd_per_partition_hour": "0.0015",
        }
        assert server.stop() == 0
    finally:
        server.kill()
    plan_file.write_text(json.dumps({"usd_per_gb_in": "-1"}))
    for args in (
        ["--price-plan", str(plan_file)],
        ["--price-plan", str(tmp_path / "missing.json")],
        ["--default-usd-per-gb-in", "cheap"],
        ["--usage-flush-ms", "6000"],  # more than 5 s could lose more to a crash
    ):
        refused = _server(tmp_path / "other", *args)
        with pytest.raises(RuntimeError, match="did not start") as failure:
            refused.start()
        assert "usage" in str(failure.value) or "price" in str(failure.value)
