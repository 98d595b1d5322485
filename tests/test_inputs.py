"""Inputs are declared once: what the server accepts is what the document says.

Every body of the route table, and the record a produce carries, is checked two ways on
values made to sit near their edges: by the shape the handler reads it with, and by a JSON
Schema validator holding the document's schema for it. The two must agree on every value.
The record's hand-written parser (a produce pays it per record) must agree too. Then the
refusals the fuzzer found, each over HTTP: an answer of 400 with a code, never a 500 or a
quiet acceptance.
"""

from __future__ import annotations

import ast
import string
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http.inputs import JsonBody
from gateway.http.openapi.document import build_document
from gateway.http.record_json import RECORD_SHAPE, parse_record
from gateway.http.routes import ROUTES
from partitions.errors import InvalidInputError
from partitions.shapes import (
    MAX_INTEGER,
    Boolean,
    Choice,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    Number,
    Object,
    OneOf,
    Shape,
    ShapeError,
    Text,
)
from tests.conftest import ADMIN_KEY, Api

ROOT = Path(__file__).resolve().parent.parent
_ANY_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)


def near(shape: Shape) -> st.SearchStrategy[Any]:
    """Values of ``shape`` and values just beside it: bounds and one past them, whole and
    broken floats, missing and unknown fields, wrong types."""
    if isinstance(shape, Integer):
        edges = [
            shape.low - 1,
            shape.low,
            shape.low + 1,
            shape.high - 1,
            shape.high,
            shape.high + 1,
        ]
        return st.one_of(
            st.sampled_from(edges),
            st.integers(shape.low, min(shape.high, shape.low + 10_000)),
            # As JSON floats too (within 2^53, where a float holds the integer exactly).
            st.sampled_from([float(e) for e in edges if abs(e) <= 2**53] or [0.0]),
            st.just(0.5),
            _ANY_SCALAR,
        )
    if isinstance(shape, Number):
        return st.one_of(
            st.sampled_from([shape.low, shape.high, (shape.low + shape.high) / 2]),
            st.floats(shape.low - 1, shape.high + 1),
            st.integers(int(shape.low) - 1, int(shape.high) + 1),
            _ANY_SCALAR,
        )
    if isinstance(shape, Text):
        pattern = (
            st.from_regex(f"^(?:{shape.pattern})$", fullmatch=True)
            if shape.pattern
            else st.text(max_size=8)
        )
        return st.one_of(
            pattern,
            st.text(string.printable, max_size=shape.max_length or 8),
            st.sampled_from(shape.excluded) if shape.excluded else st.nothing(),
            _ANY_SCALAR,
        )
    if isinstance(shape, Choice):
        return st.one_of(st.sampled_from(shape.values), _ANY_SCALAR)
    if isinstance(shape, Boolean):
        return st.one_of(st.booleans(), _ANY_SCALAR)
    if isinstance(shape, Nullable):
        return st.one_of(st.none(), near(shape.shape))
    if isinstance(shape, OneOf):
        return st.one_of(*(near(inner) for inner in shape.shapes))
    if isinstance(shape, ListOf):
        low = max(0, shape.min_items - 1)
        high = (shape.max_items or shape.min_items + 3) + 1
        return st.one_of(
            st.lists(near(shape.item), min_size=low, max_size=min(high, 6)), _ANY_SCALAR
        )
    if isinstance(shape, MapOf):
        return st.one_of(
            st.dictionaries(st.text(max_size=3), near(shape.value), max_size=3), _ANY_SCALAR
        )
    if isinstance(shape, Object):
        fields = {name: near(inner) for name, inner in shape.fields.items()}
        fields["unknown"] = _ANY_SCALAR
        return st.one_of(
            st.fixed_dictionaries({}, optional=fields),
            st.fixed_dictionaries(
                {name: fields[name] for name in shape.required},
                optional={k: v for k, v in fields.items() if k not in shape.required},
            ),
            _ANY_SCALAR,
        )
    raise TypeError(f"no values for {shape!r}")


def accepted(shape: Shape, value: Any) -> bool:
    try:
        shape.check(value, "")
    except ShapeError:
        return False
    return True


def _bodies() -> list[tuple[str, Shape]]:
    found = [
        (f"{route.method} {route.path}", route.body.shape)
        for route in ROUTES
        if isinstance(route.body, JsonBody)
    ]
    return [*found, ("a produced record", RECORD_SHAPE)]


@pytest.mark.parametrize(("name", "shape"), _bodies(), ids=[name for name, _ in _bodies()])
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_server_and_the_document_agree_on_every_body(
    name: str, shape: Shape, data: st.DataObject
) -> None:
    validator = jsonschema_rs.validator_for(shape.schema())
    value = data.draw(near(shape))
    assert accepted(shape, value) == validator.is_valid(value), (name, value)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(record=near(RECORD_SHAPE))
def test_the_record_parser_accepts_exactly_what_the_document_says(record: Any) -> None:
    try:
        parse_record(record, 0, now_ms=MAX_INTEGER)  # no timestamp is ahead of this clock
        parsed = True
    except InvalidInputError:
        parsed = False
    assert parsed == accepted(RECORD_SHAPE, record), record


def test_the_document_takes_each_input_from_the_route_table() -> None:
    document = build_document("test", ROUTES)
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        if isinstance(route.body, JsonBody):
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema == route.body.shape.schema(), route.path
        if route.query is not None:
            assert operation["parameters"][: len(route.query.params)] == route.query.document()
    # Every object a client sends says which fields it may have, and no others.
    for item in document["paths"].values():
        for method, operation in item.items():
            if method != "parameters" and "requestBody" in operation:
                schema = operation["requestBody"]["content"].get("application/json", {})
                _every_object_is_closed(schema.get("schema", {}))


