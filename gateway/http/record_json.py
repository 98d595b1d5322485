"""Records in the JSON API: parsing JSON and NDJSON produce bodies and rendering reads.

A key or value is sent either as text (``key``, ``value``) or as base64 (``key_b64``,
``value_b64``); the form is stored with the record and the read answers in the same form.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from partitions.batch import NewRecord, Record
from partitions.errors import InvalidInputError, TooManyRecordsError
from partitions.shapes import MAX_INTEGER, Integer, ListOf, MapOf, Nullable, Object, Text

MAX_FUTURE_SKEW_MS = 60 * 60 * 1000


class MalformedJsonError(InvalidInputError):
    code = "malformed_json"


class MissingRecordsError(InvalidInputError):
    code = "missing_records"


class InvalidRecordError(InvalidInputError):
    code = "invalid_record"


class ConflictingFieldsError(InvalidInputError):
    code = "conflicting_fields"


class InvalidBase64Error(InvalidInputError):
    code = "invalid_base64"


class InvalidHeaderError(InvalidInputError):
    code = "invalid_header"


class TimestampInFutureError(InvalidInputError):
    code = "timestamp_in_future"


def _bytes_field(
    record: dict[str, Any], index: int, name: str, *, required: bool
) -> tuple[bytes | None, bool]:
    """Answers the bytes and whether they came as text. A ``key`` of null is no key."""
    b64_name = name + "_b64"
    if name in record and b64_name in record:
        raise ConflictingFieldsError(
            f"record {index} has both {name} and {b64_name}; send one", index=index
        )
    if name in record:
        text = record[name]
        if text is None and not required:
            return None, False
        if not isinstance(text, str):
            raise InvalidRecordError(
                f"record {index}: {name} must be a string (send bytes as {b64_name})",
                index=index,
            )
        return text.encode(), True
    if b64_name in record:
        b64 = record[b64_name]
        if not isinstance(b64, str):
            raise InvalidBase64Error(f"record {index}: {b64_name} must be a string", index=index)
        try:
            return base64.b64decode(b64, validate=True), False
        except (binascii.Error, ValueError) as exc:
            raise InvalidBase64Error(
                f"record {index}: {b64_name} is not valid base64", index=index
            ) from exc
    if required:
        raise InvalidRecordError(f"record {index} has no {name} or {b64_name}", index=index)
    return None, False


_RECORD_FIELDS = frozenset(
    {"key", "key_b64", "value", "value_b64", "headers", "timestamp_ms", "partition"}
)
# What the checks below accept, as the API's document says it (a produce pays for these
# checks per record, so they are written out; tests hold the two to each other).
_BASE64 = Text(
    pattern=r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
    meaning="base64 (RFC 4648, padded)",
)
RECORD_SHAPE = Object(
    fields={
        "key": Nullable(shape=Text(), description="The key as text (null: no key)"),
        "key_b64": _BASE64,
        "value": Text(description="The value as text"),
        "value_b64": _BASE64,
        "headers": Nullable(shape=MapOf(value=Text()), description="Header names and values"),
        "timestamp_ms": Nullable(
            shape=Integer(),
            description="When the record happened (null or left out: when the server takes "
            "it); at most an hour ahead of the server's clock",
        ),
    },
    one_of=(("value", "value_b64"),),
    at_most_one=(("key", "key_b64"),),
)


# A produce request holds at most this many records, in any body format.
MAX_PRODUCE_RECORDS = 100_000


PRODUCE_SHAPE = Object(
    fields={
        "records": ListOf(item=RECORD_SHAPE, min_items=1, max_items=MAX_PRODUCE_RECORDS),
    },
    required=("records",),
)


def parse_records(body: Any, *, now_ms: int) -> list[NewRecord]:
    """The records of a JSON produce body ``{"records": [...]}``."""
    if not isinstance(body, dict):
        raise MalformedJsonError('the body must be a JSON object {"records": [...]}')
    if len(body) != 1 or "records" not in body:
        unknown = ", ".join(sorted(name for name in body if name != "records"))
        raise MissingRecordsError(
            'the body is {"records": [...]}' + (f"; unknown fields: {unknown}" if unknown else "")
        )
    records = body["records"]
    if not isinstance(records, list) or not records:
        raise MissingRecordsError('"records" must be a non-empty list')
    check_count(len(records))
    return [parse_record(record, index, now_ms=now_ms) for index, record in enumerate(records)]


def parse_ndjson(raw: bytes, *, now_ms: int) -> list[NewRecord]:
    """The records of an NDJSON produce body: one record object per line; blank lines are
    skipped, and ``index`` in errors counts records, not lines."""
    out: list[NewRecord] = []
    for line_number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedJsonError(
                f"line {line_number} is not valid JSON: {exc}", line=line_number
            ) from exc
        out.append(parse_record(record, len(out), now_ms=now_ms))
        check_count(len(out))
    if not out:
        raise MissingRecordsError("the body holds no record; send one JSON object per line")
    return out


def check_count(count: int) -> None:
    if count > MAX_PRODUCE_RECORDS:
        raise TooManyRecordsError(f"a produce request holds at most {MAX_PRODUCE_RECORDS} records")


def check_timestamp(timestamp: int, index: int, *, now_ms: int) -> None:
    if timestamp > now_ms + MAX_FUTURE_SKEW_MS:
        raise TimestampInFutureError(
            f"record {index}: timestamp_ms is more than an hour ahead of the server",
            index=index,
        )


def parse_record(record: Any, index: int, *, now_ms: int) -> NewRecord:
    # The common shapes, {"value": text} and {"key": text, "value": text}, without the
    # field-by-field checks below (a produce pays this per record).
    if type(record) is dict:
        value = record.get("value")
        if type(value) is str:
            fields = len(record)
            if fields == 1:
                return NewRecord(value.encode(), None, (), None, False, True)
            key = record.get("key")
            if fields == 2 and type(key) is str:
                return NewRecord(value.encode(), key.encode(), (), None, True, True)
    return _parse_record_checked(record, index, now_ms=now_ms)


def _parse_record_checked(record: Any, index: int, *, now_ms: int) -> NewRecord:
    if not isinstance(record, dict):
        raise InvalidRecordError(f"record {index} is not an object", index=index)
    unknown = set(record) - _RECORD_FIELDS
    if unknown:
        raise InvalidRecordError(
            f"record {index} has unknown fields: {', '.join(sorted(unknown))}", index=index
        )
    if "partition" in record:
        raise InvalidRecordError(
            f"record {index}: partitions are chosen by key; drop 'partition'", index=index
        )
    key, key_text = _bytes_field(record, index, "key", required=False)
    value, value_text = _bytes_field(record, index, "value", required=True)
    headers = record.get("headers")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise InvalidHeaderError(f"record {index}: headers must be an object", index=index)
    for name, header_value in headers.items():
        if not isinstance(header_value, str):
            raise InvalidHeaderError(
                f"record {index}: header {name!r} must have a string value", index=index
            )
    timestamp = record.get("timestamp_ms")
    if timestamp is not None:
        if isinstance(timestamp, float) and timestamp.is_integer():
            timestamp = int(timestamp)  # JSON does not tell 3 from 3.0
        if (
            isinstance(timestamp, bool)
            or not isinstance(timestamp, int)
            or not 0 <= timestamp <= MAX_INTEGER
        ):
            raise InvalidRecordError(
                f"record {index}: timestamp_ms must be an integer from 0 to {MAX_INTEGER}",
                index=index,
            )
        check_timestamp(timestamp, index, now_ms=now_ms)
    return NewRecord(
        value=value or b"",
        key=key,
        headers=tuple(headers.items()),
        timestamp_ms=timestamp,
        key_is_text=key_text,
        value_is_text=value_text,
    )


def render_record(record: Record, partition: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "partition": partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    if record.key is None:
        out["key"] = None
    elif record.key_is_text:
        out["key"] = record.key.decode()
    else:
        out["key_b64"] = base64.b64encode(record.key).decode()
    if record.value_is_text:
        out["value"] = record.value.decode()
    else:
        out["value_b64"] = base64.b64encode(record.value).decode()
    out["headers"] = dict(record.headers)
    return out
