"""The HTTP API through a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.http.routes import ROUTES
from tests.conftest import ADMIN_KEY, Api, start_api, stop_api
from tests.servers import WORKERS


async def _hw(api: Api, topic: str = "t", partition: int = 0) -> int:
    status, body = await api.call("GET", f"/v1/topics/{topic}")
    assert status == 200, body
    return int(body["partitions"][partition]["end_offset"])


# --- topics --------------------------------------------------------------------------------


async def test_put_topic_creates_confirms_and_refuses_another_config(api: Api) -> None:
    status, body = await api.call("PUT", "/v1/topics/orders", json={"retention_ms": 60000})
    assert status == 201
    assert body["config"]["retention_ms"] == 60000
    assert body["config"]["segment_bytes"] == 128 * 1024 * 1024  # defaults filled in
    (partition,) = body["partitions"]
    if WORKERS:  # which worker process owns it: only when there are several
        assert partition.pop("worker") in range(WORKERS)
    assert partition == {
        "id": 0,
        "state": "active",
        "hash_range": {"start": "0", "end": str(2**64)},
        "parents": [],
        "children": [],
        "start_offset": 0,
        "end_offset": 0,
        "local_start_offset": 0,
        "local_bytes": 0,
        "remote_start_offset": None,
        "remote_end_offset": None,
        "remote_bytes": 0,
        "segments_pending_upload": 0,
    }
    assert (await api.call("PUT", "/v1/topics/orders", json={"retention_ms": 60000}))[0] == 200
    status, body = await api.call("PUT", "/v1/topics/orders", json={"retention_ms": 1})
    assert status == 409 and body["error"]["code"] == "topic_config_conflict"
    # A PUT with no body means the defaults.
    assert (await api.call("PUT", "/v1/topics/plain"))[0] == 201
    assert (await api.call("PUT", "/v1/topics/plain"))[0] == 200


async def test_list_topics_in_pages(api: Api) -> None:
    for n in range(7):
        await api.call("PUT", f"/v1/topics/t{n}")
    seen, after = [], None
    while True:
        params = {"limit": "3", **({"after": after} if after else {})}
        status, body = await api.call("GET", "/v1/topics", params=params)
        assert status == 200
        seen += [t["name"] for t in body["topics"]]
        after = body["next_after"]
        if after is None:
            break
    assert seen == [f"t{n}" for n in range(7)]


async def test_patch_validates_and_changes_config(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    status, body = await api.call("PATCH", "/v1/topics/t", json={"retention_bytes": 10**9})
    assert status == 200 and body["config"]["retention_bytes"] == 10**9
    assert body["config"]["retention_ms"] == 7 * 24 * 3600 * 1000  # others unchanged
    for bad in (
        {"retention_ms": 0},
        {"segment_bytes": "big"},
        {"nonsense": 1},
        {"local_retention_bytes": 2 * 10**9},  # more than the total retention
        [1, 2],
    ):
        status, body = await api.call("PATCH", "/v1/topics/t", json=bad)
        assert status == 400 and body["error"]["code"] == "invalid_config", bad
    assert (await api.call("GET", "/v1/topics/t"))[1]["config"]["retention_bytes"] == 10**9
    assert (await api.call("PATCH", "/v1/topics/nope", json={}))[0] == 404


async def test_delete_removes_data_and_a_recreated_topic_starts_empty(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "old"}]})
    topic_dirs = list((api.data_dir / "topics" / "default").iterdir())
    assert len(topic_dirs) == 1
    assert (await api.call("DELETE", "/v1/topics/t"))[0] == 204
    assert not topic_dirs[0].exists()
    assert (await api.call("GET", "/v1/topics/t"))[0] == 404
    assert (await api.call("DELETE", "/v1/topics/t"))[0] == 404
    await api.call("PUT", "/v1/topics/t")
    status, body = await api.call("GET", "/v1/topics/t/partitions/0/records")
    assert status == 200 and body["records"] == [] and body["high_watermark"] == 0


# --- produce and read -------------------------------------------------------------------


async def test_records_come_back_in_the_form_they_were_sent(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    sent = [
        {"key": "user-1", "value": "héllo", "headers": {"trace": "abc", "ü": "ß"}},
        {"key_b64": base64.b64encode(b"\xff\x00").decode(), "value_b64": "AAEC"},
        {"value": ""},
        {"key": None, "value": "x", "timestamp_ms": 1234},
    ]
    before = int(time.time() * 1000)
    status, body = await api.call("POST", "/v1/topics/t/records", json={"records": sent})
    assert status == 200
    assert body["offsets"] == [{"partition": 0, "offset": i} for i in range(4)]
    status, body = await api.call("GET", "/v1/topics/t/partitions/0/records")
    got = body["records"]
    assert got[0]["key"] == "user-1" and got[0]["value"] == "héllo"
    assert got[0]["headers"] == {"trace": "abc", "ü": "ß"}
    assert got[1]["key_b64"] == base64.b64encode(b"\xff\x00").decode()
    assert got[1]["value_b64"] == "AAEC" and "value" not in got[1]
    assert got[2]["value"] == "" and got[2]["key"] is None
    assert got[3]["timestamp_ms"] == 1234
    assert before <= got[0]["timestamp_ms"] <= int(time.time() * 1000)
    assert body["next_offset"] == 4 and body["high_watermark"] == 4
    assert body["sealed"] is False and body["children"] == []


async def test_read_limits_offsets_and_timestamps(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    records = [{"value": f"v{i}", "timestamp_ms": 1000 + i * 10} for i in range(50)]
    await api.call("POST", "/v1/topics/t/records", json={"records": records})
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "10", "max_records": "5"}
    )
    assert [r["offset"] for r in body["records"]] == [10, 11, 12, 13, 14]
    assert body["next_offset"] == 15
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"max_bytes": "1"}
    )
    assert [r["offset"] for r in body["records"]] == [0]  # always at least one
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"timestamp_ms": "1205"}
    )
    assert body["records"][0]["offset"] == 21
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"timestamp_ms": "99999"}
    )
    assert body["records"] == [] and body["next_offset"] == 50


async def test_keyed_records_follow_their_key_and_keep_order(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    for round_no in range(3):
        records = [{"key": f"k{i % 5}", "value": f"{round_no}:{i}"} for i in range(20)]
        status, _ = await api.call("POST", "/v1/topics/t/records", json={"records": records})
        assert status == 200
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"max_records": "100"}
    )
    by_key: dict[str, list[str]] = {}
    for record in body["records"]:
        by_key.setdefault(record["key"], []).append(record["value"])
    for key, values in by_key.items():
        n = int(key[1:])
        assert values == [f"{r}:{i}" for r in range(3) for i in range(20) if i % 5 == n]


async def test_a_long_poll_is_released_by_a_produce_without_polling(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    admin = api.with_key(ADMIN_KEY)

    async def metric(name: str) -> float:
        _, text = await admin.call("GET", "/metrics")
        match = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
        assert match, name
        return float(match.group(1))

    wakeups_before = await metric("eventbus_long_poll_wakeups")
    reader = asyncio.ensure_future(
        api.call(
            "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0", "wait_ms": "30000"}
        )
    )
    for _ in range(500):
        if await metric("eventbus_long_polls_waiting") == 1:
            break
        await asyncio.sleep(0.01)
    assert await metric("eventbus_long_polls_waiting") == 1
    assert not reader.done()
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "wake up"}]})
    status, body = await asyncio.wait_for(reader, 10)
    assert status == 200 and [r["value"] for r in body["records"]] == ["wake up"]
    # Woken exactly once, by the publish of that produce: no polling loop.
    assert await metric("eventbus_long_poll_wakeups") == wakeups_before + 1
    assert await metric("eventbus_long_polls_waiting") == 0


async def test_a_long_poll_with_nothing_to_read_answers_empty(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    status, body = await api.call(
        "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0", "wait_ms": "50"}
    )
    assert status == 200 and body["records"] == [] and body["next_offset"] == 0


# --- bad input: its own code, and nothing changes -----------------------------------------

BAD_PRODUCE: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "malformed_json"),
    (b"", 400, "malformed_json"),
    ({"records": []}, 400, "missing_records"),
    ({"nothing": 1}, 400, "missing_records"),
    ([1], 400, "malformed_json"),
    ({"records": [{"value": "a", "value_b64": "YQ=="}]}, 400, "conflicting_fields"),
    ({"records": [{"key": "a", "key_b64": "YQ==", "value": "v"}]}, 400, "conflicting_fields"),
    ({"records": [{"value_b64": "not base64!"}]}, 400, "invalid_base64"),
    ({"records": [{"value": "v", "headers": {"h": 1}}]}, 400, "invalid_header"),
    ({"records": [{"value": "v", "headers": ["h"]}]}, 400, "invalid_header"),
    ({"records": [{"key": "k"}]}, 400, "invalid_record"),
    ({"records": [{"value": 5}]}, 400, "invalid_record"),
    ({"records": [{"value": "v", "surprise": 1}]}, 400, "invalid_record"),
    ({"records": [{"value": "v", "timestamp_ms": -1}]}, 400, "invalid_record"),
    ({"records": [{"value": "x" * (1024 * 1024 + 1)}]}, 413, "record_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_PRODUCE)
async def test_bad_produce_bodies(api: Api, body: Any, status: int, code: str) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "keep"}]})
    if isinstance(body, bytes):
        got_status, got = await api.call(
            "POST", "/v1/topics/t/records", data=body, headers={"Content-Type": "application/json"}
        )
    else:
        got_status, got = await api.call("POST", "/v1/topics/t/records", json=body)
    assert (got_status, got["error"]["code"]) == (status, code), got
    assert await _hw(api) == 1


async def test_a_valid_record_after_a_bad_one_is_not_written_either(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    body = {"records": [{"value": "fine"}, {"value_b64": "%%%"}]}
    status, got = await api.call("POST", "/v1/topics/t/records", json=body)
    assert status == 400 and got["error"]["details"]["index"] == 1
    assert await _hw(api) == 0


async def test_a_timestamp_far_in_the_future_is_refused(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    future = int(time.time() * 1000) + 2 * 3600 * 1000
    status, body = await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"value": "v", "timestamp_ms": future}]}
    )
    assert status == 400 and body["error"]["code"] == "timestamp_in_future"
    soon = int(time.time() * 1000) + 30 * 60 * 1000
    status, _ = await api.call(
        "POST", "/v1/topics/t/records", json={"records": [{"value": "v", "timestamp_ms": soon}]}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"offset": "-1"}, 400, "invalid_offset"),
        ({"offset": "abc"}, 400, "invalid_offset"),
        ({"offset": ""}, 400, "invalid_offset"),
        ({"offset": "1_0"}, 400, "invalid_offset"),
        ({"offset": "2"}, 416, "offset_out_of_range"),
        ({"max_records": "0"}, 400, "invalid_parameter"),
        ({"wait_ms": "-1"}, 400, "invalid_parameter"),
        ({"max_bytes": str(16 * 1024 * 1024 + 1)}, 400, "invalid_parameter"),
        ({"offset": "0", "timestamp_ms": "0"}, 400, "invalid_parameter"),
    ],
)
async def test_bad_read_parameters(
    api: Api, params: dict[str, str], status: int, code: str
) -> None:
    await api.call("PUT", "/v1/topics/t")
    await api.call("POST", "/v1/topics/t/records", json={"records": [{"value": "keep"}]})
    got_status, got = await api.call("GET", "/v1/topics/t/partitions/0/records", params=params)
    assert (got_status, got["error"]["code"]) == (status, code), got
    if code == "offset_out_of_range":
        assert got["error"]["details"] == {"offset": 2, "start_offset": 0, "high_watermark": 1}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/topics/nope", 404, "topic_not_found"),
        ("GET", "/v1/topics/t/partitions/7/records", 404, "partition_not_found"),
        ("GET", "/v1/topics/t/partitions/x/records", 400, "invalid_parameter"),
        ("POST", "/v1/topics/nope/records", 404, "topic_not_found"),
        ("PUT", "/v1/topics/..", 400, "invalid_topic_name"),
        ("PUT", "/v1/topics/.", 400, "invalid_topic_name"),
        ("PUT", "/v1/topics/a%2Fb", 400, "invalid_topic_name"),
        ("PUT", "/v1/topics/sp%20ace", 400, "invalid_topic_name"),
        ("PUT", "/v1/topics/" + "x" * 250, 400, "invalid_topic_name"),
        ("GET", "/v1/nothing/here", 404, "route_not_found"),
        ("POST", "/v1/topics", 405, "method_not_allowed"),
        ("DELETE", "/v1/topics/t/records", 405, "method_not_allowed"),
    ],
)
async def test_bad_routes_and_names(
    api: Api, method: str, path: str, status: int, code: str
) -> None:
    await api.call("PUT", "/v1/topics/t")
    got_status, got = await api.call(method, path)
    assert (got_status, got["error"]["code"]) == (status, code), got
    assert await _hw(api) == 0


async def test_a_body_over_the_request_limit(tmp_path: Path) -> None:
    small = await start_api(tmp_path / "data", max_request_bytes=10_000)
    try:
        await small.call("PUT", "/v1/topics/t")
        body = {"records": [{"value": "x" * 20_000}]}
        status, got = await small.call("POST", "/v1/topics/t/records", json=body)
        assert status == 413 and got["error"]["code"] == "request_too_large"
        assert await _hw(small) == 0
    finally:
        await stop_api(small)


# --- auth and tenants -------------------------------------------------------------------


async def test_keys_and_scopes(api: Api) -> None:
    await api.call("PUT", "/v1/topics/t")
    async with api.session.get(api.base + "/v1/topics") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await api.call("GET", "/v1/topics", key="ebk_wrong"))[0] == 401
    status, body = await api.call("GET", "/v1/topics", key=ADMIN_KEY)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await api.call("POST", "/v1/admin/tenants", json={"name": "acme"})
    assert status == 403
    assert (await api.call("GET", "/metrics"))[0] == 403
    assert (await api.call("GET", "/metrics", key=ADMIN_KEY))[0] == 200
    assert (await api.call("GET", "/healthz", key="anything"))[0] == 200


async def test_tenants_are_isolated(api: Api) -> None:
    status, body = await api.call("POST", "/v1/admin/tenants", key=ADMIN_KEY, json={"name": "acme"})
    assert status == 201 and body["name"] == "acme" and body["api_key"].startswith("ebk_")
    acme = api.with_key(body["api_key"])
    assert (await api.call("POST", "/v1/admin/tenants", key=ADMIN_KEY, json={"name": "acme"}))[
        0
    ] == 409
    for bad in ("Acme", "-x", "", "a" * 64, None):
        status, body = await api.call(
            "POST", "/v1/admin/tenants", key=ADMIN_KEY, json={"name": bad}
        )
        assert status == 400 and body["error"]["code"] == "invalid_tenant_name"
    await api.call("PUT", "/v1/topics/orders")
    await api.call("POST", "/v1/topics/orders/records", json={"records": [{"value": "mine"}]})
    assert (await acme.call("GET", "/v1/topics/orders"))[0] == 404
    assert (await acme.call("GET", "/v1/topics/orders/partitions/0/records"))[0] == 404
    assert (await acme.call("PUT", "/v1/topics/orders"))[0] == 201  # their own orders
    status, body = await acme.call("GET", "/v1/topics/orders/partitions/0/records")
    assert body["records"] == []
    assert [t["name"] for t in (await acme.call("GET", "/v1/topics"))[1]["topics"]] == ["orders"]


async def test_metrics_can_be_public(tmp_path: Path) -> None:
    public = await start_api(tmp_path / "data", metrics_public=True)
    try:
        async with public.session.get(public.base + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        assert "eventbus_http_requests_total" in text
        # Routes are labelled by template, never by path: bounded label sets.
        await public.call("PUT", "/v1/topics/some-topic")
        async with public.session.get(public.base + "/metrics") as response:
            text = await response.text()
        assert 'route="/v1/topics/{topic}"' in text and "some-topic" not in text
    finally:
        await stop_api(public)


Labels = tuple[tuple[str, str], ...]


def _samples(text: str) -> tuple[dict[str, str], dict[tuple[str, Labels], float]]:
    """A scrape's family types by name, and its samples by name and labels."""
    families = list(text_string_to_metric_families(text))
    types = {family.name: family.type for family in families}
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return types, values


