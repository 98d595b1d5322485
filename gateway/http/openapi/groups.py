"""The OpenAPI operations of consumer groups."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.schemas import (
    GROUP_PARAM,
    PARTITION_OFFSETS,
    TOPIC_PARAM,
    body,
    errors,
    json_content,
    obj,
)


def group_paths() -> dict[str, Any]:
    base = "/v1/topics/{topic}/groups/{group}"
    params = [TOPIC_PARAM, GROUP_PARAM]
    committed = json_content(obj({"committed": PARTITION_OFFSETS}), "The committed offsets")
    return {
        base + "/fetch": {
            "parameters": params,
            "post": {
                "summary": "Join (without member_id) or continue, and fetch from the assignment",
                "requestBody": body(
                    obj(
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
                    "200": json_content(
                        obj(
                            {
                                "member_id": {"type": "string"},
                                "generation": {"type": "integer"},
                                "assignment": {"type": "array", "items": {"type": "integer"}},
                                "records": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                        "Records of the member's partitions, maybe none",
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
        base + "/commit": {
            "parameters": params,
            "post": {
                "summary": "Commit next-to-read offsets of partitions the member owns now",
                "description": "Cooperative: accepted for the partitions the member owns "
                "now, whatever generation it last saw (generation is informative). A "
                "partition it no longer owns, or a member that left or expired, answers 409 "
                "with the member's assignment and the group's generation in details.",
                "requestBody": body(
                    obj(
                        {
                            "member_id": {"type": "string"},
                            "generation": {"type": "integer"},
                            "offsets": PARTITION_OFFSETS,
                        },
                        ["member_id", "offsets"],
                    )
                ),
                "responses": {"200": committed, **errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/leave": {
            "parameters": params,
            "post": {
                "summary": "Leave the group; the member's partitions go to others at once",
                "requestBody": body(
                    obj(
                        {
                            "member_id": {"type": "string"},
                            "commit": {"type": "boolean", "default": True},
                        },
                        ["member_id"],
                    )
                ),
                "responses": {"204": {"description": "Left"}, **errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/seek": {
            "parameters": params,
            "post": {
                "summary": "Reset committed offsets (only while the group has no live members)",
                "requestBody": body(
                    obj(
                        {
                            "to": {
                                "oneOf": [
                                    {"enum": ["earliest", "latest"]},
                                    obj({"timestamp_ms": {"type": "integer"}}),
                                    obj({"offsets": PARTITION_OFFSETS}),
                                ]
                            }
                        },
                        ["to"],
                    )
                ),
                "responses": {"200": committed, **errors(400, 401, 403, 404, 409)},
            },
        },
        base: {
            "parameters": params,
            "get": {
                "summary": "Members, assignment, committed offsets and lag",
                "responses": {
                    "200": json_content({"type": "object"}, "The group"),
                    **errors(400, 401, 403, 404),
                },
            },
            "delete": {
                "summary": "Delete a group that has no live members",
                "responses": {
                    "204": {"description": "Deleted"},
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
    }
