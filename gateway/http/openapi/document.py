"""The OpenAPI 3.1 document of API v1, served at ``GET /openapi.json``, built from the
route table: one operation per route, in the table's order.

Each operation's description lives in the module of its resource (``topics.py``,
``groups.py``, ``admin.py``); a route with none fails the build, so the document can never
leave a route out or name one the server does not serve. Path parameters come from the
route's ``{placeholders}``; every tenant route may also answer 403 (beyond the key's scope)
and 429 (a quota, or the tenant's queue full).
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


def build_document(version: str, routes: Sequence[Route]) -> dict[str, Any]:
    described = operations()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = described.get((route.method, route.path))
        if operation is None:
            raise LookupError(f"no OpenAPI description of {route.method} {route.path}")
        item = paths.setdefault(route.path, {})
        parameters = [PATH_PARAMS[name] for name in _PLACEHOLDER.findall(route.path)]
        if parameters:
            item["parameters"] = parameters
        operation = copy.deepcopy(operation)
        if route.access is Access.TENANT:
            operation["responses"].setdefault("403", ERROR)
            operation["responses"].setdefault("429", ERROR)
        item[route.method.lower()] = operation
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
