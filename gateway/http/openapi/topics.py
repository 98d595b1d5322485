"""The OpenAPI operations of the service routes, topics, records, splits and merges."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.schemas import (
    PARTITION_PARAM,
    TOPIC,
    TOPIC_CONFIG,
    TOPIC_PARAM,
    errors,
    json_content,
    query,
)


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
        "/v1/topics": {
            "get": {
                "summary": "List topics, by name, a page at a time",
                "parameters": [
                    query("limit", "Topics per page (1 to 1000, default 100)", 1),
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "List names after this one (the last page's next_after)",
                        "schema": {"type": "string"},
                    },
                ],
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
            "parameters": [TOPIC_PARAM],
            "put": {
                "summary": "Create a topic (201), or confirm one with the same config (200)",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": TOPIC_CONFIG}},
                },
                "responses": {
                    "200": json_content(TOPIC, "The topic exists with this config"),
                    "201": json_content(TOPIC, "Created"),
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
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": TOPIC_CONFIG}},
                },
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
        "/v1/topics/{topic}/records": {
            "parameters": [TOPIC_PARAM],
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
                    "200": json_content(
                        {"$ref": "#/components/schemas/ProduceResponse"},
                        "Offsets, in request order",
                    ),
                    **errors(400, 401, 403, 404, 409, 413, 415, 503),
                },
            },
        },
        "/v1/topics/{topic}/partitions/{partition}/records": {
            "parameters": [TOPIC_PARAM, PARTITION_PARAM],
            "get": {
                "summary": "Read a partition from an offset or a timestamp; long-polls",
                "parameters": [
                    query("offset", "First offset to read (default: the log start)"),
                    query("timestamp_ms", "Start at the first record at or after this"),
                    query("max_records", "At most this many (1 to 10000, default 500)", 1),
                    query("max_bytes", "At most about this many bytes (default 1 MiB)", 1),
                    query("wait_ms", "At the end, wait this long for data (default 0)"),
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
                    **errors(400, 401, 403, 404, 406, 416, 503),
                },
            },
        },
        "/v1/topics/{topic}/partitions/{partition}/split": {
            "parameters": [TOPIC_PARAM, PARTITION_PARAM],
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
                    "200": json_content(
                        {"$ref": "#/components/schemas/LineageChange"}, "Sealed and created"
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
        "/v1/topics/{topic}/merge": {
            "parameters": [TOPIC_PARAM],
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
                    "200": json_content(
                        {"$ref": "#/components/schemas/LineageChange"}, "Sealed and created"
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
    }
