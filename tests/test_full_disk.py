"""A full disk, for real: a server whose data directory is a small tmpfs keeps answering every
read, refuses every write it cannot store with 503 ``disk_full`` and ``Retry-After``, starts
again on the full disk and reads, and takes writes again as soon as there is room, without a
restart. No acknowledged record is lost, no request answers 500, and nothing in the server's
log is a traceback. And a start whose keys are already in the catalog writes nothing there."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.tenancy.auth import bootstrap
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.errors import DiskFullError
from tests.servers import ServerProcess
from tests.tmpfs import fill, free_bytes, small_tmpfs

ADMIN_KEY = "ebk_full-disk-admin-key-for-this-test-only"
TOPIC = "orders"
GROUP = "billing"
RECORDS_PER_PRODUCE = 4
VALUE_BYTES = 16 * 1024
# Room left for the server once the test's filler is written: a few produces fill it.
HEADROOM = 2 << 20
# Past a revalidation of the key (one second), and several failed metering flushes.
SETTLE_S = 1.3


@pytest.fixture
def data_disk(tmp_path: Path) -> Iterator[Path]:
    """The server's data directory: a 16 MiB tmpfs (its log goes beside it, not in it)."""
    with small_tmpfs(tmp_path / "data", "16m") as disk:
        yield disk