async def test_metrics_count_requests_and_records(api: Api) -> None:
    """What the request path counts in plain numbers comes out of a scrape as the counters
    and the histogram it always was."""
    await api.call("PUT", "/v1/topics/m")
    records = [{"key": "k", "value": "abc"}, {"value": "de"}, {"key": "kk", "value": ""}]
    assert (await api.call("POST", "/v1/topics/m/records", json={"records": records}))[0] == 200
    assert (await api.call("POST", "/v1/topics/m/records", json={"records": [{"value": "f"}]}))[
        0
    ] == 200
    assert (await api.call("GET", "/v1/topics/m/partitions/0/records"))[0] == 200
    assert (await api.call("GET", "/v1/topics/nothing-here"))[0] == 404
    _, text = await api.call("GET", "/metrics", key=ADMIN_KEY)
    types, values = _samples(text)
    assert types["eventbus_http_requests"] == "counter"
    assert types["eventbus_http_request_seconds"] == "histogram"
    for name in ("produced_records", "produced_bytes", "read_records", "quota_refusals"):
        assert types[f"eventbus_{name}"] == "counter"
    assert values[("eventbus_produced_records_total", ())] == 4
    assert values[("eventbus_produced_bytes_total", ())] == len("kabcdekkf")
    assert values[("eventbus_read_records_total", ())] == 4
    produce = (("method", "POST"), ("route", "/v1/topics/{topic}/records"))
    assert values[("eventbus_http_requests_total", (*produce, ("status", "200")))] == 2
    assert values[("eventbus_http_request_seconds_count", produce)] == 2
    assert values[("eventbus_http_request_seconds_bucket", (("le", "+Inf"), *produce))] == 2
    assert 0 < values[("eventbus_http_request_seconds_sum", produce)] < 60
    assert ("eventbus_http_requests_created", (*produce, ("status", "200"))) in values
    missing = (("method", "GET"), ("route", "/v1/topics/{topic}"), ("status", "404"))
    assert values[("eventbus_http_requests_total", missing)] == 1
    # The scrape before this one is counted now, and counts go on from where they were.
    _, text = await api.call("GET", "/metrics", key=ADMIN_KEY)
    scrape = (("method", "GET"), ("route", "/metrics"), ("status", "200"))
    assert _samples(text)[1][("eventbus_http_requests_total", scrape)] == 1


