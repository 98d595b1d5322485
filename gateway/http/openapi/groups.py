"""The OpenAPI operations of consumer groups."""

from __future__ import annotations

from typing import Any

from gateway.http.openapi.schemas import (
    EVENTS,
    PARTITION_OFFSETS,
    errors,
    json_content,
    links,
    obj,
)

_GROUP = {"topic": "$request.path.topic", "group": "$request.path.group"}
# What a member's fetch leads to: its commit and leave, and the group's other routes.
_MEMBER = {
    **links(
        "group_commit",
        **_GROUP,
        requestBody={
            "member_id": "$response.body#/member_id",
            "offsets": [{"partition": 0, "offset": 0}],
        },
    ),
    **links("group_leave", **_GROUP, requestBody={"member_id": "$response.body#/member_id"}),
    **links("group_describe", "group_delete", "group_seek", **_GROUP),
}


def group_paths() -> dict[str, Any]:
    base = "/v1/topics/{topic}/groups/{group}"
    committed = json_content(obj({"committed": PARTITION_OFFSETS}), "The committed offsets")
    return {
        "/v1/topics/{topic}/groups": {
            "get": {
                "summary": "The topic's groups by name, with committed offsets and lag",
                "description": "As the catalog holds them: automatic commits reach it within "
                "a moment; a group's members are in its describe.",
                "responses": {
                    "200": json_content(
                        obj(
                            {
                                "groups": {
                                    "type": "array",
                                    "items": obj(
                                        {
                                            "group": {"type": "string"},
                                            "committed": PARTITION_OFFSETS,
                                            "lag": {"type": "integer"},
                                        }
                                    ),
                                },
                                "next_after": {"type": ["string", "null"]},
                            }
                        ),
                        "A page of groups",
                    ),
                    **errors(400, 401, 403, 404),
                },
            },
        },
        base + "/fetch": {
            "post": {
                "summary": "Join (without member_id) or continue, and fetch from the assignment",
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
                        _MEMBER,
                    ),
                    **errors(400, 401, 403, 404, 409),
                },
            },
        },
        base + "/records": {
            "get": {
                "summary": "Consume as one member of the group, as server-sent events",
                "description": "The stream is one member for its lifetime: event: member "
                "(member_id, generation, assignment) first and after every change, event: "
                "record (id: the cursor of everything sent), event: end at shutdown or after "
                "the server's --max-stream-ms. commit=auto commits what was sent as the "
                "stream goes on; commit=ack leaves commits to the client (POST .../commit "
                "with the member_id). Last-Event-ID commits that cursor first. docs/api.md, "
                "Server-sent events.",
                "responses": {
                    "200": {
                        "description": "A stream of events",
                        "content": {"text/event-stream": EVENTS},
                    },
                    **errors(400, 401, 403, 404, 406, 409, 429),
                },
            },
        },
        base + "/commit": {
            "post": {
                "summary": "Commit next-to-read offsets of partitions the member owns now",
                "description": "Cooperative: accepted for the partitions the member owns "
                "now, whatever generation it last saw (generation is informative). A "
                "partition it no longer owns, or a member that left or expired, answers 409 "
                "with the member's assignment and the group's generation in details.",
                "responses": {"200": committed, **errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/leave": {
            "post": {
                "summary": "Leave the group; the member's partitions go to others at once",
                "responses": {"204": {"description": "Left"}, **errors(400, 401, 403, 404, 409)},
            },
        },
        base + "/seek": {
            "post": {
                "summary": "Reset committed offsets (only while the group has no live members)",
                "description": "A group that does not exist is made, with the offsets sought "
                "and no members, so that it can be placed before its consumers start.",
                "responses": {"200": committed, **errors(400, 401, 403, 404, 409, 416)},
            },
        },
        base: {
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