@dataclass
class Client:
    """Calls to one server with one key; every answer is kept, to be checked for a 500."""

    session: aiohttp.ClientSession
    base: str
    key: str
    answered: list[tuple[str, int]] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with self.session.request(
            method, self.base + path, json=json_body, headers=headers, params=params
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            self.answered.append((f"{method} {path}", response.status))
            assert response.status != 500, (method, path, body)
            return response.status, dict(response.headers), body


def start_server(data_dir: Path) -> ServerProcess:
    return ServerProcess(
        data_dir,
        args=["--usage-flush-ms", "200", "--upload-retry-max-ms", "1000"],
        env={"EVENTBUS_ADMIN_KEY": ADMIN_KEY},
    ).start()


def records(first: int) -> list[dict[str, str]]:
    return [
        {"value": f"{n:08d}".ljust(VALUE_BYTES, "v")}
        for n in range(first, first + RECORDS_PER_PRODUCE)
    ]


async def produce_until_full(api: Client, acked: dict[tuple[int, int], str]) -> None:
    """Produce until the server answers ``disk_full``, keeping what it acknowledged."""
    for attempt in range(1000):
        batch = records(attempt * RECORDS_PER_PRODUCE)
        status, headers, body = await api.call(
            "POST", f"/v1/topics/{TOPIC}/records", json_body={"records": batch}
        )
        if status == 503:
            assert body["error"]["code"] == "disk_full", body
            assert int(headers["Retry-After"]) >= 1
            return
        assert status == 200, body
        for sent, placed in zip(batch, body["offsets"], strict=True):
            acked[(placed["partition"], placed["offset"])] = sent["value"]
    raise AssertionError("the disk never filled")


async def settle_full(filler: Path) -> None:
    """Let the server live a while on the full disk (past a revalidation of its key, and
    failing flushes and uploads), then take whatever room the failed writes gave back."""
    await asyncio.sleep(SETTLE_S)
    fill(filler)


def assert_refused_for_room(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "disk_full"
    assert body["error"]["message"] == "the server is out of disk space to store this; retry later"
    assert int(headers["Retry-After"]) >= 1


async def assert_reads_answer(api: Client, acked: dict[tuple[int, int], str]) -> None:
    """Every kind of read answers, with what was stored."""
    status, _, described = await api.call("GET", f"/v1/topics/{TOPIC}")
    assert status == 200 and [p["id"] for p in described["partitions"]] == [0]
    status, _, listed = await api.call("GET", "/v1/topics")
    assert status == 200 and [t["name"] for t in listed["topics"]] == [TOPIC]
    status, _, read = await api.call(
        "GET", f"/v1/topics/{TOPIC}/partitions/0/records", params={"offset": "0"}
    )
    assert status == 200 and read["records"]
    assert all(r["value"] == acked[(0, r["offset"])] for r in read["records"])
    status, _, group = await api.call("GET", f"/v1/topics/{TOPIC}/groups/{GROUP}")
    assert status == 200 and group["group"] == GROUP
    status, _, usage = await api.call("GET", "/v1/usage")
    assert status == 200 and usage["usage"]["requests"] > 0
    status, _, tenants = await api.call("GET", "/v1/admin/tenants", key=ADMIN_KEY)
    assert status == 200 and [t["name"] for t in tenants["tenants"]] == ["default"]
    status, _, keys = await api.call("GET", "/v1/admin/tenants/default/keys", key=ADMIN_KEY)
    assert status == 200 and all(k["last_used_ms"] is not None for k in keys["keys"])
    status, _, _ = await api.call("GET", "/metrics", key=ADMIN_KEY)
    assert status == 200
    status, _, health = await api.call("GET", "/healthz")
    assert status == 200, health


async def assert_writes_refused(api: Client, member: dict[str, Any] | None) -> None:
    big = [{"value": "x" * (256 * 1024)}]
    assert_refused_for_room(
        *await api.call("POST", f"/v1/topics/{TOPIC}/records", json_body={"records": big})
    )
    assert_refused_for_room(*await api.call("PUT", "/v1/topics/payments", json_body={}))
    if member is not None:
        path, body = commit(member, 1)
        assert_refused_for_room(*await api.call("POST", path, json_body=body))


def commit(member: dict[str, Any], offset: int) -> tuple[str, dict[str, Any]]:
    body = {
        "member_id": member["member_id"],
        "generation": member["generation"],
        "offsets": [{"partition": 0, "offset": offset}],
    }
    return f"/v1/topics/{TOPIC}/groups/{GROUP}/commit", body


async def join(api: Client) -> dict[str, Any]:
    status, _, member = await api.call(
        "POST",
        f"/v1/topics/{TOPIC}/groups/{GROUP}/fetch",
        json_body={"auto_commit": False, "auto_offset_reset": "earliest", "max_records": 1},
    )
    assert status == 200 and member["assignment"] == [0], member
    return member


async def read_partition(api: Client) -> dict[int, str]:
    stored: dict[int, str] = {}
    offset = 0
    while True:
        status, _, read = await api.call(
            "GET",
            f"/v1/topics/{TOPIC}/partitions/0/records",
            params={"offset": str(offset), "max_records": "1000"},
        )
        assert status == 200, read
        stored.update((r["offset"], r["value"]) for r in read["records"])
        offset = read["next_offset"]
        if offset >= read["high_watermark"]:
            return stored


def assert_clean_log(server: ServerProcess) -> None:
    """No traceback and no request answered 500, in every line the server logged (both
    runs of it: they append to one file)."""
    text = server.stderr()
    assert "Traceback" not in text, text[-4000:]
    for line in text.splitlines():
        entry = json.loads(line)
        assert entry.get("status") != 500, line


async def test_a_full_disk_keeps_reads_refuses_writes_and_recovers_by_itself(
    data_disk: Path,
) -> None:
    filler = data_disk / "filler"
    server = await asyncio.to_thread(start_server, data_disk)
    servers = [server]
    acked: dict[tuple[int, int], str] = {}
    try:
        async with aiohttp.ClientSession() as session:
            api = Client(session, server.url, server.keys["EVENTBUS_API_KEY"])
            # Segments roll often, so uploads to the object store (on the same disk) run too.
            topic = {"segment_bytes": 64 * 1024, "autoscale": {"enabled": False}}
            status, _, _ = await api.call("PUT", f"/v1/topics/{TOPIC}", json_body=topic)
            assert status == 201
            member = await join(api)

            fill(filler, free_bytes(data_disk) - HEADROOM)
            await produce_until_full(api, acked)
            await settle_full(filler)
            await assert_reads_answer(api, acked)
            status, _, fetched = await api.call(
                "POST",
                f"/v1/topics/{TOPIC}/groups/{GROUP}/fetch",
                json_body={"member_id": member["member_id"], "max_records": 2},
            )
            assert status == 200 and fetched["records"], fetched
            await assert_writes_refused(api, member)

            # Stopped and started again on the disk still full: it starts, and reads.
            assert await asyncio.to_thread(server.stop) == 0
            fill(filler)
            server = await asyncio.to_thread(start_server, data_disk)
            servers.append(server)
            api.base = server.url
            await settle_full(filler)
            await assert_reads_answer(api, acked)
            member = await join(api)  # a group that exists needs no room to join
            await assert_writes_refused(api, member)

            # Room again: every write works at once, with no restart.
            filler.unlink()
            first = len(acked)
            batch = records(first)
            status, _, body = await api.call(
                "POST", f"/v1/topics/{TOPIC}/records", json_body={"records": batch}
            )
            assert status == 200, body
            for sent, placed in zip(batch, body["offsets"], strict=True):
                acked[(placed["partition"], placed["offset"])] = sent["value"]
            status, _, _ = await api.call("PUT", "/v1/topics/payments", json_body={})
            assert status == 201
            path, body = commit(member, 1)
            status, _, committed = await api.call("POST", path, json_body=body)
            assert status == 200, committed

            stored = await read_partition(api)
            assert {(0, offset): value for offset, value in stored.items()} == acked
        assert await asyncio.to_thread(server.stop) == 0
        assert_clean_log(server)
    finally:
        for each in servers:
            each.kill()


async def test_a_start_whose_keys_are_in_place_writes_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data", "2m") as disk:
        catalog = await SqliteCatalog.open(disk / CATALOG_FILE)
        try:
            admin_hash = await bootstrap(catalog, disk, ADMIN_KEY)
            credentials = (disk / "credentials").read_text()
            fill(disk / "filler")
            # Started again on the full disk, with the same admin key or none: it starts.
            assert await bootstrap(catalog, disk, ADMIN_KEY) == admin_hash
            assert await bootstrap(catalog, disk, None) == admin_hash
            assert (disk / "credentials").read_text() == credentials
            # A new admin key is a change, which needs room.
            with pytest.raises(DiskFullError):
                await bootstrap(catalog, disk, "ebk_another-admin-key")
        finally:
            await catalog.close()
