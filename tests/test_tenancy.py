"""Multitenancy over HTTPS: tenants and keys, scopes, isolation, quotas, deletion, fairness.

Every test talks to a real server over TLS (a trustme authority). Rates are counted on a
clock the test moves (``quota_clock``): the test sends requests until one is refused, moves
the clock, and counts what was accepted; nothing sleeps and nothing is timed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from yarl import URL

from gateway.broker.service import key_hash
from gateway.client import wire
from gateway.http.keys import BROKER
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.errors import PartitionUnavailableError
from partitions.log.values import AppendResult
from partitions.partition_key import PartitionKey
from tests.conftest import ADMIN_KEY, Api, stop_api
from tests.https import FakeClock, start_https_api
from tests.tenants import admin, assert_refused, call, new_key, new_tenant, records, set_quotas

BINARY = {"Accept": wire.BATCH}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def api(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Api]:
    client = await start_https_api(tmp_path / "data", quota_clock=clock)
    yield client
    await stop_api(client)


# --- tenants and keys --------------------------------------------------------------------


async def test_tenants_are_created_listed_described_and_patched(api: Api) -> None:
    status, body = await admin(
        api,
        "POST",
        "/tenants",
        {"name": "acme", "quotas": {"max_topics": 5}, "plan": {"name": "pro"}},
    )
    assert status == 201
    assert body["name"] == "acme"
    # 256 random bits: 43 characters of URL-safe base64 after the prefix.
    assert re.fullmatch(r"ebk_[A-Za-z0-9_-]{43}", body["api_key"])
    assert re.fullmatch(r"key-[0-9a-f]{12}", body["key_id"])
    assert body["quotas"] == {
        "produce_bytes_per_s": None,
        "consume_bytes_per_s": None,
        "requests_per_s": None,
        "max_topics": 5,
        "max_partitions": None,
        "max_stored_bytes": None,
    }
    assert body["quota_overrides"] == {"max_topics": 5} and body["plan"] == {"name": "pro"}
    acme = api.with_key(body["api_key"])
    await acme.call("PUT", "/v1/topics/orders")
    await acme.call("POST", "/v1/topics/orders/records", json=records(3, 10))

    status, listed = await admin(api, "GET", "/tenants")
    assert status == 200 and [t["name"] for t in listed["tenants"]] == ["acme", "default"]
    status, got = await admin(api, "GET", "/tenants/acme")
    assert status == 200
    assert got["in_use"]["topics"] == 1 and got["in_use"]["active_partitions"] == 1
    assert got["in_use"]["stored_bytes"] > 30

    status, patched = await admin(
        api,
        "PATCH",
        "/tenants/acme",
        {
            "quotas": {"max_topics": "default", "requests_per_s": 100, "max_partitions": None},
            "plan": {"name": "team", "usd_per_gb_in": "0.080", "usd_per_gb_out": 0.04},
        },
    )
    assert status == 200
    assert patched["quota_overrides"] == {"requests_per_s": 100, "max_partitions": None}
    assert patched["quotas"]["max_topics"] is None and patched["quotas"]["requests_per_s"] == 100
    # Prices are kept as exact decimal text, however they were given.
    assert patched["plan"] == {"name": "team", "usd_per_gb_in": "0.08", "usd_per_gb_out": "0.04"}
    assert patched["version"] == got["version"] + 1
    status, patched = await admin(api, "PATCH", "/tenants/acme", {"plan": {"usd_per_gb_out": None}})
    assert patched["plan"] == {"name": "team", "usd_per_gb_in": "0.08"}  # null removes
    assert patched["quota_overrides"] == {"requests_per_s": 100, "max_partitions": None}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/tenants", {"name": "Acme"}, 400, "invalid_tenant_name"),
        ("POST", "/tenants", {"name": "acme", "color": "red"}, 400, "invalid_parameter"),
        ("POST", "/tenants", {"name": "acme", "quotas": {"speed": 1}}, 400, "invalid_quotas"),
        ("POST", "/tenants", {"name": "acme", "quotas": {"max_topics": -1}}, 400, "invalid_quotas"),
        ("POST", "/tenants", {"name": "acme", "plan": [1]}, 400, "invalid_plan"),
        ("POST", "/tenants", {"name": "acme", "plan": {"tier": "pro"}}, 400, "invalid_plan"),
        ("PATCH", "/tenants/default", {"plan": {"usd_per_gb_in": "-1"}}, 400, "invalid_plan"),
        ("PATCH", "/tenants/default", {"plan": {"usd_per_gb_in": "1e-11"}}, 400, "invalid_plan"),
        ("PATCH", "/tenants/default", {"plan": {"usd_per_gb_out": "x"}}, 400, "invalid_plan"),
        ("PATCH", "/tenants/default", {"plan": {"usd_per_gb_out": True}}, 400, "invalid_plan"),
        ("PATCH", "/tenants/default", {"plan": {"name": ""}}, 400, "invalid_plan"),
        ("POST", "/tenants", {"name": "default"}, 409, "tenant_exists"),
        ("PATCH", "/tenants/default", {"quotas": {"requests_per_s": 0}}, 400, "invalid_quotas"),
        ("PATCH", "/tenants/nobody", {"quotas": {}}, 404, "tenant_not_found"),
        ("GET", "/tenants/nobody", None, 404, "tenant_not_found"),
        ("GET", "/tenants/Not..A..Name", None, 404, "tenant_not_found"),
        ("DELETE", "/tenants/nobody", None, 404, "tenant_not_found"),
        ("POST", "/tenants/nobody/keys", {}, 404, "tenant_not_found"),
        ("GET", "/tenants/nobody/keys", None, 404, "tenant_not_found"),
        ("DELETE", "/tenants/default/keys/key-9", None, 404, "api_key_not_found"),
        ("POST", "/tenants/default/keys", {"scope": "admin"}, 400, "invalid_scope"),
        ("POST", "/tenants/default/keys", {"scope": {"topics": []}}, 400, "invalid_scope"),
        ("POST", "/tenants/default/keys", {"scope": {"topics": [".."]}}, 400, "invalid_topic_name"),
    ],
)
async def test_admin_refusals(
    api: Api, method: str, path: str, body: Any, status: int, code: str
) -> None:
    got_status, got = await admin(api, method, path, body)
    assert (got_status, got["error"]["code"]) == (status, code), got
    _, listed = await admin(api, "GET", "/tenants")
    assert [t["name"] for t in listed["tenants"]] == ["default"]  # nothing changed


async def test_keys_are_listed_without_secrets_and_revoked_at_once(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    acme = await new_tenant(api, "acme")
    second = await new_key(api, "acme", {"role": "consume", "topics": ["orders"]})
    status, listed = await admin(api, "GET", "/tenants/acme/keys")
    assert status == 200 and len(listed["keys"]) == 2
    first, other = listed["keys"]
    assert set(first) == {"key_id", "scope", "created_ms", "last_used_ms"}
    assert first["scope"] == {"role": "full", "topics": None}
    assert other["scope"] == {"role": "consume", "topics": ["orders"]}
    assert other["last_used_ms"] is None
    text = orjson.dumps(listed).decode()
    assert acme.key not in text and second not in text

    assert (await acme.call("PUT", "/v1/topics/orders"))[0] == 201
    assert (await api.call("GET", "/v1/topics/orders", key=second))[0] == 200
    _, listed = await admin(api, "GET", "/tenants/acme/keys")
    assert all(k["last_used_ms"] is not None for k in listed["keys"])

    # Revoked: the very next request with it is refused; the tenant's other key goes on.
    assert (await admin(api, "DELETE", f"/tenants/acme/keys/{other['key_id']}"))[0] == 204
    status, body = await api.call("GET", "/v1/topics/orders", key=second)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert (await acme.call("GET", "/v1/topics/orders"))[0] == 200
    assert (await admin(api, "DELETE", f"/tenants/acme/keys/{other['key_id']}"))[0] == 404
    status, listed = await admin(api, "GET", "/tenants/acme/keys")
    assert [k["key_id"] for k in listed["keys"]] == [first["key_id"]]
    # No key ever reached a log line.
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    for secret in (acme.key, second, ADMIN_KEY):
        assert secret not in logged


async def test_no_key_a_bad_key_and_keys_on_the_wrong_side(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/orders")
    async with api.session.get(api.base + "/v1/topics") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with api.session.get(api.base + "/v1/admin/tenants") as response:
        assert response.status == 401
    headers = {"Authorization": "Basic " + acme.key}
    async with api.session.get(api.base + "/v1/topics", headers=headers) as response:
        assert response.status == 401
    for bad in ("ebk_" + "A" * 43, acme.key[:-1], acme.key + "x", "ebk_", "x y"):
        status, _ = await api.call("GET", "/v1/topics", key=bad)
        assert status == 401, bad
    # A tenant key on every admin route: 403, and nothing changes.
    for method, path in (
        ("POST", "/tenants"),
        ("GET", "/tenants"),
        ("GET", "/tenants/acme"),
        ("PATCH", "/tenants/acme"),
        ("DELETE", "/tenants/acme"),
        ("POST", "/tenants/acme/keys"),
        ("GET", "/tenants/acme/keys"),
        ("DELETE", "/tenants/acme/keys/key-1"),
    ):
        status, body = await acme.call(method, "/v1/admin" + path, json={"name": "evil"})
        assert (status, body["error"]["code"]) == (403, "forbidden"), (method, path)
    assert (await admin(api, "GET", "/tenants/acme"))[0] == 200
    # The admin key can neither produce nor consume.
    for method, path in (
        ("POST", "/v1/topics/orders/records"),
        ("GET", "/v1/topics/orders/partitions/0/records"),
        ("POST", "/v1/topics/orders/groups/g/fetch"),
        ("PUT", "/v1/topics/admins"),
    ):
        status, body = await api.call(method, path, key=ADMIN_KEY, json=records(1, 1))
        assert (status, body["error"]["code"]) == (403, "forbidden"), (method, path)


# --- scopes ------------------------------------------------------------------------------

ROUTES_BY_ACTION: dict[str, list[tuple[str, str, Any]]] = {
    "read": [("GET", "/v1/topics", None), ("GET", "/v1/topics/orders", None)],
    "produce": [("POST", "/v1/topics/orders/records", records(1, 5))],
    "consume": [
        ("GET", "/v1/topics/orders/partitions/0/records", None),
        ("POST", "/v1/topics/orders/groups/g/fetch", {"auto_offset_reset": "earliest"}),
        ("GET", "/v1/topics/orders/groups/g", None),
    ],
    "manage": [
        ("PATCH", "/v1/topics/orders", {"retention_ms": 60000}),
        ("PUT", "/v1/topics/other", None),
        ("POST", "/v1/topics/orders/partitions/0/split", None),
    ],
}
ALLOWED = {
    "full": {"read", "produce", "consume", "manage"},
    "produce": {"read", "produce"},
    "consume": {"read", "consume"},
}


@pytest.mark.parametrize("role", ["produce", "consume", "full"])
async def test_each_role_calls_its_routes_and_gets_403_beyond(api: Api, role: str) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/orders")
    await acme.call("POST", "/v1/topics/orders/records", json=records(2, 5))
    scoped = acme.with_key(await new_key(api, "acme", role))
    for action, routes in ROUTES_BY_ACTION.items():
        for method, path, body in routes:
            status, got = await scoped.call(method, path, json=body)
            if action in ALLOWED[role]:
                assert status < 300, (role, method, path, got)
            else:
                assert (status, got["error"]["code"]) == (403, "out_of_scope"), (method, path)
    # Refusals changed nothing: no records, topics or splits beyond what the role may do.
    _, topic = await acme.call("GET", "/v1/topics/orders")
    produced = 3 if "produce" in ALLOWED[role] else 2
    assert topic["partitions"][0]["end_offset"] == produced
    assert len(topic["partitions"]) == (3 if role == "full" else 1)


async def test_a_key_limited_to_topics_sees_and_touches_only_those(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    for name in ("orders", "payments", "secrets"):
        await acme.call("PUT", f"/v1/topics/{name}")
    limited = acme.with_key(
        await new_key(api, "acme", {"role": "full", "topics": ["orders", "payments", "later"]})
    )
    _, listed = await limited.call("GET", "/v1/topics")
    assert [t["name"] for t in listed["topics"]] == ["orders", "payments"]
    assert (await limited.call("POST", "/v1/topics/orders/records", json=records(1, 1)))[0] == 200
    assert (await limited.call("PUT", "/v1/topics/later"))[0] == 201  # listed: may create it
    # Another topic answers 403 whether it exists or not: nothing is revealed.
    for name in ("secrets", "missing"):
        for method, path in (
            ("GET", f"/v1/topics/{name}"),
            ("POST", f"/v1/topics/{name}/records"),
            ("GET", f"/v1/topics/{name}/partitions/0/records"),
            ("DELETE", f"/v1/topics/{name}"),
            ("PUT", f"/v1/topics/{name}"),
        ):
            status, body = await limited.call(method, path, json=records(1, 1))
            assert (status, body["error"]["code"]) == (403, "out_of_scope"), (method, path)
    assert (await acme.call("GET", "/v1/topics/missing"))[0] == 404


async def test_a_key_limited_to_topics_pages_over_its_own_topics_only(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    for name in ("alpha", "hidden-payroll", "kilo", "zulu", "zz-secret"):
        await acme.call("PUT", f"/v1/topics/{name}")
    limited = acme.with_key(
        await new_key(api, "acme", {"role": "consume", "topics": ["alpha", "absent", "zulu"]})
    )
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while len(pages) < 10:
        params = {"limit": "1", **({"after": after} if after is not None else {})}
        status, page = await limited.call("GET", "/v1/topics", params=params)
        assert status == 200, page
        pages.append(page)
        after = page["next_after"]
        if after is None:
            break
    # Every page is full until the last, and where the next one starts names no other topic.
    assert [[t["name"] for t in p["topics"]] for p in pages] == [["alpha"], ["zulu"]]
    assert [p["next_after"] for p in pages] == ["alpha", None]
    _, everything = await limited.call("GET", "/v1/topics")
    assert [t["name"] for t in everything["topics"]] == ["alpha", "zulu"]
    assert everything["next_after"] is None


# --- isolation ---------------------------------------------------------------------------


async def test_tenants_cannot_see_each_other(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    globex = await new_tenant(api, "globex")
    probes = [
        ("GET", "/v1/topics/orders", None),
        ("PATCH", "/v1/topics/orders", {"retention_ms": 1000}),
        ("POST", "/v1/topics/orders/records", records(1, 3)),
        ("GET", "/v1/topics/orders/partitions/0/records", None),
        ("POST", "/v1/topics/orders/partitions/0/split", None),
        ("POST", "/v1/topics/orders/merge", {"partitions": [1, 2]}),
        ("POST", "/v1/topics/orders/groups/g/fetch", None),
        ("GET", "/v1/topics/orders/groups/g", None),
        ("DELETE", "/v1/topics/orders/groups/g", None),
        ("DELETE", "/v1/topics/orders", None),
    ]
    missing = [await globex.call(m, p, json=b) for m, p, b in probes]
    assert all(status == 404 for status, _ in missing)
    # acme makes orders, with data and a group: globex's answers do not change at all.
    await acme.call("PUT", "/v1/topics/orders")
    await acme.call("POST", "/v1/topics/orders/records", json={"records": [{"value": "acme's"}]})
    status, fetched = await acme.call(
        "POST", "/v1/topics/orders/groups/g/fetch", json={"auto_offset_reset": "earliest"}
    )
    assert status == 200 and [r["value"] for r in fetched["records"]] == ["acme's"]
    hidden = [await globex.call(m, p, json=b) for m, p, b in probes]
    assert hidden == missing
    assert (await globex.call("GET", "/v1/topics"))[1]["topics"] == []
    # Both may have orders, each with its own records, offsets and groups.
    assert (await globex.call("PUT", "/v1/topics/orders"))[0] == 201
    await globex.call(
        "POST", "/v1/topics/orders/records", json={"records": [{"value": "globex's"}]}
    )
    status, got = await globex.call("GET", "/v1/topics/orders/partitions/0/records")
    assert [(r["offset"], r["value"]) for r in got["records"]] == [(0, "globex's")]
    status, body = await globex.call("GET", "/v1/topics/orders/groups/g")
    assert (status, body["error"]["code"]) == (404, "group_not_found")
    status, fetched = await globex.call(
        "POST", "/v1/topics/orders/groups/g/fetch", json={"auto_offset_reset": "earliest"}
    )
    assert [r["value"] for r in fetched["records"]] == ["globex's"]
    status, described = await acme.call("GET", "/v1/topics/orders/groups/g")
    assert status == 200 and described["members"] != []
    # On disk each tenant's data is under its own directory, by topic incarnation.
    topics_dir = api.data_dir / "topics"
    assert {p.name for p in topics_dir.iterdir()} >= {"acme", "globex"}
    acme_dirs = {p.name for p in (topics_dir / "acme").iterdir()}
    globex_dirs = {p.name for p in (topics_dir / "globex").iterdir()}
    assert len(acme_dirs) == len(globex_dirs) == 1 and not acme_dirs & globex_dirs
    for tenant_dir in topics_dir.iterdir():
        for path in tenant_dir.rglob("*"):
            assert path.resolve().is_relative_to(tenant_dir.resolve())


# --- quotas ------------------------------------------------------------------------------


async def _accepted_over(
    clock: FakeClock, seconds: float, step: float, attempt: Any
) -> tuple[int, int]:
    """Move the clock by ``step`` until ``seconds`` passed; after each move call ``attempt``
    until it is refused. Answers what was accepted and how many refusals there were."""
    accepted = refusals = 0
    elapsed = 0.0
    while elapsed < seconds - 1e-9:
        clock.advance(step)
        elapsed += step
        while (got := await attempt()) > 0:
            accepted += got
        refusals += 1
    return accepted, refusals


async def test_requests_per_s_accepts_the_quota_rate(api: Api, clock: FakeClock) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await set_quotas(api, "acme", requests_per_s=20)
    last: list[Any] = []

    async def describe() -> int:
        status, headers, body = await call(acme, "GET", "/v1/topics/t")
        if status == 200:
            return 1
        last[:] = [status, headers, body]
        return 0

    while await describe():  # empty the bucket (it starts full)
        pass
    wait_ms = assert_refused(*last, "quota_exceeded")
    assert last[2]["error"]["details"]["quota"] == "requests_per_s"
    assert 0 < wait_ms <= 50  # one token at 20 per second
    accepted, refusals = await _accepted_over(clock, 10, 0.1, describe)
    assert abs(accepted - 200) <= 20, accepted  # within 10% of 20 per second for 10 s
    assert refusals == 100
    # Other tenants are not slowed by acme's quota.
    for _ in range(50):
        assert (await api.call("GET", "/v1/topics"))[0] == 200


async def test_produce_bytes_per_s_accepts_the_quota_rate_and_writes_nothing_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    server = await start_https_api(tmp_path / "data", quota_clock=clock, max_request_bytes=20_000)
    try:
        acme = await new_tenant(server, "acme")
        await acme.call("PUT", "/v1/topics/t")
        await set_quotas(server, "acme", produce_bytes_per_s=50_000)
        last: list[Any] = []

        async def produce() -> int:
            status, headers, body = await call(
                acme, "POST", "/v1/topics/t/records", json=records(5, 1000)
            )
            if status == 200:
                return 5000
            last[:] = [status, headers, body]
            return 0

        drained = 0
        while got := await produce():
            drained += got
        assert drained == 50_000  # the bucket held one second of rate
        assert_refused(*last, "quota_exceeded")
        accepted, _ = await _accepted_over(clock, 10, 0.1, produce)
        assert abs(accepted - 500_000) <= 50_000, accepted
        # No refused request wrote anything: the log holds exactly the accepted records.
        _, topic = await acme.call("GET", "/v1/topics/t")
        assert topic["partitions"][0]["end_offset"] == (drained + accepted) // 1000
        # A request larger than one second of rate is told exactly when the bucket will be
        # full, passes then, and leaves a debt that the next produce waits out.
        await set_quotas(server, "acme", produce_bytes_per_s=1000)
        status, headers, body = await call(
            acme, "POST", "/v1/topics/t/records", json=records(1, 15_000)
        )
        wait_ms = assert_refused(status, headers, body, "quota_exceeded")
        clock.advance((wait_ms - 5) / 1000)
        status, headers, body = await call(
            acme, "POST", "/v1/topics/t/records", json=records(1, 15_000)
        )
        assert status == 429
        clock.advance(0.01)
        status, _, _ = await call(acme, "POST", "/v1/topics/t/records", json=records(1, 15_000))
        assert status == 200
        # 15,000 taken from a full bucket of 1,000 (a full one holds no more): the next
        # record of 1,000 bytes waits for the 14,000 of debt and its own 1,000.
        status, headers, body = await call(
            acme, "POST", "/v1/topics/t/records", json=records(1, 1000)
        )
        assert assert_refused(status, headers, body, "quota_exceeded") == 15_000
    finally:
        await stop_api(server)


async def test_consume_bytes_are_charged_after_the_read_and_slow_the_next(
    api: Api, clock: FakeClock
) -> None:
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    for _ in range(8):
        await acme.call("POST", "/v1/topics/t/records", json=records(50, 1000))
    await set_quotas(api, "acme", consume_bytes_per_s=20_000)
    offset = 0
    last: list[Any] = []

    async def read() -> int:
        nonlocal offset
        status, headers, body = await call(
            acme,
            "GET",
            "/v1/topics/t/partitions/0/records",
            params={"offset": str(offset), "max_bytes": "5000"},
        )
        if status != 200:
            last[:] = [status, headers, body]
            return 0
        offset = body["next_offset"]
        return sum(len(r["value"]) for r in body["records"])

    while await read():
        pass
    assert offset == 20  # 20 000 bytes were in the bucket, 5 000 per read
    assert_refused(*last, "quota_exceeded")
    accepted, _ = await _accepted_over(clock, 10, 0.1, read)
    assert abs(accepted - 200_000) <= 20_000, accepted
    # One read bigger than the bucket goes through and leaves a debt the next read waits out;
    # group fetches draw on the same bucket.
    clock.advance(10)
    status, _, body = await call(
        acme,
        "GET",
        "/v1/topics/t/partitions/0/records",
        params={"offset": str(offset), "max_bytes": "60000"},
    )
    assert status == 200 and len(body["records"]) == 60
    status, headers, body = await call(
        acme, "POST", "/v1/topics/t/groups/g/fetch", json={"auto_offset_reset": "earliest"}
    )
    wait_ms = assert_refused(status, headers, body, "quota_exceeded")
    assert 1900 <= wait_ms <= 2100  # a 40 000-byte debt at 20 000 per second
    clock.advance(wait_ms / 1000)
    status, _, body = await call(
        acme,
        "POST",
        "/v1/topics/t/groups/g/fetch",
        json={"auto_offset_reset": "earliest", "max_bytes": 3000},
    )
    assert status == 200 and len(body["records"]) == 3


async def test_binary_reads_and_fetches_are_charged_their_records_bytes(
    api: Api, clock: FakeClock
) -> None:
    """As JSON answers are: key, value and header bytes of the records delivered, not the
    stored batches' framing or the records below the offset asked for."""
    acme = await new_tenant(api, "acme")
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("POST", "/v1/topics/t/records", json=records(10, 1000))  # one batch
    await set_quotas(api, "acme", consume_bytes_per_s=1000)
    status, _, raw = await acme.raw(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "5"}, headers=BINARY
    )
    assert status == 200 and len(raw) > 10_000  # the whole stored batch, framed
    # 5 records of 1000 bytes from a full bucket of 1000: a debt of 4000 bytes, 4 s.
    status, headers, body = await call(acme, "GET", "/v1/topics/t/partitions/0/records")
    wait_ms = assert_refused(status, headers, body, "quota_exceeded")
    assert 4000 <= wait_ms <= 4010, wait_ms
    clock.advance(wait_ms / 1000)
    status, _, raw = await acme.raw(
        "POST",
        "/v1/topics/t/groups/g/fetch",
        data=orjson.dumps({"auto_offset_reset": "earliest"}),
        headers={**BINARY, "Content-Type": "application/json"},
    )
    assert status == 200 and len(raw) > 10_000
    # All 10 records (10 000 bytes) from a bucket just above nothing: 10 s.
    status, headers, body = await call(acme, "GET", "/v1/topics/t/partitions/0/records")
    wait_ms = assert_refused(status, headers, body, "quota_exceeded")
    assert 9990 <= wait_ms <= 10_010, wait_ms


