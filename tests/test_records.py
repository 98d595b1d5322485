"""JSON produce records: the shortcut for common record shapes answers exactly what the
field-by-field checks answer, and every other shape still meets those checks."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.http.record_json import (
    ConflictingFieldsError,
    InvalidRecordError,
    _parse_record_checked,
    parse_record,
    parse_records,
)
from partitions.errors import EventBusError

NOW = 1_700_000_000_000

SHAPES: list[Any] = [
    {"value": "v"},
    {"value": ""},
    {"key": "k", "value": "v"},
    {"key": "", "value": "ü€"},
    {"key": None, "value": "v"},
    {"value": "v", "headers": {"h": "1"}},
    {"key": "k", "value": "v", "timestamp_ms": 5},
    {"key_b64": "aGk=", "value": "v"},
    {"key": "k", "value_b64": "aGk="},
    {"value_b64": "aGk="},
]


@pytest.mark.parametrize("record", SHAPES)
def test_the_shortcut_answers_what_the_checks_answer(record: Any) -> None:
    assert parse_record(record, 0, now_ms=NOW) == _parse_record_checked(record, 0, now_ms=NOW)


BAD: list[Any] = [
    {"value": 5},
    {"key": 5, "value": "v"},
    {"value": "v", "value_b64": "aGk="},
    {"key": "k", "key_b64": "aGk=", "value": "v"},
    {"value": "v", "partition": 1},
    {"value": "v", "colour": "red"},
    {"key": "k"},
    {},
    ["value", "v"],
    "v",
]


@pytest.mark.parametrize("record", BAD)
def test_every_other_shape_meets_the_checks(record: Any) -> None:
    with pytest.raises(EventBusError) as raised:
        parse_record(record, 3, now_ms=NOW)
    with pytest.raises(type(raised.value)):
        _parse_record_checked(record, 3, now_ms=NOW)
    assert raised.value.details.get("index") == 3


def test_errors_name_the_record_and_its_problem() -> None:
    body = {"records": [{"value": "a"}, {"key": "k", "value": "b"}, {"value": 1}]}
    with pytest.raises(InvalidRecordError, match="record 2"):
        parse_records(body, now_ms=NOW)
    with pytest.raises(ConflictingFieldsError, match="value and value_b64"):
        parse_records({"records": [{"value": "a", "value_b64": "YQ=="}]}, now_ms=NOW)
