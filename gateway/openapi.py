"""The OpenAPI 3.1 document of API v1, served at ``GET /openapi.json``.

A test checks that the routes here are exactly the routes the app serves.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TOPIC_PARAM = {
    "name": "topic",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
}
_PARTITION_PARAM = {
    "name": "partition",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def _query(name: str, description: str, minimum: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum},
    }


_GROUP_PARAM = {
    "name": "group",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_PARTITION_OFFSETS = {
    "type": "array",
    "items": _object({"partition": {"type": "integer"}, "offset": {"type": "integer"}}),
}


def _group_paths() -> dict[str, Any]:
    base = "/v1/topics/{topic}/groups/{group}"
    params = [_TOPIC_PARAM, _GROUP_PARAM]
    committed = _json(_object({"committed": _PARTITION_OFFSETS}), "The committed offsets")
    return {
        base + "/fetch": {
            "parameters": params,
            "post": {
                "summary": "Join (without member_id) or continue, and fetch from the assignment",
                "requestBody": _body(
                    _object(
                        {
                            "member_id": {"type": "string"},
                            "max_records": {"type": "integer", "minimum": 1},
                            "max_bytes": {"type": "integer", "minimum": 1},
                            "wait_ms": {"type": "integer", "minimum": 0},
                            "auto_commit": {"type": "boolean", "default": True},
                            "session_timeout_ms": {"type": "integer", "default": 30000},
                            "auto_offset_reset": {"enum": ["earliest", "latest"]},
                        }
                    ),
                    required=False,
                ),
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "member_id": {"type": "string"},
                                "generation": {"type": "integer"},
                                "assignment": {"type": "array", "items": {"type": "integer"}},
                                "records": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                        "Records of the member's partitions, maybe none",
                    ),
                    **_errors(400, 401, 403, 404, 409),
                },
            },
        },
        base + "/commit": {
            "parameters": params,
            "post": {
                "summary": "Commit next-to-read offsets of partitions the member owns",
                "requestBody": _body(
                    _object(
                        {
                            "member_id": {"type": "string"},
                            "generation": {"type": "integer"},
                            "offsets": _PARTITION_OFFSETS,
                        },
                        ["member_id", "generation", "offsets"],
                    )
                ),
                "responses": {"200": committed, **_errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/leave": {
            "parameters": params,
            "post": {
                "summary": "Leave the group; the member's partitions go to others at once",
                "requestBody": _body(
                    _object(
                        {
                            "member_id": {"type": "string"},
                            "commit": {"type": "boolean", "default": True},
                        },
                        ["member_id"],
                    )
                ),
                "responses": {"204": {"description": "Left"}, **_errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/seek": {
            "parameters": params,
            "post": {
                "summary": "Reset committed offsets (only while the group has no live members)",
                "requestBody": _body(
                    _object(
                        {
                            "to": {
                                "oneOf": [
                                    {"enum": ["earliest", "latest"]},
                                    _object({"timestamp_ms": {"type": "integer"}}),
                                    _object({"offsets": _PARTITION_OFFSETS}),
                                ]
                            }
                        },
                        ["to"],
                    )
                ),
                "responses": {"200": committed, **_errors(400, 401, 403, 404, 409)},
            },
        },
        base: {
            "parameters": params,
            "get": {
                "summary": "Members, assignment, committed offsets and lag",
                "responses": {
                    "200": _json({"type": "object"}, "The group"),
                    **_errors(400, 401, 403, 404),
                },
            },
            "delete": {
                "summary": "Delete a group that has no live members",
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(400, 401, 403, 404, 409),
                },
            },
        },
    }


_TENANT_PARAM = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
}
_QUOTA_VALUE = {"type": ["integer", "null"], "minimum": 0}
_QUOTAS = _object(
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
_QUOTA_CHANGES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"oneOf": [_QUOTA_VALUE, {"const": "default"}]} for name in _QUOTAS["properties"]
    },
}
_SCOPE = {
    "oneOf": [
        {"enum": ["full", "produce", "consume"]},
        _object(
            {
                "role": {"enum": ["full", "produce", "consume"]},
                "topics": {"type": ["array", "null"], "items": {"type": "string"}},
            }
        ),
    ]
}
_TENANT = _object(
    {
        "name": {"type": "string"},
        "created_ms": {"type": "integer"},
        "quotas": _QUOTAS,
        "quota_overrides": {"type": "object"},
        "plan": {"type": "object"},
        "version": {"type": "integer"},
        "in_use": _object(
            {
                "topics": {"type": "integer"},
                "active_partitions": {"type": "integer"},
                "stored_bytes": {"type": "integer"},
            }
        ),
    }
)
_KEY = _object(
    {
        "key_id": {"type": "string"},
        "scope": _SCOPE,
        "created_ms": {"type": "integer"},
        "last_used_ms": {"type": ["integer", "null"]},
    }
)


def _admin_paths() -> dict[str, Any]:
    tenant = "/v1/admin/tenants/{tenant}"
    return {
        "/v1/admin/tenants": {
            "post": {
                "summary": "Create a tenant and its first API key, shown once (admin key)",
                "requestBody": _body(
                    _object(
                        {
                            "name": _TENANT_PARAM["schema"],
                            "quotas": _QUOTA_CHANGES,
                            "plan": {"type": "object"},
                        },
                        ["name"],
                    )
                ),
                "responses": {
                    "201": _json(
                        {
                            "allOf": [
                                _TENANT,
                                _object(
                                    {"key_id": {"type": "string"}, "api_key": {"type": "string"}}
                                ),
                            ]
                        },
                        "The tenant, and its first key (full scope), shown once",
                    ),
                    **_errors(400, 401, 403, 409),
                },
            },
            "get": {
                "summary": "List every tenant (admin key)",
                "responses": {
                    "200": _json(
                        _object({"tenants": {"type": "array", "items": _TENANT}}), "Tenants"
                    ),
                    **_errors(401, 403),
                },
            },
        },
        tenant: {
            "parameters": [_TENANT_PARAM],
            "get": {
                "summary": "A tenant: effective quotas, overrides, plan, and what it uses now",
                "responses": {"200": _json(_TENANT, "The tenant"), **_errors(401, 403, 404)},
            },
            "patch": {
                "summary": "Change a tenant's quotas (per name) and plan (JSON merge patch)",
                "requestBody": _body(
                    _object({"quotas": _QUOTA_CHANGES, "plan": {"type": "object"}})
                ),
                "responses": {
                    "200": _json(_TENANT, "The tenant, changed"),
                    **_errors(400, 401, 403, 404, 409),
                },
            },
            "delete": {
                "summary": "Delete a tenant with all its topics, data, groups and keys",
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "name": {"type": "string"},
                                "deleted_topics": {"type": "array", "items": {"type": "string"}},
                            }
                        ),
                        "Deleted",
                    ),
                    **_errors(401, 403, 404),
                },
            },
        },
        tenant + "/keys": {
            "parameters": [_TENANT_PARAM],
            "post": {
                "summary": "Add an API key, optionally scoped (the secret is shown once)",
                "requestBody": _body(_object({"scope": _SCOPE}), required=False),
                "responses": {
                    "201": _json(
                        {"allOf": [_KEY, _object({"api_key": {"type": "string"}})]}, "The new key"
                    ),
                    **_errors(400, 401, 403, 404),
                },
            },
            "get": {
                "summary": "A tenant's keys: id, scope, created and last used (never the secret)",
                "responses": {
                    "200": _json(_object({"keys": {"type": "array", "items": _KEY}}), "Keys"),
                    **_errors(401, 403, 404),
                },
            },
        },
        tenant + "/keys/{key_id}": {
            "parameters": [
                _TENANT_PARAM,
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "delete": {
                "summary": "Revoke a key: its next request is refused",
                "responses": {"204": {"description": "Revoked"}, **_errors(401, 403, 404)},
            },
        },
    }


_HOUR_PARAMS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "format": "date-time", "example": "2026-01-05T13:00:00Z"},
    }
    for name, description in (
        ("from", "Start of the period: RFC 3339, UTC, a whole hour (default: the month's start)"),
        ("to", "End of the period, excluded: RFC 3339, UTC, a whole hour (default: next hour)"),
    )
]
_DECIMAL = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
_USAGE = _object(
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
        "items": _object(
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


def _usage_paths() -> dict[str, Any]:
    return {
        "/v1/usage": {
            "get": {
                "summary": "The tenant's metered usage in a period, and what it costs (full key)",
                "parameters": _HOUR_PARAMS,
                "responses": {
                    "200": _json(_object({**_PERIOD, **_BILL}), "Usage and bill"),
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/v1/admin/usage": {
            "get": {
                "summary": "Every tenant's usage and bill in a period (admin key)",
                "parameters": [
                    *_HOUR_PARAMS,
                    {
                        "name": "tenant",
                        "in": "query",
                        "required": False,
                        "description": "Only this tenant",
                        "schema": _TENANT_PARAM["schema"],
                    },
                ],
                "responses": {
                    "200": _json(
                        _object(
                            {
                                **_PERIOD,
                                "tenants": {
                                    "type": "array",
                                    "items": _object(
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
                    **_errors(400, 401, 403, 404),
                },
            }
        },
    }


def build_document(version: str) -> dict[str, Any]:
    topic_config = {"$ref": "#/components/schemas/TopicConfig"}
    topic = {"$ref": "#/components/schemas/Topic"}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "eventbus",
            "version": version,
            "description": "Kafka's model over HTTPS. See docs/api.md for examples.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "The server is up")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (admin key unless --metrics-public)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 403),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI document")},
                }
            },
            **_admin_paths(),
            **_usage_paths(),
            "/v1/topics": {
                "get": {
                    "summary": "List topics, by name, a page at a time",
                    "parameters": [
                        _query("limit", "Topics per page (1 to 1000, default 100)", 1),
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "List names after this one (the last page's next_after)",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "topics": {"type": "array", "items": {"type": "object"}},
                                    "next_after": {"type": ["string", "null"]},
                                },
                            },
                            "A page of topics",
                        ),
                        **_errors(400, 401, 403),
                    },
                }
            },
            "/v1/topics/{topic}": {
                "parameters": [_TOPIC_PARAM],
                "put": {
                    "summary": "Create a topic (201), or confirm one with the same config (200)",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": topic_config}},
                    },
                    "responses": {
                        "200": _json(topic, "The topic exists with this config"),
                        "201": _json(topic, "Created"),
                        **_errors(400, 401, 403, 409),
                    },
                },
                "get": {
                    "summary": "Describe a topic: config, partitions, lineage, offsets",
                    "responses": {"200": _json(topic, "The topic"), **_errors(400, 401, 403, 404)},
                },
                "patch": {
                    "summary": "Change some of a topic's config",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": topic_config}},
                    },
                    "responses": {
                        "200": _json(topic, "The topic, changed"),
                        **_errors(400, 401, 403, 404, 409),
                    },
                },
                "delete": {
                    "summary": "Delete a topic and all its data",
                    "responses": {
                        "204": {"description": "Deleted"},
                        **_errors(400, 401, 403, 404),
                    },
                },
            },
            "/v1/topics/{topic}/records": {
                "parameters": [_TOPIC_PARAM],
                "post": {
                    "summary": "Produce records; answers their offsets once durable",
                    "description": "Bodies may be gzip or zstd (Content-Encoding). The "
                    "binary batch format is specified in docs/wire-format.md.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "A retry with the same key and body within ten "
                            "minutes answers the first answer and appends nothing",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ProduceRequest"}
                            },
                            "application/x-ndjson": {
                                "schema": {"type": "string", "description": "a record per line"}
                            },
                            "application/vnd.eventbus.batch": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/ProduceResponse"},
                            "Offsets, in request order",
                        ),
                        **_errors(400, 401, 403, 404, 409, 413, 415, 503),
                    },
                },
            },
            "/v1/topics/{topic}/partitions/{partition}/records": {
                "parameters": [_TOPIC_PARAM, _PARTITION_PARAM],
                "get": {
                    "summary": "Read a partition from an offset or a timestamp; long-polls",
                    "parameters": [
                        _query("offset", "First offset to read (default: the log start)"),
                        _query("timestamp_ms", "Start at the first record at or after this"),
                        _query("max_records", "At most this many (1 to 10000, default 500)", 1),
                        _query("max_bytes", "At most about this many bytes (default 1 MiB)", 1),
                        _query("wait_ms", "At the end, wait this long for data (default 0)"),
                    ],
                    "responses": {
                        "200": {
                            "description": "Records, maybe none; with Accept: "
                            "application/vnd.eventbus.batch, stored batches (wire-format.md)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ReadResponse"}
                                },
                                "application/vnd.eventbus.batch": {
                                    "schema": {"type": "string", "format": "binary"}
                                },
                            },
                        },
                        **_errors(400, 401, 403, 404, 406, 416, 503),
                    },
                },
            },
            "/v1/topics/{topic}/partitions/{partition}/split": {
                "parameters": [_TOPIC_PARAM, _PARTITION_PARAM],
                "post": {
                    "summary": "Split an active partition by hand (default: at its middle)",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "at": {
                                            "type": ["string", "integer"],
                                            "description": "Hash point strictly inside the range",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/LineageChange"}, "Sealed and created"
                        ),
                        **_errors(400, 401, 403, 404, 409),
                    },
                },
            },
            "/v1/topics/{topic}/merge": {
                "parameters": [_TOPIC_PARAM],
                "post": {
                    "summary": "Merge two adjacent active partitions by hand",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["partitions"],
                                    "properties": {
                                        "partitions": {
                                            "type": "array",
                                            "items": {"type": "integer"},
                                            "minItems": 2,
                                            "maxItems": 2,
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/LineageChange"}, "Sealed and created"
                        ),
                        **_errors(400, 401, 403, 404, 409),
                    },
                },
            },
            **_group_paths(),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": _json(
                    {
                        "type": "object",
                        "properties": {
                            "error": {
                                "type": "object",
                                "required": ["code", "message"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                    "details": {"type": "object"},
                                },
                            }
                        },
                    },
                    "An error",
                )
            },
            "schemas": {
                "TopicConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: {"type": ["integer", "null"], "minimum": 1}
                        for name in (
                            "retention_ms",
                            "retention_bytes",
                            "local_retention_ms",
                            "local_retention_bytes",
                            "segment_bytes",
                            "segment_ms",
                            "max_record_bytes",
                        )
                    }
                    | {"autoscale": {"$ref": "#/components/schemas/AutoscaleConfig"}},
                },
                "AutoscaleConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": "See docs/autoscaling.md; knobs left out keep their values",
                    "properties": {
                        "enabled": {"type": "boolean", "default": True},
                        "split_bytes_per_s": {"type": "integer", "minimum": 1},
                        "split_records_per_s": {"type": "integer", "minimum": 1},
                        "window_s": {"type": "integer", "minimum": 1, "maximum": 3600},
                        "merge_ratio": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "exclusiveMaximum": 1,
                        },
                        "merge_window_s": {"type": "integer", "minimum": 1},
                        "cooldown_s": {"type": "integer", "minimum": 0},
                        "min_partitions": {"type": "integer", "minimum": 1, "maximum": 1024},
                        "max_partitions": {"type": "integer", "minimum": 1, "maximum": 1024},
                    },
                },
                "AutoscaleStatus": {
                    "type": "object",
                    "description": "Measurements, hot keys, held-back changes and recent "
                    "automatic changes (docs/autoscaling.md)",
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "evaluated_ms": {"type": ["integer", "null"]},
                        "throughput": {"type": "array", "items": {"type": "object"}},
                        "hot_keys": {"type": "array", "items": {"type": "object"}},
                        "blocked": {"type": "array", "items": {"type": "object"}},
                        "recent_changes": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Topic": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "config": topic_config,
                        "created_ms": {"type": "integer"},
                        "partitions": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Partition"},
                        },
                        "autoscale": {"$ref": "#/components/schemas/AutoscaleStatus"},
                    },
                },
                "Partition": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "state": {"enum": ["active", "sealed"]},
                        "hash_range": {
                            "type": "object",
                            "properties": {
                                "start": {"type": "string"},
                                "end": {"type": "string"},
                            },
                        },
                        "parents": {"type": "array", "items": {"type": "integer"}},
                        "children": {"type": "array", "items": {"type": "integer"}},
                        "start_offset": {"type": "integer"},
                        "end_offset": {"type": "integer"},
                        "local_start_offset": {"type": "integer"},
                        "local_bytes": {"type": "integer"},
                        "remote_start_offset": {"type": ["integer", "null"]},
                        "remote_end_offset": {"type": ["integer", "null"]},
                        "remote_bytes": {"type": "integer"},
                        "segments_pending_upload": {"type": "integer"},
                        "worker": {
                            "type": "integer",
                            "description": "The worker process that owns the partition "
                            "(only with several: eventbus serve --workers N)",
                        },
                    },
                },
                "LineageChange": {
                    "type": "object",
                    "properties": {
                        "sealed": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Partition"},
                        },
                        "created": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Partition"},
                        },
                    },
                },
                "NewRecord": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "key": {"type": ["string", "null"]},
                        "key_b64": {"type": "string", "contentEncoding": "base64"},
                        "value": {"type": "string"},
                        "value_b64": {"type": "string", "contentEncoding": "base64"},
                        "headers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "timestamp_ms": {"type": "integer", "minimum": 0},
                    },
                },
                "ProduceRequest": {
                    "type": "object",
                    "required": ["records"],
                    "properties": {
                        "records": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"$ref": "#/components/schemas/NewRecord"},
                        }
                    },
                },
                "ProduceResponse": {
                    "type": "object",
                    "properties": {
                        "offsets": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "partition": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                },
                            },
                        }
                    },
                },
                "ReadResponse": {
                    "type": "object",
                    "properties": {
                        "records": {"type": "array", "items": {"type": "object"}},
                        "next_offset": {"type": "integer"},
                        "high_watermark": {"type": "integer"},
                        "start_offset": {"type": "integer"},
                        "sealed": {"type": "boolean"},
                        "children": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            },
        },
    }
    _add_tenant_refusals(document["paths"])
    return document


def _add_tenant_refusals(paths: dict[str, Any]) -> None:
    """Every tenant route may answer 403 (beyond the key's scope) and 429 (a quota, or the
    tenant's queue full)."""
    for path, item in paths.items():
        if not path.startswith("/v1/topics"):
            continue
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("403", _ERROR)
                operation["responses"].setdefault("429", _ERROR)