@pytest.mark.single_process("asks the broker inside the server process for the autoscaler's limits")
async def test_topic_and_partition_limits(api: Api) -> None:
    acme = await new_tenant(api, "acme", quotas={"max_topics": 2, "max_partitions": 3})
    assert (await acme.call("PUT", "/v1/topics/a"))[0] == 201
    assert (await acme.call("PUT", "/v1/topics/b"))[0] == 201
    status, body = await acme.call("PUT", "/v1/topics/c")
    assert (status, body["error"]["code"]) == (409, "topic_limit_reached")
    assert body["error"]["details"] == {"max_topics": 2, "topics": 2}
    assert (await acme.call("PUT", "/v1/topics/a"))[0] == 200  # confirming one is no creation
    assert (await acme.call("POST", "/v1/topics/a/partitions/0/split"))[0] == 200  # 3 active
    status, body = await acme.call("POST", "/v1/topics/b/partitions/0/split")
    assert (status, body["error"]["code"]) == (409, "partition_limit_reached")
    assert body["error"]["details"] == {"max_partitions": 3, "active_partitions": 3}
    _, topic = await acme.call("GET", "/v1/topics/b")
    assert [p["state"] for p in topic["partitions"]] == ["active"]  # nothing changed
    # Produce goes on after the refused split.
    assert (await acme.call("POST", "/v1/topics/b/records", json=records(1, 1)))[0] == 200
    _, tenant = await admin(api, "GET", "/tenants/acme")
    assert tenant["in_use"]["topics"] == 2 and tenant["in_use"]["active_partitions"] == 3
    # What the autoscaler asks before it splits.
    broker = api.server.app[BROKER]
    assert await broker.partition_limit("acme") == 3
    assert await broker.partition_headroom("acme") == 0
    assert await broker.partition_headroom("default") is None
    # Merging frees one; deleting a topic frees a topic and its partition.
    assert (await acme.call("POST", "/v1/topics/a/merge", json={"partitions": [1, 2]}))[0] == 200
    assert (await acme.call("POST", "/v1/topics/b/partitions/0/split"))[0] == 200
    assert (await acme.call("DELETE", "/v1/topics/a"))[0] == 204
    assert (await acme.call("PUT", "/v1/topics/c"))[0] == 201
    # Raised limits apply at once.
    await set_quotas(api, "acme", max_topics=None)
    assert (await acme.call("PUT", "/v1/topics/d"))[0] == 409  # partitions: 2 + 1 + 1 > 3
    await set_quotas(api, "acme", max_partitions=10)
    assert (await acme.call("PUT", "/v1/topics/d"))[0] == 201


