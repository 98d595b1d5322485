"""What the autoscaler knows of a topic, as topic describe shows it (``autoscale``)."""

from __future__ import annotations

import base64
from typing import Any

from autoscaler.config import autoscale_config
from autoscaler.loop import Change, ScalingStatus
from autoscaler.measure import LoadMeters
from autoscaler.policy import Decision, HotKey
from gateway.broker.views import TopicView


def autoscale_json(scaling: ScalingStatus, meters: LoadMeters, view: TopicView) -> dict[str, Any]:
    """The ``autoscale`` part of topic describe: measurements, hot keys, what is held back
    and why, and the recent automatic changes."""
    config = autoscale_config(view.record.config)
    tenant, incarnation = view.record.tenant, view.record.incarnation
    status = scaling.topic(tenant, incarnation)
    throughput = []
    for pid in sorted(view.active_ids):
        measured = meters.rate(view.key(pid), config)
        rate, age_ms = measured if measured is not None else (None, 0)
        throughput.append(
            {
                "partition": pid,
                "bytes_per_s": None if rate is None else round(rate.bytes_per_s, 1),
                "records_per_s": None if rate is None else round(rate.records_per_s, 1),
                "measured_ms": age_ms,
            }
        )
    decision = status.decision if status is not None else Decision()
    return {
        "enabled": config.enabled,
        "evaluated_ms": None if status is None else status.evaluated_ms,
        "throughput": throughput,
        "hot_keys": [hot_key_json(key) for key in decision.hot_keys],
        "blocked": [
            {"partitions": list(b.partition_ids), "reason": b.reason, "message": b.message}
            for b in decision.blocked
        ],
        "recent_changes": [] if status is None else [change_json(c) for c in status.changes],
    }


def hot_key_json(key: HotKey) -> dict[str, Any]:
    out: dict[str, Any] = {"partition": key.partition_id, "hash": str(key.hash)}
    if key.key is not None:
        try:
            out["key"] = key.key.decode()
        except UnicodeDecodeError:
            out["key_b64"] = base64.b64encode(key.key).decode()
    out["bytes_per_s"] = round(key.bytes_per_s, 1)
    out["records_per_s"] = round(key.records_per_s, 1)
    out["share"] = round(key.share, 3)
    return out


def change_json(change: Change) -> dict[str, Any]:
    return {
        "at_ms": change.at_ms,
        "action": change.action,
        "parents": list(change.parents),
        "children": list(change.children),
        "at": None if change.point is None else str(change.point),
        "reason": change.reason,
        "message": change.message,
        "error": change.error,
    }
