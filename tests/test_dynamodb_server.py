"""``eventbus serve --catalog dynamodb://...``: real server processes against moto's DynamoDB,
directly or through the fault proxy. A start without DynamoDB says so in one line; a
DynamoDB that stalls or goes away later makes the requests that need it answer 503
``catalog_unavailable`` promptly, the background loops wait it out, and everything works
again by itself once it is back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest

from partitions.catalog_dynamodb.tables import TableNames, create_tables
from tests.dynamodb import DynamoDbFaultProxy, Fault, new_table_names
from tests.servers import ROOT, WORKERS, ServerProcess
from tests.test_catalog_choice import closed_port


async def make_tables(endpoint: str) -> tuple[str, TableNames]:
    """A fresh installation's tables: its ``dynamodb://`` URL and their names."""
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint) as client:
        await create_tables(client, names)
    return f"dynamodb://{names.catalog.removesuffix('-catalog')}", names


def _serve(
    data_dir: Path, endpoint: str, url: str, *, workers: int, more: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``eventbus serve`` to its end (it is expected not to start)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--workers",
            str(workers),
            "--catalog",
            url,
            *more,
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL": endpoint,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _said(stderr: str) -> list[str]:
    """What a process said in plain words on stderr: every line but the JSON log's. A start
    that fails logs nothing worse than info besides (no unclosed connection, no error)."""
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [entry for entry in logged if entry["level"] != "info"] == [], stderr
    return [line for line in stderr.splitlines() if not line.startswith("{")]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_start_without_dynamodb_says_so_in_one_line(
    tmp_path: Path, dynamodb_endpoint: str, workers: int
) -> None:
    port = closed_port()
    started = time.monotonic()
    done = _serve(tmp_path / "data", f"http://127.0.0.1:{port}", "dynamodb://bus", workers=workers)
    assert time.monotonic() - started < 30
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""  # it never said it listens
    assert "Traceback" not in done.stderr
    said = _said(done.stderr)
    assert len(said) == 1, done.stderr
    # What, where, and what to do.
    assert said[0].startswith(
        f"eventbus: cannot reach the catalog dynamodb://bus at http://127.0.0.1:{port}"
    )
    assert said[0].endswith("then start again")
    assert "AWS_ENDPOINT_URL" in said[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_start_without_the_tables_says_how_to_make_them(
    tmp_path: Path, dynamodb_endpoint: str, workers: int
) -> None:
    names = new_table_names()
    prefix = names.catalog.removesuffix("-catalog")
    done = _serve(tmp_path / "data", dynamodb_endpoint, f"dynamodb://{prefix}", workers=workers)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    said = _said(done.stderr)
    assert len(said) == 1, done.stderr
    assert said[0].startswith("eventbus: ")
    assert names.catalog in said[0]
    assert f"eventbus catalog create-tables dynamodb://{prefix}" in said[0]


async def test_a_start_against_a_stalled_dynamodb_ends_at_the_deadline(
    tmp_path: Path, proxy: DynamoDbFaultProxy
) -> None:
    url, _ = await make_tables(proxy.upstream)
    proxy.inject(Fault.STALL, times=None)
    started = time.monotonic()
    done = await asyncio.to_thread(
        _serve, tmp_path / "data", proxy.url, url, workers=0, more=["--catalog-timeout-ms", "1000"]
    )
    assert time.monotonic() - started < 15
    assert done.returncode == 1, done.stderr
    said = _said(done.stderr)
    assert len(said) == 1, done.stderr
    assert said[0].startswith(f"eventbus: cannot reach the catalog {url} at {proxy.url}")
    assert "no answer within 1.0 s" in said[0]


async def test_a_start_refused_by_dynamodb_says_so_in_one_line(
    tmp_path: Path, proxy: DynamoDbFaultProxy
) -> None:
    url, _ = await make_tables(proxy.upstream)
    proxy.inject(Fault.ACCESS_DENIED, "DescribeTable", times=None)
    done = await asyncio.to_thread(_serve, tmp_path / "data", proxy.url, url, workers=0)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    said = _said(done.stderr)
    assert len(said) == 1, done.stderr
    assert said[0].startswith(f"eventbus: DynamoDB at {proxy.url} (region ")
    assert f"refused the catalog {url}" in said[0]
    assert "AccessDeniedException" in said[0]
    assert said[0].endswith("then start again")


def test_a_bad_catalog_url_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for url, complaint in [
        ("mysql://x", "unknown catalog scheme 'mysql'"),
        ("dynamodb://", "needs a table prefix"),
    ]:
        done = _serve(tmp_path / "data", "http://127.0.0.1:9", url, workers=0)
        assert done.returncode == 2
        assert complaint in done.stderr
        assert not (tmp_path / "data").exists()


# --- a server running against the fault proxy --------------------------------------------------


@pytest.fixture
async def proxy(dynamodb_endpoint: str) -> AsyncIterator[DynamoDbFaultProxy]:
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    yield proxy
    await proxy.close()


async def start_server(
    tmp_path: Path, proxy: DynamoDbFaultProxy, *args: str
) -> tuple[ServerProcess, str]:
    url, _ = await make_tables(proxy.upstream)
    server = ServerProcess(
        tmp_path / "data",
        args=["--catalog", url, *args],
        env={"AWS_ENDPOINT_URL": proxy.url},
    )
    await asyncio.to_thread(server.start)
    return server, server.keys["EVENTBUS_API_KEY"]


async def call(
    session: aiohttp.ClientSession, method: str, url: str, key: str, **kwargs: Any
) -> tuple[int, dict[str, str], Any]:
    async with session.request(
        method, url, headers={"Authorization": f"Bearer {key}"}, **kwargs
    ) as response:
        body = await response.read()
        data = json.loads(body) if body and response.content_type == "application/json" else body
        return response.status, dict(response.headers), data


async def until_ok(
    session: aiohttp.ClientSession, method: str, url: str, key: str, *, within_s: float, **kw: Any
) -> tuple[int, Any]:
    """Send the request until it is answered below 500 (what a client's retries do)."""
    deadline = time.monotonic() + within_s
    while True:
        status, _, body = await call(session, method, url, key, **kw)
        if status < 500 or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.2)


async def test_a_stalled_dynamodb_answers_503_promptly_then_recovers(
    tmp_path: Path, proxy: DynamoDbFaultProxy
) -> None:
    server, key = await start_server(tmp_path, proxy, "--catalog-timeout-ms", "1500")
    base = server.url
    try:
        async with aiohttp.ClientSession() as session:
            status, _, body = await call(session, "PUT", f"{base}/v1/topics/before", key)
            assert status in (200, 201), body
            proxy.inject(Fault.STALL, times=None)
            for method, path in [("PUT", "/v1/topics/during"), ("GET", "/v1/topics")]:
                started = time.monotonic()
                status, headers, body = await call(session, method, base + path, key)
                took = time.monotonic() - started
                assert status == 503, body
                assert body["error"] == {
                    "code": "catalog_unavailable",
                    "message": "the catalog did not answer in time; retry",
                }
                assert int(headers["Retry-After"]) >= 1
                # The deadline (1.5 s) and a little: never a hang.
                assert took < 6.0, took
            assert proxy.given  # the calls did reach the stalled proxy
            # What needs nothing of the catalog goes on: a key read before authenticates,
            # and produce and reads of a topic this server knows are served.
            records = {"records": [{"key": "k", "value": "during the outage"}]}
            started = time.monotonic()
            status, _, body = await call(
                session, "POST", f"{base}/v1/topics/before/records", key, json=records
            )
            assert status == 200, body
            status, _, body = await call(
                session, "GET", f"{base}/v1/topics/before/partitions/0/records?offset=0", key
            )
            assert status == 200 and body["records"][-1]["value"] == "during the outage", body
            assert time.monotonic() - started < 6.0
            proxy.clear()
            status, body = await until_ok(
                session, "PUT", f"{base}/v1/topics/during", key, within_s=15
            )
            assert status in (200, 201), body
            status, _, body = await call(session, "GET", f"{base}/v1/topics", key)
            assert status == 200
            assert sorted(t["name"] for t in body["topics"]) == ["before", "during"]
    finally:
        code = await asyncio.to_thread(server.stop)
    assert code == 0, server.stderr()[-3000:]
    assert "Traceback" not in server.stderr()


# What the loops that need the catalog say when they fail and when they work again. (An
# autoscale pass that splits nothing needs only the tenant's quotas, which go on being
# applied as last read through an outage: it does not fail.)
LOOPS = ("metering: a flush, sample or export", "a retention pass")


async def test_background_loops_wait_out_an_outage(
    tmp_path: Path, proxy: DynamoDbFaultProxy
) -> None:
    """With DynamoDB away for a few seconds, metering's flushes, retention, cleanup and the
    keys' last uses all fail for a while: none dies (``/healthz`` stays ok),
    each says so in one warning, and what was counted meanwhile reaches the catalog after."""
    server, key = await start_server(
        tmp_path,
        proxy,
        "--catalog-timeout-ms",
        "500",
        "--usage-flush-ms",
        "100",
        "--usage-sample-ms",
        "100",
        "--autoscale-interval-ms",
        "100",
        "--retention-check-ms",
        "200",
        "--orphan-check-ms",
        "200",
    )
    base = server.url
    try:
        async with aiohttp.ClientSession() as session:
            status, _, body = await call(session, "PUT", f"{base}/v1/topics/t", key)
            assert status in (200, 201), body
            records = {"records": [{"value": f"r{i}"} for i in range(10)]}
            status, _, body = await call(
                session, "POST", f"{base}/v1/topics/t/records", key, json=records
            )
            assert status == 200, body
            await proxy.down()
            await asyncio.sleep(3.0)  # many passes of every loop
            # What needs the catalog is refused; what this server knows is still served.
            status, _, body = await call(session, "GET", f"{base}/v1/topics", key)
            assert status == 503, body
            assert body["error"]["code"] == "catalog_unavailable"
            status, _, body = await call(session, "GET", f"{base}/v1/topics/t", key)
            assert status == 200, body
            health, _, body = await call(session, "GET", f"{base}/healthz", key)
            assert health == 200, body
            await proxy.up()
            status, body = await until_ok(
                session, "POST", f"{base}/v1/topics/t/records", key, within_s=15, json=records
            )
            assert status == 200, body
            status, body = await until_ok(session, "GET", f"{base}/v1/usage", key, within_s=15)
            assert status == 200, body
            assert body["usage"]["records_in"] == 20
            # Each loop's next pass works, however far its backoff had grown.
            deadline = time.monotonic() + 30
            while not all(f"{what} works again after" in server.stderr() for what in LOOPS):
                assert time.monotonic() < deadline, server.stderr()[-3000:]
                await asyncio.sleep(0.2)
            health, _, body = await call(session, "GET", f"{base}/healthz", key)
            assert health == 200, body
    finally:
        code = await asyncio.to_thread(server.stop)
    log = server.stderr()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    for what in LOOPS:
        # One warning per process that ran the loop when it started failing (not one per
        # pass: each ran many), and one line when it worked again.
        assert 1 <= log.count(f"{what} failed (") <= max(1, WORKERS), (what, log[-3000:])