async def test_storage_quota_refuses_produce_while_over(api: Api, clock: FakeClock) -> None:
    acme = await new_tenant(api, "acme", quotas={"max_stored_bytes": 5000})
    await acme.call("PUT", "/v1/topics/t")
    await acme.call("PUT", "/v1/topics/u")
    assert (await acme.call("POST", "/v1/topics/t/records", json=records(2, 1500)))[0] == 200
    assert (await acme.call("POST", "/v1/topics/u/records", json=records(2, 1500)))[0] == 200
    status, headers, body = await call(acme, "POST", "/v1/topics/u/records", json=records(1, 1))
    assert_refused(status, headers, body, "storage_quota_exceeded")
    assert body["error"]["details"]["limit"] == 5000
    assert headers["Retry-After"] == "30"  # the next retention pass
    # Reads and everything else still work; the refused produce wrote nothing.
    status, got = await acme.call("GET", "/v1/topics/u/partitions/0/records")
    assert status == 200 and len(got["records"]) == 2
    # Other tenants are not affected.
    await api.call("PUT", "/v1/topics/t")
    assert (await api.call("POST", "/v1/topics/t/records", json=records(4, 1500)))[0] == 200
    # Once data goes, produce is accepted again (measured again a second later).
    assert (await acme.call("DELETE", "/v1/topics/t"))[0] == 204
    clock.advance(1)
    assert (await acme.call("POST", "/v1/topics/u/records", json=records(1, 1)))[0] == 200
    await set_quotas(api, "acme", max_stored_bytes=None)
    assert (await acme.call("POST", "/v1/topics/u/records", json=records(5, 1500)))[0] == 200


