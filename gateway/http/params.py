"""Reading a request's parameters and JSON body, and answering JSON."""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson
from aiohttp import web

from gateway.http import bodies
from gateway.http.record_json import MalformedJsonError
from partitions.errors import InvalidInputError, InvalidOffsetError

MAX_READ_RECORDS = 10_000
MAX_READ_BYTES = 16 * 1024 * 1024
MAX_LIST_LIMIT = 1000


class InvalidParameterError(InvalidInputError):
    code = "invalid_parameter"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    return parse_json(await bodies.read_body(request))


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise MalformedJsonError("the request has no body; send JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJsonError(f"the body is not valid JSON: {exc}") from exc


def _parse_int(request: web.Request, name: str, low: int, high: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"{name} must be an integer", parameter=name) from None
    if value < low:
        error = InvalidOffsetError if name == "offset" else InvalidParameterError
        raise error(f"{name} must be at least {low}", parameter=name)
    if high is not None and value > high:
        raise InvalidParameterError(f"{name} may be at most {high}", parameter=name)
    return value


def int_param(
    request: web.Request, name: str, *, default: int, low: int, high: int | None = None
) -> int:
    value = _parse_int(request, name, low, high)
    return default if value is None else value


def optional_int_param(request: web.Request, name: str, *, low: int) -> int | None:
    return _parse_int(request, name, low, None)


def body_int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be an integer from {low} to {high}")
    return value


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if optional and not request.can_read_body:
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise MalformedJsonError("the body must be a JSON object")
    return body


def is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def partition_param(request: web.Request) -> int:
    try:
        return int(request.match_info["partition"])
    except ValueError:
        raise InvalidParameterError("the partition must be an integer") from None
