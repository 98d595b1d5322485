"""The structured log line: one JSON object, whatever a record carries."""

from __future__ import annotations

import json
import logging
import re

from gateway.logs import JsonFormatter, request_id


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "eventbus.http", "levelno": logging.INFO})
    record.levelname, record.msg, record.args = "INFO", msg, args
    record.__dict__.update(extra)
    return record


def test_a_request_line_carries_its_fields_the_request_id_and_the_worker() -> None:
    formatter = JsonFormatter()
    formatter.worker = 1
    token = request_id.set("abc-123")
    try:
        line = formatter.format(_record("%s %d", "POST", 200, route="/v1/x", tenant=None))
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("ts"))
    assert entry == {
        "level": "info",
        "logger": "eventbus.http",
        "msg": "POST 200",
        "worker": 1,
        "request_id": "abc-123",
        "route": "/v1/x",
        "tenant": None,
    }


def test_the_time_follows_each_record_across_seconds() -> None:
    formatter = JsonFormatter()
    stamps = []
    for created in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_061.5):
        record = _record("tick")
        record.created, record.msecs = created, (created % 1) * 1000
        stamps.append(json.loads(formatter.format(record))["ts"])
    assert stamps == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:20.750Z",
        "2023-11-14T22:14:21.500Z",
    ]


def test_values_json_cannot_hold_as_they_are_still_make_a_line() -> None:
    formatter = JsonFormatter()
    entry = json.loads(formatter.format(_record("odd", when=object, counts={1: "a"})))
    assert entry["counts"] == {"1": "a"} and entry["when"] == str(object)
    entry = json.loads(formatter.format(_record("huge", offset=2**70)))
    assert entry["offset"] == 2**70
    error = ValueError("boom")
    record = _record("failed")
    record.exc_info = (ValueError, error, None)
    assert "ValueError: boom" in json.loads(formatter.format(record))["exc"]
