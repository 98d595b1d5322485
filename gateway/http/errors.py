"""The JSON error body, and the answer every failure gets (the front middleware of
``middlewares.py`` turns each failure into one)."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from aiohttp import web

from partitions.errors import EventBusError

log = logging.getLogger(__name__)

# aiohttp's own refusals, named in our vocabulary.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "route_not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    try:
        body = orjson.dumps({"error": error})
    except TypeError:
        # A detail JSON cannot hold as it is (an integer past 64 bits that a client sent):
        # the answer still goes out, with such details as text.
        body = orjson.dumps({"error": _as_text_where_needed(error)})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _as_text_where_needed(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _as_text_where_needed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_text_where_needed(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# What a client is told of a server-side failure; the details (paths, ids) go to the log.
_PUBLIC_MESSAGES = {
    "disk_full": "the server is out of disk space to store this; retry later",
    "storage_io_error": "the server could not store the data durably; retry",
    "partition_unavailable": "the partition is recovering from a storage failure; retry later",
    "partition_closed": "the partition is closing or moving; retry",
    "worker_unavailable": "the worker process that serves this is restarting; retry",
    "worker_lost": "the worker process serving this stopped before it answered; retry",
    "storage_backpressure": "too much data waits for upload to object storage; retry later",
    "object_store_unavailable": "the object store holding this data did not answer; retry",
    "object_store_error": "the object store holding this data refused the read; retry later",
    "catalog_unavailable": "the catalog did not answer in time; retry",
    "catalog_access_denied": "the catalog refused this server's credentials; retry later",
    "catalog_tables_missing": "the catalog's tables are missing; retry later",
    # Several nodes.
    "wal_unavailable": "the write-ahead log in object storage did not take this; retry",
    "node_fenced": "this node no longer serves this (its session ended); retry",
    "quota_home_unreachable": "the node keeping this tenant's quotas did not answer; retry",
    "peer_unauthenticated": "a node of this cluster could not be authenticated",
}
# Server-side answers whose message and details are meant for the client (no internals).
_EXPLAINED_5XX = frozenset({"offset_not_local"})


def _retry_after(exc: EventBusError) -> str:
    """Whole seconds, rounded up, from ``details.retry_after_ms`` when the error knows."""
    wait_ms = exc.details.get("retry_after_ms")
    if isinstance(wait_ms, int) and wait_ms > 0:
        return str(max(1, math.ceil(wait_ms / 1000)))
    return "1"


def error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON error body a failure answers, with a fitting status; a failure the server
    did not expect is logged with its traceback and answered 500 without its details.
    An HTTP answer below 400 (a redirect) is not a failure: it is raised again."""
    if isinstance(exc, EventBusError):
        headers = {"Retry-After": _retry_after(exc)} if exc.retriable else None
        if exc.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="eventbus"'}
        if exc.status >= 500 and exc.code not in _EXPLAINED_5XX:
            log.warning("%s %s failed: %s (%s)", request.method, request.path, exc.code, exc)
            message = _PUBLIC_MESSAGES.get(exc.code, "the server failed to handle the request")
            return error_response(exc.status, exc.code, message, None, headers)
        response = error_response(exc.status, exc.code, exc.message, exc.details or None, headers)
        if request.content.exception() is not None:
            # The body could not be read to its end (it did not decompress): the connection
            # cannot carry another request, so say that it closes.
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {}
        if exc.status == 405 and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        message = {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is larger than the server accepts",
        }.get(exc.status, exc.reason)
        return error_response(exc.status, code, message, headers=headers or None)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle the request")