async def _produce_with_key(
    api: Api, body: dict[str, Any], key: str
) -> tuple[int, dict[str, str], Any]:
    url = URL(api.base + "/v1/topics/t/records", encoded=True)
    headers = {**api.headers(), "Content-Type": "application/json", "Idempotency-Key": key}
    async with api.session.post(url, headers=headers, data=orjson.dumps(body)) as response:
        return response.status, dict(response.headers), await response.json()


async def test_an_idempotent_replay_is_refused_by_no_byte_quota(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A replay appends nothing: it counts as a request, and neither the produce bytes nor
    the storage quota can refuse it (the client could never learn its offsets)."""
    server = await start_https_api(tmp_path / "data", quota_clock=clock)
    try:
        acme = await new_tenant(server, "acme", quotas={"produce_bytes_per_s": 1000})
        await acme.call("PUT", "/v1/topics/t")
        status, _, first = await _produce_with_key(acme, records(1, 1000), "order-1")
        assert status == 200  # all of the bucket's 1000 tokens
        # The answer was lost; the client sends the very same request again.
        status, _, again = await _produce_with_key(acme, records(1, 1000), "order-1")
        assert (status, again) == (200, first)
        # New records still pay: 1000 more bytes wait a second for the bucket to refill.
        status, headers, body = await _produce_with_key(acme, records(1, 1000), "order-2")
        assert assert_refused(status, headers, body, "quota_exceeded") == 1000
        await set_quotas(server, "acme", max_stored_bytes=500)  # acme stores more already
        clock.advance(1)
        status, headers, body = await _produce_with_key(acme, records(1, 1000), "order-2")
        assert_refused(status, headers, body, "storage_quota_exceeded")
        status, _, again = await _produce_with_key(acme, records(1, 1000), "order-1")
        assert (status, again) == (200, first)
        _, topic = await acme.call("GET", "/v1/topics/t")
        assert topic["partitions"][0]["end_offset"] == 1
    finally:
        await stop_api(server)


@pytest.mark.single_process("makes a partition fail by patching the server process")
async def test_a_produce_failing_part_way_pays_for_what_it_wrote(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_https_api(tmp_path / "data", quota_clock=clock)
    try:
        acme = await new_tenant(server, "acme", quotas={"produce_bytes_per_s": 2000})
        await acme.call("PUT", "/v1/topics/t")
        assert (await acme.call("POST", "/v1/topics/t/partitions/0/split"))[0] == 200
        mid = 1 << 63  # partition 1 holds the keys hashed below, partition 2 the others
        keys = [f"k{n}" for n in range(100)]
        low = [k for k in keys if key_hash(k.encode()) < mid][:2]
        high = [k for k in keys if key_hash(k.encode()) >= mid][:2]
        body = {"records": [{"key": k, "value": "x" * (500 - len(k))} for k in low + high]}
        worker = server.server.app[BROKER].worker
        real_append = worker.append

        async def append_failing_on_2(key: PartitionKey, batch: bytes) -> AppendResult:
            if key.partition_id == 2:
                raise PartitionUnavailableError("injected: partition 2's disk failed")
            return await real_append(key, batch)

        monkeypatch.setattr(worker, "append", append_failing_on_2)
        status, _, _ = await _produce_with_key(acme, body, "req-1")
        assert status == 503
        monkeypatch.undo()
        # Partition 1's 1000 bytes were written and stay paid for; partition 2's come back,
        # so 1000 of the 2000 tokens are left: a produce of 2500 waits for 1000 more.
        status, headers, refused = await call(
            acme, "POST", "/v1/topics/t/records", json=records(5, 500)
        )
        assert assert_refused(status, headers, refused, "quota_exceeded") == 500
        # The retry writes, and pays for, partition 2's records only: nothing is left, and
        # 1000 bytes more wait half a second.
        status, _, answer = await _produce_with_key(acme, body, "req-1")
        assert status == 200 and [o["partition"] for o in answer["offsets"]] == [1, 1, 2, 2]
        status, headers, refused = await call(
            acme, "POST", "/v1/topics/t/records", json=records(2, 500)
        )
        assert assert_refused(status, headers, refused, "quota_exceeded") == 500
    finally:
        await stop_api(server)


# --- deleting a tenant -------------------------------------------------------------------


async def test_deleting_a_tenant_removes_everything_it_owned(api: Api) -> None:
    acme = await new_tenant(api, "acme")
    other_key = await new_key(api, "acme", "consume")
    for name in ("orders", "payments"):
        await acme.call("PUT", f"/v1/topics/{name}")
        await acme.call("POST", f"/v1/topics/{name}/records", json=records(10, 100))
    status, _ = await acme.call(
        "POST",
        "/v1/topics/orders/records",
        json=records(1, 1),
        headers={"Idempotency-Key": "once"},
    )
    assert status == 200
    status, fetched = await acme.call(
        "POST", "/v1/topics/orders/groups/g/fetch", json={"auto_offset_reset": "earliest"}
    )
    await acme.call(
        "POST",
        "/v1/topics/orders/groups/g/commit",
        json={
            "member_id": fetched["member_id"],
            "generation": fetched["generation"],
            "offsets": [{"partition": 0, "offset": 5}],
        },
    )
    assert (api.data_dir / "topics" / "acme").exists()
    await api.call("PUT", "/v1/topics/orders")  # the default tenant's own orders stays

    status, body = await admin(api, "DELETE", "/tenants/acme")
    assert status == 200 and body == {"name": "acme", "deleted_topics": ["orders", "payments"]}
    for key in (acme.key, other_key):
        assert (await api.call("GET", "/v1/topics", key=key))[0] == 401
    assert (await admin(api, "GET", "/tenants/acme"))[0] == 404
    assert (await admin(api, "DELETE", "/tenants/acme"))[0] == 404
    assert not (api.data_dir / "topics" / "acme").exists()
    assert (await api.call("GET", "/v1/topics/orders"))[0] == 200

    # A tenant of the same name starts with nothing: no topics, groups, offsets or
    # idempotency answers of the old one.
    again = await new_tenant(api, "acme")
    assert (await again.call("GET", "/v1/topics"))[1]["topics"] == []
    await again.call("PUT", "/v1/topics/orders")
    status, got = await again.call("GET", "/v1/topics/orders/partitions/0/records")
    assert got["records"] == [] and got["high_watermark"] == 0
    status, body = await again.call("GET", "/v1/topics/orders/groups/g")
    assert (status, body["error"]["code"]) == (404, "group_not_found")
    status, body = await again.call(
        "POST",
        "/v1/topics/orders/records",
        json=records(2, 7),
        headers={"Idempotency-Key": "once"},
    )
    assert status == 200 and [o["offset"] for o in body["offsets"]] == [0, 1]


@pytest.mark.parametrize("cut", ["after the catalog step", "after the last topic"])
async def test_a_tenant_deletion_cut_short_is_finished_at_the_next_start(
    tmp_path: Path, cut: str
) -> None:
    data_dir = tmp_path / "data"
    server = await start_https_api(data_dir)
    try:
        acme = await new_tenant(server, "acme")
        for name in ("orders", "payments"):
            await acme.call("PUT", f"/v1/topics/{name}")
            await acme.call("POST", f"/v1/topics/{name}/records", json=records(3, 10))
    finally:
        await stop_api(server)
    # The deletion's one catalog transaction committed, then the process died before any
    # data was removed: that is the state it leaves.
    catalog = await SqliteCatalog.open(data_dir / CATALOG_FILE)
    try:
        marked = await catalog.delete_tenant("acme")
        assert sorted(t.name for t in marked) == ["orders", "payments"]
        if cut == "after the last topic":
            # Every topic's data and rows went; only the tenant's empty directory is left.
            for topic in marked:
                shutil.rmtree(data_dir / "topics" / "acme" / topic.incarnation)
                await catalog.purge_topic("acme", topic.incarnation)
    finally:
        await catalog.close()
    left = list((data_dir / "topics" / "acme").iterdir())
    assert len(left) == (2 if cut == "after the catalog step" else 0)
    server = await start_https_api(data_dir)
    try:
        assert not (data_dir / "topics" / "acme").exists()
        assert (await admin(server, "GET", "/tenants/acme"))[0] == 404
        again = await new_tenant(server, "acme")
        assert (await again.call("PUT", "/v1/topics/orders"))[0] == 201
        _, got = await again.call("GET", "/v1/topics/orders/partitions/0/records")
        assert got["records"] == []
    finally:
        await stop_api(server)


# --- fairness ----------------------------------------------------------------------------


async def _metric(api: Api, name: str) -> float:
    status, text = await api.call("GET", "/metrics", key=ADMIN_KEY)
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def _metric_reaches(api: Api, name: str, value: float) -> None:
    """Wait (polling /metrics, at most 10 s) until the metric reaches ``value``."""
    for _ in range(1000):
        if await _metric(api, name) >= value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}")


@pytest.mark.single_process("fair service counts slots per process, one scheduler per worker")
async def test_a_flooding_tenant_does_not_starve_another(tmp_path: Path) -> None:
    """One slot in service. acme holds it (a produce whose body has not all arrived), then
    queues 20 more; globex queues 3. Counted by the order answers come back: globex's three
    come among the first of the queued, one after each of acme's, not after all 20."""
    server = await start_https_api(tmp_path / "data", max_concurrent_requests=1)
    try:
        acme = await new_tenant(server, "acme")
        globex = await new_tenant(server, "globex")
        for tenant in (acme, globex):
            await tenant.call("PUT", "/v1/topics/t")
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b'{"records": [{"value": "first"'
            await release.wait()
            yield b"}]}"

        async def held() -> int:
            async with server.session.post(
                acme.base + "/v1/topics/t/records",
                data=slow_body(),
                headers={**acme.headers(), "Content-Type": "application/json"},
            ) as response:
                return response.status

        finished: list[str] = []

        async def send(tenant: Api, name: str) -> None:
            status, _ = await tenant.call("POST", "/v1/topics/t/records", json=records(1, 10))
            assert status == 200
            finished.append(name)

        holder = asyncio.create_task(held())
        await _metric_reaches(server, "eventbus_requests_in_service", 1)
        flood = [asyncio.create_task(send(acme, f"acme-{i}")) for i in range(20)]
        await _metric_reaches(server, "eventbus_requests_queued", 20)
        quiet = [asyncio.create_task(send(globex, f"globex-{i}")) for i in range(3)]
        await _metric_reaches(server, "eventbus_requests_queued", 23)
        release.set()
        assert await holder == 200
        await asyncio.gather(*flood, *quiet)
        positions = [i for i, name in enumerate(finished) if name.startswith("globex")]
        # Round-robin: acme, globex, acme, globex, ... (first come, first served would put
        # globex's at 20, 21, 22).
        assert positions == [1, 3, 5], finished
        assert await _metric(server, "eventbus_requests_in_service") == 0
    finally:
        await stop_api(server)
