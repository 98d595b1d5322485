"""End to end through real `eventbus serve` processes."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import ssl
import stat
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tests.servers import ServerProcess

RECORDS = 100_000
CLIENTS = 16
PER_REQUEST = 250


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _read_all(
    session: aiohttp.ClientSession, url: str, key: str, topic: str, partition: int
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        async with session.get(
            f"{url}/v1/topics/{topic}/partitions/{partition}/records",
            params={"offset": str(offset), "max_records": "10000", "max_bytes": "16777216"},
            headers=_auth(key),
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        out.extend(body["records"])
        if body["next_offset"] >= body["high_watermark"]:
            return out
        offset = body["next_offset"]


@pytest.mark.slow
async def test_100k_keyed_records_from_concurrent_clients(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        key = server.keys["EVENTBUS_API_KEY"]
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{server.url}/v1/topics/events", headers=_auth(key)) as r:
                assert r.status == 201
            sent: dict[str, dict[str, Any]] = {}
            acked: dict[tuple[int, int], str] = {}

            async def client(n: int) -> None:
                rng = random.Random(n)
                for start in range(
                    n * (RECORDS // CLIENTS), (n + 1) * (RECORDS // CLIENTS), PER_REQUEST
                ):
                    batch = []
                    for i in range(start, start + PER_REQUEST):
                        record: dict[str, Any] = {"headers": {"seq": str(i)}}
                        if i % 3 == 0:
                            record["key_b64"] = base64.b64encode(f"k{i % 97}".encode()).decode()
                        else:
                            record["key"] = f"k{i % 97}"
                        if i % 2 == 0:
                            record["value"] = f"value {i} " + "é" * rng.randrange(20)
                        else:
                            record["value_b64"] = base64.b64encode(
                                os.urandom(rng.randrange(1, 40))
                            ).decode()
                        sent[str(i)] = record
                        batch.append(record)
                    async with session.post(
                        f"{server.url}/v1/topics/events/records",
                        json={"records": batch},
                        headers=_auth(key),
                    ) as response:
                        assert response.status == 200, await response.text()
                        offsets = (await response.json())["offsets"]
                    for record, placed in zip(batch, offsets, strict=True):
                        where = (placed["partition"], placed["offset"])
                        assert where not in acked, f"offset {where} given twice"
                        acked[where] = record["headers"]["seq"]

            await asyncio.gather(*(client(n) for n in range(CLIENTS)))
            assert len(acked) == RECORDS

            records = await _read_all(session, server.url, key, "events", 0)
        assert [r["offset"] for r in records] == list(range(RECORDS))  # exactly once each
        per_client_last: dict[int, int] = defaultdict(lambda: -1)
        for record in records:
            seq = record["headers"]["seq"]
            assert acked[(0, record["offset"])] == seq
            original = sent[seq]
            for field in ("key", "key_b64", "value", "value_b64", "headers"):
                assert record.get(field) == original.get(field), (field, record, original)
            # Per-key order: one client sends each key's records in sequence order.
            i = int(seq)
            owner = i // (RECORDS // CLIENTS)
            assert i > per_client_last[owner * 1000 + i % 97]
            per_client_last[owner * 1000 + i % 97] = i
        assert server.stop() == 0
    finally:
        server.kill()


async def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        key = server.keys["EVENTBUS_API_KEY"]
        admin = server.keys["EVENTBUS_ADMIN_KEY"]
        async with aiohttp.ClientSession() as session:
            await session.put(f"{server.url}/v1/topics/t", headers=_auth(key))
            async with session.post(
                f"{server.url}/v1/topics/t/records",
                json={"records": [{"value": str(i)} for i in range(1000)]},
                headers=_auth(key),
            ) as response:
                assert response.status == 200
            # A long-poll past the end is in flight when SIGTERM arrives.
            poll = asyncio.ensure_future(
                session.get(
                    f"{server.url}/v1/topics/t/partitions/0/records",
                    params={"offset": "1000", "wait_ms": "30000"},
                    headers=_auth(key),
                )
            )
            for _ in range(500):
                async with session.get(f"{server.url}/metrics", headers=_auth(admin)) as r:
                    if "eventbus_long_polls_waiting 1.0" in await r.text():
                        break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the long-poll never started waiting")
            started = asyncio.get_running_loop().time()
            code = await asyncio.to_thread(server.stop)
            assert code == 0
            async with await poll as response:
                assert response.status == 200
                assert (await response.json())["records"] == []
            # Shutdown released the poll instead of waiting out its 30 s.
            assert asyncio.get_running_loop().time() - started < 20
        # Everything acknowledged is there after a restart.
        server = ServerProcess(tmp_path / "data").start()
        async with aiohttp.ClientSession() as session:
            records = await _read_all(session, server.url, key, "t", 0)
        assert [r["value"] for r in records] == [str(i) for i in range(1000)]
        assert server.stop() == 0
    finally:
        server.kill()


async def test_a_long_poll_is_released_by_a_produce_in_a_real_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        key, admin = server.keys["EVENTBUS_API_KEY"], server.keys["EVENTBUS_ADMIN_KEY"]

        async def metric(session: aiohttp.ClientSession, name: str) -> float:
            async with session.get(f"{server.url}/metrics", headers=_auth(admin)) as response:
                for line in (await response.text()).splitlines():
                    if line.split(" ")[0] in (name, name + "_total"):
                        return float(line.split(" ")[1])
            raise AssertionError(f"no metric {name}")

        async with aiohttp.ClientSession() as session:
            await session.put(f"{server.url}/v1/topics/t", headers=_auth(key))
            wakeups = await metric(session, "eventbus_long_poll_wakeups")
            reader = asyncio.ensure_future(
                session.get(
                    f"{server.url}/v1/topics/t/partitions/0/records",
                    params={"offset": "0", "wait_ms": "30000"},
                    headers=_auth(key),
                )
            )
            for _ in range(500):
                if await metric(session, "eventbus_long_polls_waiting") == 1:
                    break
                await asyncio.sleep(0.01)
            assert not reader.done()
            async with session.post(
                f"{server.url}/v1/topics/t/records",
                json={"records": [{"value": "now"}]},
                headers=_auth(key),
            ) as response:
                assert response.status == 200
            async with await asyncio.wait_for(reader, 10) as response:
                assert [r["value"] for r in (await response.json())["records"]] == ["now"]
            # One wake-up, caused by the produce: the reader did not poll.
            assert await metric(session, "eventbus_long_poll_wakeups") == wakeups + 1
        assert server.stop() == 0
    finally:
        server.kill()


def test_first_start_writes_keys_only_to_the_credentials_file(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        keys = server.keys
        path = tmp_path / "data" / "credentials"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert set(keys) == {"EVENTBUS_ADMIN_KEY", "EVENTBUS_API_KEY"}
        assert server.stop() == 0
        log = server.stderr()
        assert str(path) in log
        for key in keys.values():
            assert key not in log
        # A second start generates nothing new.
        server = ServerProcess(tmp_path / "data").start()
        assert server.keys == keys
        assert server.stop() == 0
    finally:
        server.kill()


async def test_flags_win_over_environment_variables(tmp_path: Path) -> None:
    admin = "ebk_admin-from-the-environment"
    server = ServerProcess(
        tmp_path / "data",
        env={
            "EVENTBUS_ADMIN_KEY": admin,
            "EVENTBUS_HOST": "127.0.0.2",
            "EVENTBUS_MAX_WAIT_MS": "5",
        },
        args=["--host", "127.0.0.1"],
    )
    server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert "EVENTBUS_ADMIN_KEY" not in server.keys  # given, so not generated
        key = server.keys["EVENTBUS_API_KEY"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/metrics", headers=_auth(admin)) as response:
                assert response.status == 200
            await session.put(f"{server.url}/v1/topics/t", headers=_auth(key))
            started = time.monotonic()
            async with session.get(
                f"{server.url}/v1/topics/t/partitions/0/records",
                params={"wait_ms": "60000"},
                headers=_auth(key),
            ) as response:
                assert response.status == 200
            # The environment set a 5 ms cap: the minute asked for is cut to it.
            assert time.monotonic() - started < 30
        assert server.stop() == 0
    finally:
        server.kill()


async def test_https_with_a_generated_certificate(tmp_path: Path) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    server = ServerProcess(
        tmp_path / "data", args=["--tls-cert", str(cert_path), "--tls-key", str(key_path)]
    ).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        key = server.keys["EVENTBUS_API_KEY"]
        context = ssl.create_default_context()
        authority.configure_trust(context)
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.put(f"{server.url}/v1/topics/t", headers=_auth(key)) as response:
                assert response.status == 201
            async with session.post(
                f"{server.url}/v1/topics/t/records",
                json={"records": [{"value": "over tls"}]},
                headers=_auth(key),
            ) as response:
                assert response.status == 200
            records = await _read_all(session, server.url, key, "t", 0)
            assert [r["value"] for r in records] == ["over tls"]
        # Plain HTTP to the TLS port gets nowhere; an untrusting client refuses the cert.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(server.url + "/healthz") as response:
                    await response.read()
        assert server.stop() == 0
    finally:
        server.kill()