def _every_object_is_closed(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            assert schema.get("additionalProperties") is False or (
                "properties" not in schema and isinstance(schema.get("additionalProperties"), dict)
            ), schema
        for value in schema.values():
            _every_object_is_closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _every_object_is_closed(value)


def test_handlers_read_inputs_only_through_their_declarations() -> None:
    """A handler that read ``request.query`` or a JSON body by hand could accept what the
    document does not say; only the declarations read them."""
    allowed = {"inputs.py", "params.py"}
    for path in sorted((ROOT / "gateway" / "http").glob("*.py")):
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "query":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "request"), path
            if isinstance(node, ast.Name) and node.id in {"read_json", "json_object"}:
                raise AssertionError(f"{path.name} reads a JSON body by hand")


# --- what the fuzzer found, over HTTP ---------------------------------------------------------


async def _answer(api: Api, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    url = api.base + path
    async with api.session.request(method, url, headers=api.headers(), **kwargs) as answer:
        assert answer.content_type == "application/json", await answer.text()
        return answer.status, await answer.json()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code"),
    [
        # A query value given twice, or empty, or not plain digits.
        ("GET", "/v1/topics?limit=2&limit=3", {}, "invalid_parameter"),
        ("GET", "/v1/topics?limit=", {}, "invalid_parameter"),
        ("GET", "/v1/topics?limit=1_0", {}, "invalid_parameter"),
        ("GET", "/v1/topics?limit=1001", {}, "invalid_parameter"),
        ("GET", "/v1/usage?to=", {}, "invalid_parameter"),
        # Integers past 64 bits, in a path, a query and a body.
        ("GET", "/v1/topics/t/partitions/32328210056975261696/records", {}, "invalid_parameter"),
        (
            "GET",
            "/v1/topics/t/partitions/0/records?offset=99999999999999999999999",
            {},
            "invalid_offset",
        ),
        ("POST", "/v1/topics/t/partitions/36893488147419103233/split", {}, "invalid_parameter"),
        ("PUT", "/v1/topics/u", {"json": {"retention_bytes": 2**62 + 1}}, "invalid_config"),
        # A body that is not the object the document says.
        ("PUT", "/v1/topics/u", {"data": b"null"}, "invalid_config"),
        ("PUT", "/v1/topics/u", {"data": b"[]"}, "invalid_config"),
        ("PUT", "/v1/topics/u", {"json": {"config": {"retention_ms": 60000}}}, "invalid_config"),
        ("POST", "/v1/topics/t/records", {"json": {"records": [{}]}}, "invalid_record"),
        (
            "POST",
            "/v1/topics/t/records",
            {"json": {"records": [{"value": "a"}], "x": 1}},
            "missing_records",
        ),
        ("POST", "/v1/topics/t/partitions/0/split", {"json": {"at": "-5"}}, "invalid_parameter"),
        ("POST", "/v1/topics/t/merge", {"json": {"partitions": [1, 1]}}, "invalid_merge"),
        (
            "POST",
            "/v1/topics/t/groups/g/commit",
            {"json": {"member_id": "m", "offsets": []}},
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/topics/t/groups/g/fetch",
            {"json": {"session_timeout_ms": 999}},
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/topics/t/groups/g/seek",
            {"json": {"to": {"timestamp_ms": None}}},
            "invalid_seek",
        ),
    ],
)
async def test_inputs_the_document_forbids_are_refused(
    api: Api, method: str, path: str, kwargs: dict[str, Any], code: str
) -> None:
    assert (await api.call("PUT", "/v1/topics/t"))[0] in (200, 201)
    status, body = await _answer(api, method, path, **kwargs)
    assert (status, body["error"]["code"]) == (400, code), body
    assert (await api.call("GET", "/v1/topics/u"))[0] == 404  # nothing was made


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"scope": {"role": {}, "topics": []}}, "invalid_scope"),
        ({"scope": {"role": []}}, "invalid_scope"),
        ({"scope": {"x": 1}}, "invalid_scope"),
        ({"scope": "full", "f": None}, "invalid_parameter"),
    ],
)
async def test_key_scopes_of_any_shape_are_refused_cleanly(api: Api, body: Any, code: str) -> None:
    status, answer = await api.call(
        "POST", "/v1/admin/tenants/default/keys", key=ADMIN_KEY, json=body
    )
    assert (status, answer["error"]["code"]) == (400, code), answer


async def test_what_the_document_allows_is_accepted(api: Api) -> None:
    """Values at the document's edges: whole floats for integers, null where it says null."""
    assert (await api.call("PUT", "/v1/topics/t", json={"retention_bytes": 1988.0}))[0] == 201
    status, topic = await api.call("GET", "/v1/topics/t")
    assert topic["config"]["retention_bytes"] == 1988
    status, _ = await api.call("POST", "/v1/topics/t/partitions/0/split", json={"at": None})
    assert status == 200
    status, made = await api.call(
        "POST", "/v1/admin/tenants/default/keys", key=ADMIN_KEY, json={"scope": None}
    )
    assert status == 201 and made["scope"] == {"role": "full", "topics": None}
    record = {"value": "v", "key": None, "headers": None, "timestamp_ms": 5.0}
    status, _ = await api.call("POST", "/v1/topics/t/records", json={"records": [record]})
    assert status == 200
    status, fetched = await api.call(
        "POST", "/v1/topics/t/groups/g/fetch", json={"wait_ms": 3_600_000.0}
    )
    assert status == 200  # a wait longer than the server's cap is cut to it
    status, _ = await api.call(
        "PATCH", "/v1/admin/tenants/default", key=ADMIN_KEY, json={"plan": {"usd_per_gb_in": 1e-11}}
    )
    assert status == 200  # a price as a number is rounded to ten places
