"""The OpenAPI 3.1 document of API v1, served at ``GET /openapi.json``, built from the
route table: one operation per route, in the table's order.

What a route accepts comes from the table itself: its path parameters, query parameters,
headers and body are the declarations its handler reads them with (``inputs.py`` and
:mod:`partitions.shapes`), so the document cannot say otherwise than the server does. What
a route answers (its summary, description and answers) lives in the module of its resource
(``topics.py``, ``groups.py``, ``admin.py``); a route with none fails the build. The error
answers every route of a kind may give are added here (see :func:`common_errors`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from gateway.http.openapi.admin import admin_paths, usage_paths
from gateway.http.openapi.groups import group_paths
from gateway.http.openapi.schemas import COMPONENTS, ERROR, PATH_PARAMS
from gateway.http.openapi.topics import topic_paths
from gateway.http.routing import Access, Route

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Every described operation, by (method, path)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for paths in (topic_paths(), group_paths(), admin_paths(), usage_paths()):
        for path, item in paths.items():
            for method, operation in item.items():
                if method != "parameters":
                    out[(method.upper(), path)] = operation
    return out


def common_errors(route: Route) -> list[int]:
    """The error statuses any route like this one may answer."""
    statuses = []
    placeholders = _PLACEHOLDER.findall(route.path)
    if placeholders or route.query is not None or route.body is not None or route.headers:
        statuses.append(400)  # an input of the wrong shape
    if route.access is not Access.PUBLIC:
        statuses += [401, 403]  # no key or a wrong one; a key of the other kind or scope
    if placeholders:
        statuses.append(404)  # the topic, partition, group, tenant or key named
    if route.delivers:
        statuses.append(406)  # an Accept naming neither JSON nor the batch format
    if route.body is not None:
        statuses += [413, 415]  # a body too large; a media type or encoding not served
    if route.access is Access.TENANT:
        statuses.append(429)  # a quota used up, or the tenant's queue full
    if route.access is not Access.PUBLIC:
        statuses.append(503)  # storage or a process unavailable, a full disk: retriable
    return statuses


def build_document(version: str, routes: Sequence[Route]) -> dict[str, Any]:
    described = operations()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = described.get((route.method, route.path))
        if operation is None:
            raise LookupError(f"no OpenAPI description of {route.method} {route.path}")
        if "parameters" in operation or "requestBody" in operation:
            raise ValueError(f"{route.method} {route.path}: inputs come from the route table")
        item = paths.setdefault(route.path, {})
        parameters = [PATH_PARAMS[name] for name in _PLACEHOLDER.findall(route.path)]
        if parameters:
            item["parameters"] = parameters
        operation = copy.deepcopy(operation)
        operation["operationId"] = route.handler.__name__
        inputs = [
            *(route.query.document() if route.query else []),
            *(h.document() for h in route.headers),
        ]
        if inputs:
            operation["parameters"] = inputs
        if route.body is not None:
            operation["requestBody"] = route.body.document()
        for status in common_errors(route):
            operation["responses"].setdefault(str(status), ERROR)
        operation["responses"] = dict(sorted(operation["responses"].items()))
        item[route.method.lower()] = operation
    _check_links(paths, {route.handler.__name__ for route in routes})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventbus",
            "version": version,
            "description": "Kafka's model over HTTPS. See docs/api.md for examples.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": COMPONENTS,
    }


def _check_links(paths: dict[str, Any], operation_ids: set[str]) -> None:
    """Every link names an operation the document has."""
    for item in paths.values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for answer in operation["responses"].values():
                for name, link in answer.get("links", {}).items():
                    if link["operationId"] not in operation_ids:
                        raise LookupError(f"link {name!r} names no operation")
