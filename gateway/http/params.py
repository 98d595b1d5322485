"""Reading a request's JSON body and its partition, and answering JSON."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.http import bodies
from gateway.http.record_json import MalformedJsonError
from partitions.errors import InvalidInputError
from partitions.shapes import Integer, ShapeError

MAX_LIST_LIMIT = 1000
# How much a read or a group fetch answers at most, and how long it may wait for data.
MAX_RECORDS = Integer(low=1, high=10_000, default=500)
MAX_BYTES = Integer(low=1, high=16 * 1024 * 1024, default=1024 * 1024)
WAIT_MS = Integer(
    default=0,
    description="At the end of the data, wait up to this long for more; a longer wait is "
    "cut to the server's --max-wait-ms",
)


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


# A partition's id in a path (``/partitions/{partition}``).
PARTITION_ID = Integer(description="A partition's id")


def partition_param(request: web.Request) -> int:
    try:
        return PARTITION_ID.from_text(request.match_info["partition"], "partition")
    except ShapeError:
        raise InvalidParameterError(
            f"the partition is {PARTITION_ID.says()}", parameter="partition"
        ) from None
