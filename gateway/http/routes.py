"""The route table of API v1: every route, who may call it, the action of a key's scope it
needs, whether it answers records, and whether it is served by its state's home process.

The app's router is built from this table, the tenant gate reads it for every request, the
OpenAPI document lists exactly its routes, and the tests read it too.
"""

from __future__ import annotations

from gateway.http import admin, groups, records, service, topics, usage
from gateway.http.routing import Access, Home, Route
from gateway.tenancy.scopes import Action

_TOPIC = "/v1/topics/{topic}"
_GROUP = _TOPIC + "/groups/{group}"
_TENANT = "/v1/admin/tenants/{tenant}"

PUBLIC, METRICS, ADMIN, TENANT = Access.PUBLIC, Access.METRICS, Access.ADMIN, Access.TENANT
READ, PRODUCE, CONSUME, MANAGE = Action.READ, Action.PRODUCE, Action.CONSUME, Action.MANAGE

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", service.healthz, PUBLIC),
    Route("GET", "/metrics", service.metrics, METRICS),
    Route("GET", "/openapi.json", service.openapi, PUBLIC),
    # Tenants and their keys, quotas and plans.
    Route("POST", "/v1/admin/tenants", admin.create_tenant, ADMIN),
    Route("GET", "/v1/admin/tenants", admin.list_tenants, ADMIN),
    Route("GET", _TENANT, admin.get_tenant, ADMIN),
    Route("PATCH", _TENANT, admin.patch_tenant, ADMIN),
    Route("DELETE", _TENANT, admin.delete_tenant, ADMIN),
    Route("POST", _TENANT + "/keys", admin.create_key, ADMIN),
    Route("GET", _TENANT + "/keys", admin.list_keys, ADMIN),
    Route("DELETE", _TENANT + "/keys/{key_id}", admin.revoke_key, ADMIN),
    # Usage and bills: tenant-wide account business, for full keys.
    Route("GET", "/v1/usage", usage.tenant_usage, TENANT, MANAGE),
    Route("GET", "/v1/admin/usage", usage.all_usage, ADMIN),
    # Topics.
    Route("GET", "/v1/topics", topics.list_topics, TENANT, READ),
    Route("PUT", _TOPIC, topics.put_topic, TENANT, MANAGE),
    Route("GET", _TOPIC, topics.get_topic, TENANT, READ),
    Route("PATCH", _TOPIC, topics.patch_topic, TENANT, MANAGE),
    Route("DELETE", _TOPIC, topics.delete_topic, TENANT, MANAGE),
    Route("POST", _TOPIC + "/partitions/{partition}/split", topics.split_partition, TENANT, MANAGE),
    Route("POST", _TOPIC + "/merge", topics.merge_partitions, TENANT, MANAGE),
    # Records.
    Route("POST", _TOPIC + "/records", records.produce, TENANT, PRODUCE),
    Route(
        "GET",
        _TOPIC + "/partitions/{partition}/records",
        records.read_records,
        TENANT,
        CONSUME,
        delivers=True,
    ),
    # Consumer groups: each group's requests are served by the process that is its home.
    Route("POST", _GROUP + "/fetch", groups.group_fetch, TENANT, CONSUME, True, Home.GROUP),
    Route("POST", _GROUP + "/commit", groups.group_commit, TENANT, CONSUME, home=Home.GROUP),
    Route("POST", _GROUP + "/leave", groups.group_leave, TENANT, CONSUME, home=Home.GROUP),
    Route("POST", _GROUP + "/seek", groups.group_seek, TENANT, CONSUME, home=Home.GROUP),
    Route("GET", _GROUP, groups.group_describe, TENANT, CONSUME, home=Home.GROUP),
    Route("DELETE", _GROUP, groups.group_delete, TENANT, CONSUME, home=Home.GROUP),
)
