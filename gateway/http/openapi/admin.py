"""The OpenAPI operations of the admin routes (tenants, keys) and of usage and bills."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.schemas import errors, json_content, links, obj

_QUOTA_VALUE = {"type": ["integer", "null"], "minimum": 0}
_QUOTAS = obj(
    {
        name: _QUOTA_VALUE
        for name in (
            "produce_bytes_per_s",
            "consume_bytes_per_s",
            "requests_per_s",
            "max_topics",
            "max_partitions",
            "max_stored_bytes",
        )
    }
)
# A key's scope as answers show it.
_SCOPE = obj(
    {
        "role": {"enum": ["full", "produce", "consume"]},
        "topics": {"type": ["array", "null"], "items": {"type": "string"}},
    }
)
_TENANT = obj(
    {
        "name": {"type": "string"},
        "created_ms": {"type": "integer"},
        "quotas": _QUOTAS,
        "quota_overrides": {"type": "object"},
        "plan": {"type": "object"},
        "version": {"type": "integer"},
        "in_use": obj(
            {
                "topics": {"type": "integer"},
                "active_partitions": {"type": "integer"},
                "stored_bytes": {"type": "integer"},
            }
        ),
    }
)
_KEY = obj(
    {
        "key_id": {"type": "string"},
        "scope": _SCOPE,
        "created_ms": {"type": "integer"},
        "last_used_ms": {"type": ["integer", "null"]},
    }
)


def admin_paths() -> dict[str, Any]:
    tenant = "/v1/admin/tenants/{tenant}"
    return {
        "/v1/admin/tenants": {
            "post": {
                "summary": "Create a tenant and its first API key, shown once (admin key)",
                "responses": {
                    "201": json_content(
                        {
                            "allOf": [
                                _TENANT,
                                obj({"key_id": {"type": "string"}, "api_key": {"type": "string"}}),
                            ]
                        },
                        "The tenant, and its first key (full scope), shown once",
                        {
                            **links(
                                "get_tenant",
                                "patch_tenant",
                                "delete_tenant",
                                "create_key",
                                "list_keys",
                                tenant="$response.body#/name",
                            ),
                            **links(
                                "revoke_key",
                                tenant="$response.body#/name",
                                key_id="$response.body#/key_id",
                            ),
                        },
                    ),
                    **errors(400, 401, 403, 409),
                },
            },
            "get": {
                "summary": "List every tenant (admin key)",
                "responses": {
                    "200": json_content(
                        obj({"tenants": {"type": "array", "items": _TENANT}}), "Tenants"
                    ),
                    **errors(401, 403),
                },
            },
        },
        tenant: {
            "get": {
                "summary": "A tenant: effective quotas, overrides, plan, and what it uses now",
                "responses": {"200": json_content(_TENANT, "The tenant"), **errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change a tenant's quotas (per name) and plan (JSON merge patch)",
                "responses": {
                    "200": json_content(_TENANT, "The tenant, changed"),
                    **errors(400, 401, 403, 404, 409),
                },
            },
            "delete": {
                "summary": "Delete a tenant with all its topics, data, groups and keys",
                "responses": {
                    "200": json_content(
                        obj(
                            {
                                "name": {"type": "string"},
                                "deleted_topics": {"type": "array", "items": {"type": "string"}},
                            }
                        ),
                        "Deleted",
                    ),
                    **errors(401, 403, 404),
                },
            },
        },
        tenant + "/keys": {
            "post": {
                "summary": "Add an API key, optionally scoped (the secret is shown once)",
                "responses": {
                    "201": json_content(
                        {"allOf": [_KEY, obj({"api_key": {"type": "string"}})]},
                        "The new key",
                        links(
                            "revoke_key",
                            tenant="$request.path.tenant",
                            key_id="$response.body#/key_id",
                        ),
                    ),
                    **errors(400, 401, 403, 404),
                },
            },
            "get": {
                "summary": "A tenant's keys: id, scope, created and last used (never the secret)",
                "responses": {
                    "200": json_content(obj({"keys": {"type": "array", "items": _KEY}}), "Keys"),
                    **errors(401, 403, 404),
                },
            },
        },
        tenant + "/keys/{key_id}": {
            "delete": {
                "summary": "Revoke a key: its next request is refused",
                "responses": {"204": {"description": "Revoked"}, **errors(401, 403, 404)},
            },
        },
    }


_DECIMAL = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
_USAGE = obj(
    {
        **{
            name: {"type": "integer", "minimum": 0}
            for name in (
                "requests",
                "records_in",
                "records_out",
                "bytes_in",
                "bytes_out",
                "stored_byte_seconds",
                "partition_seconds",
            )
        },
        "stored_byte_hours": _DECIMAL,
        "partition_hours": _DECIMAL,
    }
)
_BILL = {
    "usage": _USAGE,
    "plan": {"type": "object"},
    "line_items": {
        "type": "array",
        "items": obj(
            {
                "item": {"enum": ["data_in", "data_out", "storage", "requests", "partitions"]},
                "unit": {"type": "string"},
                "quantity": _DECIMAL,
                "unit_price_usd": _DECIMAL,
                "amount_usd": _DECIMAL,
            }
        ),
    },
    "total_usd": _DECIMAL,
}
_PERIOD = {"from": {"type": "string"}, "to": {"type": "string"}}


def usage_paths() -> dict[str, Any]:
    return {
        "/v1/usage": {
            "get": {
                "summary": "The tenant's metered usage in a period, and what it costs (full key)",
                "responses": {
                    "200": json_content(obj({**_PERIOD, **_BILL}), "Usage and bill"),
                    **errors(400, 401, 403, 429),
                },
            }
        },
        "/v1/admin/usage": {
            "get": {
                "summary": "Every tenant's usage and bill in a period (admin key)",
                "responses": {
                    "200": json_content(
                        obj(
                            {
                                **_PERIOD,
                                "tenants": {
                                    "type": "array",
                                    "items": obj(
                                        {
                                            "tenant": {"type": "string"},
                                            "deleted": {"type": "boolean"},
                                            **_BILL,
                                        }
                                    ),
                                },
                                "total_usd": _DECIMAL,
                            }
                        ),
                        "Usage and bills, by tenant name",
                    ),
                    **errors(400, 401, 403, 404),
                },
            }
        },
    }
