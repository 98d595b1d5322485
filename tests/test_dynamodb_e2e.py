"""End to end on the cloud half: `eventbus serve --catalog dynamodb://... --object-store
s3://...`, a real server process against moto's DynamoDB and S3. Tenants, keys, topics,
produce, a split and a merge, a group consuming and committing, usage; then a restart, after
which everything is there as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aioboto3
import aiohttp

from partitions.catalog_dynamodb.tables import create_tables
from tests.dynamodb import new_table_names
from tests.s3 import create_bucket
from tests.servers import ServerProcess

KEYS = [f"user-{n}" for n in range(40)]


class Client:
    """One key's calls to one server."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url, self.key = session, url, key

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
        ) as response:
            text = await response.text()
            return response.status, (await response.json()) if text else None


def _server(data_dir: Path, catalog: str, bucket: str, dynamodb: str, s3: str) -> ServerProcess:
    return ServerProcess(
        data_dir,
        args=["--catalog", catalog, "--object-store", f"s3://{bucket}/events"],
        env={"AWS_ENDPOINT_URL_DYNAMODB": dynamodb, "AWS_ENDPOINT_URL_S3": s3},
    )


async def _produce(client: Client, topic: str, round_: int) -> None:
    records = [{"key": k, "value": f"{k}:{round_}"} for k in KEYS]
    status, body = await client.call("POST", f"/v1/topics/{topic}/records", {"records": records})
    assert status == 200, body


async def _consume_all(client: Client, topic: str, group: str, expected: int) -> list[str]:
    """Fetch as one member until ``expected`` records came (the member commits as it goes),
    then leave (which commits what the last fetch delivered)."""
    values: list[str] = []
    member = None
    for _ in range(200):
        if len(values) >= expected:
            break
        body: dict[str, Any] = {"max_records": 50, "wait_ms": 200, "auto_offset_reset": "earliest"}
        if member is not None:
            body["member_id"] = member
        status, answer = await client.call("POST", f"/v1/topics/{topic}/groups/{group}/fetch", body)
        assert status == 200, answer
        member = answer["member_id"]
        values.extend(r["value"] for r in answer["records"])
    status, _ = await client.call(
        "POST", f"/v1/topics/{topic}/groups/{group}/leave", {"member_id": member}
    )
    assert status == 204
    return values


def _lineage(topic: dict[str, Any]) -> list[dict[str, Any]]:
    fields = ("id", "state", "hash_range", "parents", "children", "start_offset", "end_offset")
    return [{f: p[f] for f in fields} for p in topic["partitions"]]


def _in_key_order(values: list[str]) -> None:
    """Every key's values come in the order they were produced."""
    seen: dict[str, int] = {}
    for value in values:
        key, round_ = value.split(":")
        assert int(round_) > seen.get(key, -1), f"{key} out of order"
        seen[key] = int(round_)


async def test_a_server_on_dynamodb_and_s3_keeps_everything_across_a_restart(
    tmp_path: Path, dynamodb_endpoint: str, s3_endpoint: str
) -> None:
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await create_tables(client, names)
    catalog = f"dynamodb://{names.catalog.removesuffix('-catalog')}"
    bucket = await create_bucket(s3_endpoint)
    server = _server(tmp_path / "data", catalog, bucket, dynamodb_endpoint, s3_endpoint).start()
    try:
        async with aiohttp.ClientSession() as session:
            admin = Client(session, server.url, server.keys["EVENTBUS_ADMIN_KEY"])
            status, _ = await admin.call("POST", "/v1/admin/tenants", {"name": "acme"})
            assert status == 201
            status, made = await admin.call("POST", "/v1/admin/tenants/acme/keys", {})
            assert status == 201, made
            acme = Client(session, server.url, made["api_key"])

            assert (await acme.call("PUT", "/v1/topics/orders", {}))[0] == 201
            await _produce(acme, "orders", 0)
            status, split = await acme.call("POST", "/v1/topics/orders/partitions/0/split", {})
            assert status == 200, split
            await _produce(acme, "orders", 1)
            status, topic = await acme.call("GET", "/v1/topics/orders")
            active = sorted(p["id"] for p in topic["partitions"] if p["state"] == "active")
            assert active == [1, 2], topic
            status, merged = await acme.call(
                "POST", "/v1/topics/orders/merge", {"partitions": [1, 2]}
            )
            assert status == 200, merged
            await _produce(acme, "orders", 2)

            consumed = await _consume_all(acme, "orders", "billing", 3 * len(KEYS))
            assert sorted(consumed) == sorted(f"{k}:{r}" for k in KEYS for r in range(3))
            _in_key_order(consumed)
            status, group = await acme.call("GET", "/v1/topics/orders/groups/billing")
            assert status == 200 and group["lag"] == 0, group
            status, before = await acme.call("GET", "/v1/topics/orders")
            assert status == 200
    finally:
        assert server.stop() == 0, server.stderr()

    # A restart: the catalog is DynamoDB's, the logs are this node's.
    server = _server(tmp_path / "data", catalog, bucket, dynamodb_endpoint, s3_endpoint).start()
    try:
        async with aiohttp.ClientSession() as session:
            acme = Client(session, server.url, made["api_key"])  # the key still authenticates
            status, after = await acme.call("GET", "/v1/topics/orders")
            assert status == 200
            assert _lineage(after) == _lineage(before)
            status, group = await acme.call("GET", "/v1/topics/orders/groups/billing")
            assert status == 200 and group["lag"] == 0, group  # commits kept
            await _produce(acme, "orders", 3)
            assert sorted(await _consume_all(acme, "orders", "billing", len(KEYS))) == sorted(
                f"{k}:3" for k in KEYS
            )
            admin = Client(session, server.url, server.keys["EVENTBUS_ADMIN_KEY"])
            status, tenants = await admin.call("GET", "/v1/admin/tenants")
            assert status == 200 and "acme" in [t["name"] for t in tenants["tenants"]]
            # Usage reached DynamoDB: a clean stop flushes it, so what was produced before
            # the restart is in the bill.
            status, usage = await admin.call("GET", "/v1/admin/usage?tenant=acme")
            assert status == 200, usage
            (row,) = usage["tenants"]
            assert row["usage"]["records_in"] >= 3 * len(KEYS), row
    finally:
        assert server.stop() == 0, server.stderr()
