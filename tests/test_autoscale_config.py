"""The autoscale object of a topic's config: defaults, validation, PATCH of single knobs."""

from __future__ import annotations

from typing import Any

from gateway.keys import BROKER
from tests.conftest import Api


async def test_the_autoscale_config_is_validated_defaulted_and_patchable(api: Api) -> None:
    status, body = await api.call("PUT", "/v1/topics/t")
    assert status == 201
    assert body["config"]["autoscale"] == {
        "enabled": True,
        "split_bytes_per_s": 4 * 1024 * 1024,
        "split_records_per_s": 4000,
        "window_s": 10,
        "merge_ratio": 0.25,
        "merge_window_s": 300,
        "cooldown_s": 30,
        "min_partitions": 1,
        "max_partitions": 64,
    }
    status, body = await api.call(
        "PATCH", "/v1/topics/t", json={"autoscale": {"window_s": 5, "merge_ratio": 0.1}}
    )
    assert status == 200
    assert body["config"]["autoscale"]["window_s"] == 5
    assert body["config"]["autoscale"]["merge_ratio"] == 0.1
    assert body["config"]["autoscale"]["max_partitions"] == 64  # the others kept
    assert (await api.call("PUT", "/v1/topics/u", json={"autoscale": {"window_s": 2}}))[0] == 201
    # The same config again confirms; another one conflicts.
    assert (await api.call("PUT", "/v1/topics/u", json={"autoscale": {"window_s": 2}}))[0] == 200
    assert (await api.call("PUT", "/v1/topics/u", json={"autoscale": {"window_s": 3}}))[0] == 409
    bad: list[tuple[Any, str]] = [
        ({"autoscale": 5}, "autoscale"),
        ({"autoscale": {"enabled": "yes"}}, "autoscale.enabled"),
        ({"autoscale": {"window_s": 0}}, "autoscale.window_s"),
        ({"autoscale": {"window_s": 1.5}}, "autoscale.window_s"),
        ({"autoscale": {"split_bytes_per_s": True}}, "autoscale.split_bytes_per_s"),
        ({"autoscale": {"merge_ratio": 1}}, "autoscale.merge_ratio"),
        ({"autoscale": {"merge_ratio": 0}}, "autoscale.merge_ratio"),
        ({"autoscale": {"cooldown_s": -1}}, "autoscale.cooldown_s"),
        ({"autoscale": {"max_partitions": 5000}}, "autoscale.max_partitions"),
        ({"autoscale": {"min_partitions": 9, "max_partitions": 8}}, "autoscale.min_partitions"),
        ({"autoscale": {"merge_window_s": 4}}, "autoscale.merge_window_s"),  # below window_s 5
        ({"autoscale": {"partitions": 3}}, "autoscale.partitions"),
    ]
    for body, key in bad:
        status, answer = await api.call("PATCH", "/v1/topics/t", json=body)
        assert status == 400 and answer["error"]["code"] == "invalid_config", body
        assert answer["error"]["details"]["key"] == key, answer
    status, answer = await api.call("PUT", "/v1/topics/v", json={"autoscale": {"window_s": 0}})
    assert status == 400 and answer["error"]["code"] == "invalid_config"
    assert (await api.call("GET", "/v1/topics/t"))[1]["config"]["autoscale"]["window_s"] == 5


async def test_a_topic_stored_before_autoscaling_existed_gets_the_defaults(api: Api) -> None:
    old_config = {
        "retention_ms": 7 * 24 * 3600 * 1000,
        "retention_bytes": None,
        "local_retention_ms": None,
        "local_retention_bytes": None,
        "segment_bytes": 128 * 1024 * 1024,
        "segment_ms": 3600 * 1000,
        "max_record_bytes": 1024 * 1024,
    }
    await api.server.app[BROKER].catalog.create_topic("default", "old", old_config)
    status, body = await api.call("GET", "/v1/topics/old")
    assert status == 200 and body["config"]["autoscale"]["window_s"] == 10
    # Its config is the defaults: a PUT of the defaults confirms it.
    assert (await api.call("PUT", "/v1/topics/old"))[0] == 200
    status, body = await api.call("PATCH", "/v1/topics/old", json={"autoscale": {"cooldown_s": 5}})
    assert status == 200 and body["config"]["autoscale"]["cooldown_s"] == 5
    assert body["config"]["autoscale"]["max_partitions"] == 64
