"""The route table of API v1: every route, who may call it, the action of a key's scope it
needs, whether it answers records, and whether it is served by its state's home process.

The app's router is built from this table, the front door reads it for every request, the
OpenAPI document lists exactly its routes, and the tests read it too.
"""

from __future__ import annotations

from typing import Any

from gateway.http import admin, console, groups, records, service, topics, usage
from gateway.http.routing import Access, Handler, Home, Route
from gateway.tenancy.scopes import Action

_TOPIC = "/v1/topics/{topic}"
_GROUP = _TOPIC + "/groups/{group}"
_TENANT = "/v1/admin/tenants/{tenant}"

PUBLIC, METRICS, ADMIN, TENANT = Access.PUBLIC, Access.METRICS, Access.ADMIN, Access.TENANT
READ, PRODUCE, CONSUME, MANAGE = Action.READ, Action.PRODUCE, Action.CONSUME, Action.MANAGE


def _group(method: str, suffix: str, handler: Handler, **more: Any) -> Route:
    """A route of a consumer group: a tenant's, for consuming, served by the group's home."""
    return Route(method, _GROUP + suffix, handler, TENANT, CONSUME, home=Home.GROUP, **more)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", service.healthz, PUBLIC),
    Route("GET", "/metrics", service.metrics, METRICS),
    Route("GET", "/openapi.json", service.openapi, PUBLIC),
    # The web console's files: the page holds no data, and fetches all with the user's key.
    Route("GET", "/console", console.console_page, PUBLIC),
    Route("GET", "/console/{asset}", console.console_asset, PUBLIC),
    # Tenants and their keys, quotas and plans.
    Route("POST", "/v1/admin/tenants", admin.create_tenant, ADMIN, body=admin.CREATE_TENANT_BODY),
    Route("GET", "/v1/admin/tenants", admin.list_tenants, ADMIN),
    Route("GET", _TENANT, admin.get_tenant, ADMIN),
    Route("PATCH", _TENANT, admin.patch_tenant, ADMIN, body=admin.PATCH_TENANT_BODY),
    Route("DELETE", _TENANT, admin.delete_tenant, ADMIN),
    Route("POST", _TENANT + "/keys", admin.create_key, ADMIN, body=admin.CREATE_KEY_BODY),
    Route("GET", _TENANT + "/keys", admin.list_keys, ADMIN),
    Route("DELETE", _TENANT + "/keys/{key_id}", admin.revoke_key, ADMIN),
    # Usage and bills: tenant-wide account business, for full keys.
    Route("GET", "/v1/usage", usage.tenant_usage, TENANT, MANAGE, query=usage.TENANT_USAGE_QUERY),
    Route("GET", "/v1/admin/usage", usage.all_usage, ADMIN, query=usage.ALL_USAGE_QUERY),
    # Topics.
    Route("GET", "/v1/topics", topics.list_topics, TENANT, READ, query=topics.LIST_QUERY),
    Route("PUT", _TOPIC, topics.put_topic, TENANT, MANAGE, body=topics.CREATE_BODY),
    Route("GET", _TOPIC, topics.get_topic, TENANT, READ),
    Route("PATCH", _TOPIC, topics.patch_topic, TENANT, MANAGE, body=topics.CHANGE_BODY),
    Route("DELETE", _TOPIC, topics.delete_topic, TENANT, MANAGE),
    Route("GET", _TOPIC + "/events", topics.topic_events, TENANT, READ, query=topics.EVENTS_QUERY),
    Route(
        "POST",
        _TOPIC + "/partitions/{partition}/split",
        topics.split_partition,
        TENANT,
        MANAGE,
        body=topics.SPLIT_BODY,
    ),
    Route(
        "POST", _TOPIC + "/merge", topics.merge_partitions, TENANT, MANAGE, body=topics.MERGE_BODY
    ),
    # Records.
    Route(
        "POST",
        _TOPIC + "/records",
        records.produce,
        TENANT,
        PRODUCE,
        body=records.PRODUCE_BODY,
        headers=records.PRODUCE_HEADERS,
    ),
    Route(
        "GET",
        _TOPIC + "/partitions/{partition}/records",
        records.read_records,
        TENANT,
        CONSUME,
        delivers=True,
        query=records.READ_QUERY,
        headers=records.READ_HEADERS,
    ),
    # Consumer groups: a topic's list is the catalog's; each group's requests are served by
    # the process that is its home.
    Route(
        "GET",
        _TOPIC + "/groups",
        groups.list_groups,
        TENANT,
        CONSUME,
        query=groups.LIST_QUERY,
    ),
    _group("POST", "/fetch", groups.group_fetch, delivers=True, body=groups.FETCH_BODY),
    _group(
        "GET",
        "/records",
        groups.group_records,
        delivers=True,
        query=groups.STREAM_QUERY,
        headers=groups.STREAM_HEADERS,
    ),
    _group("POST", "/commit", groups.group_commit, body=groups.COMMIT_BODY),
    _group("POST", "/leave", groups.group_leave, body=groups.LEAVE_BODY),
    _group("POST", "/seek", groups.group_seek, body=groups.SEEK_BODY),
    _group("GET", "", groups.group_describe),
    _group("DELETE", "", groups.group_delete),
)

# The router tries the routes under one path prefix in the order they were added, matching
# the path against each one's pattern: the routes of records, nearly every request, go first.
BUSIEST = (records.produce, records.read_records, groups.group_fetch)


def router_order(routes: tuple[Route, ...] = ROUTES) -> list[Route]:
    """The routes in the order they are added to the router (the table's, busiest first)."""
    return sorted(routes, key=lambda route: route.handler not in BUSIEST)
