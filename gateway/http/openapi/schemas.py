"""What the OpenAPI document's operations share: error answers, small schema builders,
the path parameters by name, and the components (schemas and the error response)."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/responses/Error"}


def errors(*statuses: int) -> dict[str, Any]:
    return {str(status): ERROR for status in statuses}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


TOPIC_PARAM = {
    "name": "topic",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
}
PARTITION_PARAM = {
    "name": "partition",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def query(name: str, description: str, minimum: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum},
    }


GROUP_PARAM = {
    "name": "group",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
}


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


PARTITION_OFFSETS = {
    "type": "array",
    "items": obj({"partition": {"type": "integer"}, "offset": {"type": "integer"}}),
}

TENANT_PARAM = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
}
KEY_ID_PARAM = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}

# Every ``{placeholder}`` of a route's path, as the document declares it.
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "topic": TOPIC_PARAM,
    "partition": PARTITION_PARAM,
    "group": GROUP_PARAM,
    "tenant": TENANT_PARAM,
    "key_id": KEY_ID_PARAM,
}

TOPIC_CONFIG = {"$ref": "#/components/schemas/TopicConfig"}
TOPIC = {"$ref": "#/components/schemas/Topic"}

COMPONENTS: dict[str, Any] = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "responses": {
        "Error": json_content(
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
                "config": TOPIC_CONFIG,
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
}
