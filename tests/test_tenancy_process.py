"""Tenancy through real ``eventbus serve`` processes over HTTPS: the quota flags, and a
tenant deletion killed with SIGKILL part way."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.https import certificates
from tests.servers import ServerProcess

ADMIN = "ebk_process-test-admin-key"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(self, method: str, path: str, key: str, json: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, headers=_auth(key), json=json
        ) as response:
            return response.status, await response.json()


def _tls(tmp_path: Path) -> tuple[list[str], ssl.SSLContext]:
    """Server arguments for a test certificate, and a client context trusting it."""
    cert, key, context = certificates(tmp_path, "process")
    return ["--tls-cert", str(cert), "--tls-key", str(key)], context


def _server(tmp_path: Path, tls: list[str], *args: str, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "data", args=[*tls, *args], env={"EVENTBUS_ADMIN_KEY": ADMIN, **env}
    )


async def test_serve_flags_and_environment_set_the_default_quotas(tmp_path: Path) -> None:
    tls, context = _tls(tmp_path)
    server = _server(
        tmp_path,
        tls,
        "--default-max-topics",
        "1",
        "--max-concurrent-requests",
        "8",
        EVENTBUS_DEFAULT_REQUESTS_PER_S="1000",
        EVENTBUS_DEFAULT_MAX_TOPICS="5",
    ).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = Client(session, server.url)
            status, body = await api.call("POST", "/v1/admin/tenants", ADMIN, {"name": "acme"})
            assert status == 201
            # The flag wins over its variable; the variable sets what no flag gives.
            assert body["quotas"]["max_topics"] == 1
            assert body["quotas"]["requests_per_s"] == 1000
            assert body["quotas"]["produce_bytes_per_s"] is None
            key = body["api_key"]
            assert (await api.call("PUT", "/v1/topics/a", key))[0] == 201
            status, refused = await api.call("PUT", "/v1/topics/b", key)
            assert (status, refused["error"]["code"]) == (409, "topic_limit_reached")
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_tenant_deletion_killed_part_way_is_finished_by_the_next_start(
    tmp_path: Path, seed: int
) -> None:
    """SIGKILL at a random moment of a deletion of 25 topics. After a restart the tenant is
    either whole (the deletion's catalog step had not committed) or entirely gone, data
    directory included: never a tenant with half its topics."""
    rng = random.Random(seed)
    topics = [f"t{i:02d}" for i in range(25)]
    tls, context = _tls(tmp_path)
    server = _server(tmp_path, tls).start()
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            api = Client(session, server.url)
            _, body = await api.call("POST", "/v1/admin/tenants", ADMIN, {"name": "acme"})
            key = body["api_key"]
            for name in topics:
                await api.call("PUT", f"/v1/topics/{name}", key)
                await api.call(
                    "POST", f"/v1/topics/{name}/records", key, {"records": [{"value": name}]}
                )
            deletion = asyncio.ensure_future(api.call("DELETE", "/v1/admin/tenants/acme", ADMIN))
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            server.kill()
            with contextlib.suppress(aiohttp.ClientError):
                await deletion
        finally:
            server.kill()
        tenant_dir = tmp_path / "data" / "topics" / "acme"
        server = _server(tmp_path, tls).start()
        try:
            api = Client(session, server.url)
            status, _ = await api.call("GET", "/v1/admin/tenants/acme", ADMIN)
            if status == 200:
                # Not deleted at all: every topic and record is there, and the key works.
                status, listed = await api.call("GET", "/v1/topics?limit=100", key)
                assert [t["name"] for t in listed["topics"]] == topics
                for name in topics:
                    status, got = await api.call(
                        "GET", f"/v1/topics/{name}/partitions/0/records", key
                    )
                    assert [r["value"] for r in got["records"]] == [name]
            else:
                assert status == 404
                assert not tenant_dir.exists()
                assert (await api.call("GET", "/v1/topics", key))[0] == 401
            assert server.stop() == 0
        finally:
            server.kill()
