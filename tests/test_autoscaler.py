"""The autoscaler in a real server: splits and merges from measured load, hot keys, limits,
the autoscale config, and what topic describe and /metrics show.

The autoscaler's clock is the test's: time advances by whole slices when the test says so,
and the test runs each evaluation itself (the background loop would wait an hour), so what
these tests assert does not depend on how fast the machine is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.broker.service import key_hash
from gateway.config import Clocks, ServerConfig
from gateway.wiring.app import create_app
from gateway.wiring.state import AUTOSCALER
from tests.conftest import ADMIN_KEY, Api, metric_values
from tests.servers import read_credentials
from tests.tenants import new_tenant

SLICE_MS = 200  # window_s 1 / 5
SCALING = {
    "split_records_per_s": 100,
    "split_bytes_per_s": 10**9,
    "window_s": 1,
    "merge_window_s": 2,
    "cooldown_s": 0,
    "max_partitions": 4,
}


class Clock:
    def __init__(self) -> None:
        self.now = 10_000_000

    def __call__(self) -> int:
        return self.now


async def start_scaled(data_dir: Path, clock: Clock, *, metrics_public: bool = False) -> Api:
    config = ServerConfig(
        data_dir=data_dir,
        admin_key=ADMIN_KEY,
        autoscale_interval_ms=3_600_000,
        metrics_public=metrics_public,
    )
    app = create_app(config, clocks=Clocks(autoscale_ms=clock))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    key = read_credentials(data_dir)["EVENTBUS_API_KEY"]
    return Api(aiohttp.ClientSession(), str(server.make_url("")), key, server, data_dir)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def scaled(tmp_path: Path, clock: Clock) -> AsyncIterator[Api]:
    api = await start_scaled(tmp_path / "data", clock)
    yield api
    await api.session.close()
    await api.server.close()


async def tick(api: Api) -> None:
    await api.server.app[AUTOSCALER].tick()


async def describe(api: Api, topic: str = "t") -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/topics/{topic}")
    assert status == 200, body
    return body


def active(body: dict[str, Any]) -> list[int]:
    return [p["id"] for p in body["partitions"] if p["state"] == "active"]


async def load(
    api: Api, clock: Clock, keys: list[str], slices: int, per_key: int = 1, topic: str = "t"
) -> None:
    """Produce ``per_key`` records of every key in each of ``slices`` slices of time."""
    for _ in range(slices):
        clock.now += SLICE_MS
        records = [{"key": k, "value": "x" * 20} for _ in range(per_key) for k in keys]
        status, body = await api.call(
            "POST", f"/v1/topics/{topic}/records", json={"records": records}
        )
        assert status == 200, body


async def test_partitions_rise_under_load_and_fall_back_when_it_stops(
    scaled: Api, clock: Clock
) -> None:
    status, body = await scaled.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    assert status == 201 and body["config"]["autoscale"]["window_s"] == 1
    await tick(scaled)  # measuring starts
    keys = [f"user-{n}" for n in range(64)]
    counts = [1]
    # 64 keys, three times per 200 ms slice: 960 records/s, hot in every slice at up to 4
    # partitions of about 240 records/s each.
    for _ in range(3):
        await load(scaled, clock, keys, slices=6, per_key=3)
        await tick(scaled)
        counts.append(len(active(await describe(scaled))))
    assert counts == [1, 2, 4, 4]
    body = await describe(scaled)
    blocked = body["autoscale"]["blocked"]
    assert {b["reason"] for b in blocked} == {"max_partitions"} and len(blocked) == 4
    throughput = {t["partition"]: t for t in body["autoscale"]["throughput"]}
    assert set(throughput) == set(active(body))
    assert all(t["records_per_s"] >= 100 for t in throughput.values())
    assert sum(t["records_per_s"] for t in throughput.values()) == pytest.approx(960)

    # The load stops: after the merge window, neighbours merge; their child needs a whole
    # merge window of its own before it merges again.
    clock.now += 2200
    await tick(scaled)
    assert len(active(await describe(scaled))) == 2
    await tick(scaled)
    assert len(active(await describe(scaled))) == 2
    clock.now += 2200
    await tick(scaled)
    body = await describe(scaled)
    assert active(body) == [max(p["id"] for p in body["partitions"])]
    changes = body["autoscale"]["recent_changes"]
    assert [c["action"] for c in changes] == ["split"] * 3 + ["merge"] * 3
    assert {c["reason"] for c in changes} == {"records_per_s", "cold"}
    assert all(c["error"] is None and c["children"] for c in changes)
    for change in changes:
        if change["action"] == "split":
            parent = next(p for p in body["partitions"] if p["id"] == change["parents"][0])
            assert parent["children"] == change["children"]
            assert change["at"] == body["partitions"][change["children"][1]]["hash_range"]["start"]
    seen = await metric_values(scaled)
    assert seen['eventbus_autoscale_changes_total{action="split",reason="records_per_s"}'] == 3
    assert seen['eventbus_autoscale_changes_total{action="merge",reason="cold"}'] == 3
    assert seen["eventbus_partition_reshapes_total"] == 6
    assert seen["eventbus_active_partitions"] == 1


async def test_the_split_point_follows_skewed_traffic(scaled: Api, clock: Clock) -> None:
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    await tick(scaled)
    # Keys whose hashes all fall in the lowest quarter of the space.
    keys = [k for k in (f"k{n}" for n in range(2000)) if key_hash(k.encode()) < 2**62][:40]
    await load(scaled, clock, keys, slices=6)
    await tick(scaled)
    body = await describe(scaled)
    (change,) = body["autoscale"]["recent_changes"]
    point = int(change["at"])
    assert point < 2**62, "the split point is where the traffic is, not the middle"
    left = sum(1 for k in keys if key_hash(k.encode()) < point)
    assert 12 <= left <= 28, "each child takes a fair part of the keys"
    partitions = {p["id"]: p for p in body["partitions"]}
    assert partitions[1]["hash_range"] == {"start": "0", "end": str(point)}
    # The keys follow the point: produce answers name the children.
    status, answer = await scaled.call(
        "POST", "/v1/topics/t/records", json={"records": [{"key": k, "value": "v"} for k in keys]}
    )
    assert status == 200
    placed = [o["partition"] for o in answer["offsets"]]
    assert placed == [1 if key_hash(k.encode()) < point else 2 for k in keys]


async def test_a_hot_single_key_is_reported_and_not_split(scaled: Api, clock: Clock) -> None:
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    await tick(scaled)
    # 50 records per slice of one key: 250 records/s, two and a half times the threshold.
    await load(scaled, clock, ["celebrity"], slices=6, per_key=50)
    await tick(scaled)
    body = await describe(scaled)
    assert active(body) == [0]
    (hot,) = body["autoscale"]["hot_keys"]
    assert hot["partition"] == 0 and hot["key"] == "celebrity"
    assert hot["hash"] == str(key_hash(b"celebrity"))
    assert hot["records_per_s"] == pytest.approx(250) and hot["share"] == 1.0
    (blocked,) = body["autoscale"]["blocked"]
    assert blocked["reason"] == "hot_key" and "single key" in blocked["message"]
    seen = await metric_values(scaled)
    assert seen["eventbus_autoscale_hot_keys"] == 1
    assert seen['eventbus_autoscale_blocked{reason="hot_key"}'] == 1
    assert seen["eventbus_partition_reshapes_total"] == 0
    key = 'eventbus_top_partition_write_records_per_s{partition="0",tenant="default",topic="t"}'
    assert seen[key] == pytest.approx(250)


async def test_public_metrics_name_no_tenant_or_topic(tmp_path: Path, clock: Clock) -> None:
    """--metrics-public serves /metrics to anyone: the busiest partitions' rates, labelled
    by tenant and topic, are left out; the totals stay."""
    api = await start_scaled(tmp_path / "data", clock, metrics_public=True)
    try:
        await api.call("PUT", "/v1/topics/acquisition-talks", json={"autoscale": SCALING})
        await tick(api)
        await load(api, clock, ["k"], slices=6, per_key=10, topic="acquisition-talks")
        async with api.session.get(api.base + "/metrics") as response:  # no key
            assert response.status == 200
            text = await response.text()
        assert "eventbus_write_records_per_s 50.0" in text.splitlines()
        assert "acquisition-talks" not in text and "default" not in text
        assert "eventbus_top_partition" not in text
    finally:
        await api.session.close()
        await api.server.close()


async def test_a_hot_key_among_others_is_isolated_by_successive_splits(
    scaled: Api, clock: Clock
) -> None:
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": {**SCALING, "max_partitions": 8}})
    await tick(scaled)
    others = [f"other-{n}" for n in range(30)]
    # The hot key: 40 records per slice (200/s); the others 1 each (150/s together).
    for _ in range(6):
        for _ in range(6):
            clock.now += SLICE_MS
            records = [{"key": "hot", "value": "x"}] * 40 + [
                {"key": k, "value": "x"} for k in others
            ]
            status, _ = await scaled.call("POST", "/v1/topics/t/records", json={"records": records})
            assert status == 200
        await tick(scaled)
    body = await describe(scaled)
    hot_hash = key_hash(b"hot")
    (home,) = [
        p
        for p in body["partitions"]
        if p["state"] == "active"
        and int(p["hash_range"]["start"]) <= hot_hash < int(p["hash_range"]["end"])
    ]
    # Peeled until no side beside the hot key carries 10% of its partition: then the
    # partition is reported as a hot key's, not split.
    low, high = int(home["hash_range"]["start"]), int(home["hash_range"]["end"])
    mates = [k for k in others if low <= key_hash(k.encode()) < high]
    assert len(mates) <= 10  # from 30
    (hot,) = body["autoscale"]["hot_keys"]
    assert hot["key"] == "hot" and hot["partition"] == home["id"] and hot["share"] >= 0.75
    assert {"partitions": [home["id"]], "reason": "hot_key"}.items() <= next(
        b for b in body["autoscale"]["blocked"] if b["partitions"] == [home["id"]]
    ).items()


async def test_a_tenant_limit_stops_a_split_and_describe_says_so(
    tmp_path: Path, clock: Clock
) -> None:
    api = await start_scaled(tmp_path / "data", clock)

    async def set_partition_quota(limit: int) -> None:
        quotas = {"quotas": {"max_partitions": limit}}
        status, _ = await api.call("PATCH", "/v1/admin/tenants/default", key=ADMIN_KEY, json=quotas)
        assert status == 200

    await set_partition_quota(3)
    try:
        # Another topic of the tenant holds two of its three partitions.
        await api.call("PUT", "/v1/topics/other", json={"autoscale": {"enabled": False}})
        assert (await api.call("POST", "/v1/topics/other/partitions/0/split"))[0] == 200
        await api.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
        await tick(api)
        await load(api, clock, [f"user-{n}" for n in range(64)], slices=6)
        await tick(api)
        body = await describe(api)
        assert active(body) == [0]
        (blocked,) = body["autoscale"]["blocked"]
        assert blocked["reason"] == "tenant_quota" and blocked["partitions"] == [0]
        assert "quota, which leaves this topic 1 active partitions" in blocked["message"]
        seen = await metric_values(api)
        assert seen['eventbus_autoscale_blocked{reason="tenant_quota"}'] == 1
        # A larger quota lets the split through at the next evaluation.
        await set_partition_quota(4)
        await tick(api)
        body = await describe(api)
        assert len(active(body)) == 2 and body["autoscale"]["blocked"] == []
    finally:
        await api.session.close()
        await api.server.close()


async def test_the_tenant_max_partitions_quota_is_the_autoscalers_limit(
    scaled: Api, clock: Clock
) -> None:
    status, _ = await scaled.call(
        "PATCH", "/v1/admin/tenants/default", key=ADMIN_KEY, json={"quotas": {"max_partitions": 2}}
    )
    assert status == 200
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    for _ in range(3):
        await tick(scaled)
        await load(scaled, clock, [f"user-{n}" for n in range(64)], slices=6)
        await tick(scaled)
    body = await describe(scaled)
    assert len(active(body)) == 2
    assert {b["reason"] for b in body["autoscale"]["blocked"]} == {"tenant_quota"}


async def test_disabled_autoscaling_leaves_a_hot_topic_alone(scaled: Api, clock: Clock) -> None:
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": {**SCALING, "enabled": False}})
    await tick(scaled)
    await load(scaled, clock, [f"user-{n}" for n in range(64)], slices=6)
    await tick(scaled)
    body = await describe(scaled)
    assert active(body) == [0] and body["autoscale"]["enabled"] is False
    # Measured all the same.
    assert body["autoscale"]["throughput"][0]["records_per_s"] == pytest.approx(320)
    # Enabled again by PATCH: the next evaluation splits.
    status, patched = await scaled.call(
        "PATCH", "/v1/topics/t", json={"autoscale": {"enabled": True}}
    )
    assert status == 200 and patched["config"]["autoscale"]["window_s"] == 1
    await tick(scaled)
    assert len(active(await describe(scaled))) == 2


async def test_min_partitions_splits_an_idle_topic(scaled: Api, clock: Clock) -> None:
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": {**SCALING, "min_partitions": 3}})
    for _ in range(3):
        await tick(scaled)
    body = await describe(scaled)
    assert len(active(body)) == 3
    reasons = {c["reason"] for c in body["autoscale"]["recent_changes"]}
    assert reasons == {"min_partitions"}


async def test_a_tenant_deleted_during_a_pass_is_passed_over(scaled: Api, clock: Clock) -> None:
    """The pass lists topics, then looks up each tenant's limit: a tenant deleted between
    the two is left out of that pass, and the others' topics are still evaluated."""
    doomed = await new_tenant(scaled, "doomed")
    await doomed.call("PUT", "/v1/topics/d", json={"autoscale": SCALING})
    await scaled.call("PUT", "/v1/topics/t", json={"autoscale": SCALING})
    await tick(scaled)
    autoscaler = scaled.server.app[AUTOSCALER]
    lookup = autoscaler.tenant_limit

    async def deleted_first(tenant: str) -> int | None:
        if tenant == "doomed":
            status, _ = await scaled.call("DELETE", "/v1/admin/tenants/doomed", key=ADMIN_KEY)
            assert status == 200
        return await lookup(tenant)

    autoscaler.tenant_limit = deleted_first
    await load(scaled, clock, [f"user-{n}" for n in range(64)], slices=6)
    evaluations = autoscaler.status.evaluations
    await tick(scaled)  # raised TenantNotFoundError before
    assert autoscaler.status.evaluations == evaluations + 1  # the default tenant's topic
    assert len(active(await describe(scaled))) == 2
