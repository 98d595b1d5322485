"""The API's rules that no JSON Schema can say, applied to the fuzzer's valid cases.

The document says each of these rules in words; the fuzzer generates from the schema
alone, so a valid case (one the schema allows) may break one, and its 400 would read as a
document that says too little. Before such a case is sent it is made to follow the rule;
invalid cases go as generated, and the suite tests each rule's refusal (named below).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

HOUR = timedelta(hours=1)
MAX_PERIOD = timedelta(hours=31 * 24)


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    operation = f"{case.method.upper()} {case.path}"
    if operation in _STREAMS:
        _no_cursor(case.headers)
    if operation == "GET /v1/topics/{topic}/partitions/{partition}/records":
        _one_start(case.query)
    elif operation == "POST /v1/topics/{topic}/records" and isinstance(case.body, dict):
        _timestamps_not_ahead(case.body)
    elif operation in ("PUT /v1/topics/{topic}", "PATCH /v1/topics/{topic}"):
        if isinstance(case.body, dict):
            _retention_rules(case.body)
    elif operation in ("GET /v1/usage", "GET /v1/admin/usage"):
        _period_rules(case.query)


# Routes that resume an event stream from a Last-Event-ID cursor.
_STREAMS = (
    "GET /v1/topics/{topic}/partitions/{partition}/records",
    "GET /v1/topics/{topic}/groups/{group}/records",
)


def _no_cursor(headers: dict[str, Any] | None) -> None:
    """A cursor names each partition once and offsets within the partitions' logs
    (tests/test_sse.py::test_bad_last_event_id_and_accept): a generated one rarely does."""
    if headers:
        headers.pop("Last-Event-ID", None)


def _one_start(query: dict[str, Any] | None) -> None:
    """A read starts at an offset or at a time, not both
    (tests/test_gateway_api.py::test_bad_read_parameters)."""
    if query and "offset" in query and "timestamp_ms" in query:
        del query["timestamp_ms"]


def _timestamps_not_ahead(body: dict[str, Any]) -> None:
    """A record's time is at most an hour ahead of the server's clock, Kafka's rule
    (tests/test_gateway_api.py, timestamp_in_future)."""
    now_ms = int(time.time() * 1000)
    for record in body.get("records") or []:
        stamp = record.get("timestamp_ms") if isinstance(record, dict) else None
        if isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp > now_ms:
            record["timestamp_ms"] = now_ms


def _retention_rules(config: dict[str, Any]) -> None:
    """Local retention may not exceed total retention, and an autoscale policy's bounds
    must hold together (tests/test_gateway_api.py, tests/test_autoscale_config.py). The
    topic's stored settings count too, so the case names both sides of each rule."""
    for local, total in (
        ("local_retention_ms", "retention_ms"),
        ("local_retention_bytes", "retention_bytes"),
    ):
        if config.get(local) is not None and config.get(total) is not None:
            config[total] = max(config[total], config[local])
        elif config.get(total) is not None:
            config[local] = None  # the local limit is the total one
        elif config.get(local) is not None:
            config[total] = None  # no total limit: any local one fits
    autoscale = config.get("autoscale")
    if isinstance(autoscale, dict):
        low = autoscale.get("min_partitions", 1)
        high = autoscale.get("max_partitions", max(low, 64))
        autoscale["min_partitions"], autoscale["max_partitions"] = min(low, high), max(low, high)
        window = autoscale.get("window_s", 10)
        merge_window = autoscale.get("merge_window_s", max(window, 300))
        autoscale["window_s"], autoscale["merge_window_s"] = (
            min(window, merge_window),
            max(window, merge_window),
        )


def _period_rules(query: dict[str, Any] | None) -> None:
    """A usage period starts before it ends and spans at most 31 days
    (tests/test_metering.py::test_bad_periods_are_refused_clearly)."""
    if not query or ("from" not in query and "to" not in query):
        return
    start = _hour(query.get("from"))
    end = _hour(query.get("to"))
    if start is None and end is None:
        return
    if start is None:
        assert end is not None
        start = end - HOUR
    if start.year == 9999 and start.month == 12 and start.day == 31 and start.hour == 23:
        start -= HOUR  # the last hour there is: its end would be past year 9999
    if end is None or not start < end <= start + MAX_PERIOD:
        end = start + HOUR
    query["from"], query["to"] = _text(start), _text(end)


def _hour(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC)


def _text(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:00:00Z")
