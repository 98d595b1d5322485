"""What the OpenAPI document's operations share: error answers, small schema builders,
the path parameters by name, and the components (schemas and the error response)."""

from __future__ import annotations

from typing import Any

from gateway.broker.names import TOPIC_NAME
from gateway.broker.topic_config import TOPIC_CONFIG_SHAPE
from gateway.console.assets import ASSETS
from gateway.http.admin import KEY_ID, TENANT_NAME_SHAPE
from gateway.http.params import PARTITION_ID
from partitions.shapes import Shape

ERROR = {"$ref": "#/components/responses/Error"}
# A text/event-stream body: events of "event:", "id:" and "data:" lines (docs/api.md); the
# schema is each event's data's.
EVENTS = {
    "schema": {
        "type": "object",
        "description": "Each event's data: one JSON object, as docs/api.md says per event",
    }
}


def errors(*statuses: int) -> dict[str, Any]:
    return {str(status): ERROR for status in statuses}


def json_content(
    schema: dict[str, Any], description: str, links: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if links:
        out["links"] = links
    return out


def links(*operations: str, **parameters: Any) -> dict[str, Any]:
    """OpenAPI links from an answer to the operations (named by their handler) that take
    what it made: each gets ``parameters`` (runtime expressions such as
    ``$request.path.topic``); a value that is a dict is a request body instead."""
    body = parameters.pop("requestBody", None)
    out: dict[str, Any] = {}
    for operation in operations:
        link: dict[str, Any] = {"operationId": operation, "parameters": dict(parameters)}
        if body is not None:
            link["requestBody"] = body
        out[operation] = link
    return out


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


PARTITION_OFFSETS = {
    "type": "array",
    "items": obj({"partition": {"type": "integer"}, "offset": {"type": "integer"}}),
}


def _path(name: str, shape: Shape) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": shape.schema()}


# Every ``{placeholder}`` of a route's path, as the document declares it: the shapes the
# server holds them to (a topic or group name that breaks them is a 400, a tenant or key
# that cannot exist a 404).
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "topic": _path("topic", TOPIC_NAME),
    "partition": _path("partition", PARTITION_ID),
    "group": _path("group", TOPIC_NAME),
    "tenant": _path("tenant", TENANT_NAME_SHAPE),
    "key_id": _path("key_id", KEY_ID),
    # A file of the web console: exactly those the server has (any other name is a 404).
    "asset": {
        "name": "asset",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(ASSETS)},
    },
}

TOPIC_CONFIG = TOPIC_CONFIG_SHAPE.schema()
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
