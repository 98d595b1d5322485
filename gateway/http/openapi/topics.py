"""The OpenAPI operations of the service routes, topics, records, splits and merges."""

from __future__ import annotations

from typing import Any

from gateway.console.assets import ASSETS
from gateway.http.openapi.schemas import (
    EVENTS,
    TOPIC,
    errors,
    json_content,
    links,
)

# What a topic's creation leads to: its routes, on the topic made and its first partition.
_MADE = {
    **links(
        "get_topic",
        "patch_topic",
        "delete_topic",
        "produce",
        "merge_partitions",
        "group_fetch",
        "group_describe",
        topic="$request.path.topic",
    ),
    **links(
        "read_records",
        "split_partition",
        topic="$request.path.topic",
        partition="$response.body#/partitions/0/id",
    ),
}


def _text(description: str, *media_types: str) -> dict[str, Any]:
    """An answer that is a file of one of these media types."""
    content = {media.partition(";")[0]: {"schema": {"type": "string"}} for media in media_types}
    return {"description": description, "content": content}


def topic_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": json_content({"type": "object"}, "The server is up")},
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
                    **errors(401, 403),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": json_content({"type": "object"}, "OpenAPI document")},
            }
        },
        "/console": {
            "get": {
                "summary": "The web console (docs/console.md): sign in with a key in the page",
                "security": [],
                "responses": {"200": _text("The console's page", "text/html")},
            }
        },
        "/console/{asset}": {
            "get": {
                "summary": "A file of the web console (a JavaScript module or its style sheet)",
                "security": [],
                "responses": {
                    "200": _text("The file", *sorted({a.media_type for a in ASSETS.values()})),
                    **errors(404),
                },
            }
        },
        "/v1/topics": {
            "get": {
                "summary": "List topics, by name, a page at a time",
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "properties": {
                                "topics": {"type": "array", "items": {"type": "object"}},
                                "next_after": {"type": ["string", "null"]},
                            },
                        },
                        "A page of topics",
                    ),
                    **errors(400, 401, 403),
                },
            }
        },
        "/v1/topics/{topic}": {
            "put": {
                "summary": "Create a topic (201), or confirm one with the same config (200)",
                "responses": {
                    "200": json_content(TOPIC, "The topic exists with this config", _MADE),
                    "201": json_content(TOPIC, "Created", _MADE),
                    **errors(400, 401, 403, 409),
                },
            },
            "get": {
                "summary": "Describe a topic: config, partitions, lineage, offsets",
                "responses": {
                    "200": json_content(TOPIC, "The topic"),
                    **errors(400, 401, 403, 404),
                },
            },
            "patch": {
                "summary": "Change some of a topic's config",
                "responses": {
                    "200": json_content(TOPIC, "The topic, changed"),
                    **errors(400, 401, 403, 404, 409),
                },
            },
            "delete": {
                "summary": "Delete a topic and all its data",
                "responses": {
                    "204": {"description": "Deleted"},
                    **errors(400, 401, 403, 404),
                },
            },
        },
        "/v1/topics/{topic}/events": {
            "get": {
                "summary": "A topic's changes and throughput, as server-sent events",
                "description": "event: topic (the body of GET /v1/topics/{topic}) first and "
                "after every split, merge, seal or config change; event: throughput every "
                "interval_ms; event: deleted; event: end at shutdown or after the server's "
                "--max-stream-ms. docs/api.md, Server-sent events.",
                "responses": {
                    "200": {
                        "description": "A stream of events",
                        "content": {"text/event-stream": EVENTS},
                    },
                    **errors(400, 401, 403, 404, 429),
                },
            },
        },
        "/v1/topics/{topic}/records": {
            "post": {
                "summary": "Produce records; answers their offsets once durable",
                "description": "Bodies may be gzip or zstd (Content-Encoding). The "
                "binary batch format is specified in docs/wire-format.md.",
                "responses": {
                    "200": json_content(
                        {"$ref": "#/components/schemas/ProduceResponse"},
                        "Offsets, in request order",
                    ),
                    **errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            },
        },
        "/v1/topics/{topic}/partitions/{partition}/records": {
            "get": {
                "summary": "Read a partition from an offset or a timestamp; long-polls",
                "description": "With Accept: text/event-stream, a stream of the records "
                "(event: record, id: the cursor after it), then of the partition's children "
                "once it is sealed and read (event: sealed); Last-Event-ID resumes there. "
                "docs/api.md, Server-sent events.",
                "responses": {
                    "200": {
                        "description": "Records, maybe none; with Accept: "
                        "application/vnd.eventbus.batch, stored batches (wire-format.md); "
                        "with Accept: text/event-stream, a stream of events",
                        "content": {
                            "text/event-stream": EVENTS,
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ReadResponse"}
                            },
                            "application/vnd.eventbus.batch": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    **errors(400, 401, 403, 404, 406, 416, 503),
                },
            },
        },
        "/v1/topics/{topic}/partitions/{partition}/split": {
            "post": {
                "summary": "Split an active partition by hand (default: at its middle)",
                "responses": {
                    "200": json_content(
                        {"$ref": "#/components/schemas/LineageChange"},
                        "Sealed and created",
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
        "/v1/topics/{topic}/merge": {
            "post": {
                "summary": "Merge two adjacent active partitions by hand",
                "responses": {
                    "200": json_content(
                        {"$ref": "#/components/schemas/LineageChange"}, "Sealed and created"
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
    }