async def test_request_ids(api: Api) -> None:
    async with api.session.get(api.base + "/healthz", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    async with api.session.get(api.base + "/healthz") as r:
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])


# --- the API document -----------------------------------------------------------------------


@pytest.mark.single_process("reads the routes of the app object in the server process")
async def test_openapi_lists_exactly_the_routes_served(api: Api) -> None:
    status, document = await api.call("GET", "/openapi.json", key="not needed")
    assert status == 200 and document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "patch", "delete"}
    }
    served = {
        (route.method, route.resource.canonical)
        for route in api.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == served
    assert {(route.method, route.path) for route in ROUTES} == served


async def test_retention_moves_the_start_and_old_offsets_answer_416(tmp_path: Path) -> None:
    fast = await start_api(tmp_path / "data", retention_check_ms=50)
    try:
        config = {"segment_bytes": 1024, "retention_bytes": 2048}
        assert (await fast.call("PUT", "/v1/topics/t", json=config))[0] == 201
        for i in range(60):
            record = {"value": f"{i:04d}" + "x" * 150}
            await fast.call("POST", "/v1/topics/t/records", json={"records": [record]})
        # Each stored record is about 225 bytes and a segment holds 4 of them; retention
        # keeps at least 2048 bytes (10+ records) and at most that plus the active segment
        # and one more it may not cut into.
        for _ in range(500):  # the retention loop runs every 50 ms
            status, body = await fast.call("GET", "/v1/topics/t")
            start = body["partitions"][0]["start_offset"]
            if 60 - start <= 20:
                break
            await asyncio.sleep(0.01)
        assert 60 - start <= 20, f"retention kept {60 - start} records"
        assert 60 - start >= 2048 // 225
        assert body["partitions"][0]["end_offset"] == 60
        status, got = await fast.call(
            "GET", "/v1/topics/t/partitions/0/records", params={"offset": "0"}
        )
        assert status == 416 and got["error"]["code"] == "offset_out_of_range"
        assert got["error"]["details"] == {
            "offset": 0,
            "start_offset": start,
            "high_watermark": 60,
        }
        status, got = await fast.call("GET", "/v1/topics/t/partitions/0/records")
        assert status == 200 and got["records"][0]["offset"] == start
        assert got["records"][-1]["value"].startswith("0059")
    finally:
        await stop_api(fast)
