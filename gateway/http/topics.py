"""HTTP handlers of topics: create, list, describe, change, delete, and split and merge
partitions by hand."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from gateway.broker.service import Broker
from gateway.broker.topic_config import with_defaults
from gateway.broker.views import TopicView
from gateway.http.keys import BROKER, PRINCIPAL, tenant_of
from gateway.http.params import (
    MAX_LIST_LIMIT,
    InvalidParameterError,
    int_param,
    json_response,
    partition_param,
    read_json,
)
from partitions.catalog import LineageChange, PartitionRecord, TopicRecord
from partitions.errors import TopicNotFoundError


def partition_json(
    part: PartitionRecord, start: int, end: int, storage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": part.partition_id,
        "state": part.state.value,
        "hash_range": part.hash_range.to_json(),
        "parents": list(part.parents),
        "children": list(part.children),
        "start_offset": start,
        "end_offset": part.end_offset if part.end_offset is not None else end,
        **(storage or {}),
    }


async def describe(broker: Broker, view: TopicView) -> dict[str, Any]:
    offsets = await broker.partition_offsets(view)
    storage = await broker.partition_storage(view)
    partitions = [
        partition_json(part, *offsets[pid], storage.get(pid))
        for pid, part in sorted(view.partitions.items())
    ]
    return {
        "name": view.record.name,
        "config": with_defaults(view.record.config),
        "created_ms": view.record.created_ms,
        "partitions": partitions,
        "autoscale": await broker.autoscale_status(view),
    }


async def put_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    body = await read_json(request) if request.can_read_body else {}
    if isinstance(body, dict) and "config" in body:
        body = body["config"]
    view, created = await broker.put_topic(tenant, request.match_info["topic"], body or {})
    return json_response(await describe(broker, view), status=201 if created else 200)


async def list_topics(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    limit = int_param(request, "limit", default=100, low=1, high=MAX_LIST_LIMIT)
    after = request.query.get("after") or None
    page, more = await visible_topic_page(
        request, request.app[BROKER], tenant, after=after, limit=limit
    )
    return json_response(
        {
            "topics": [{"name": t.name, "created_ms": t.created_ms} for t in page],
            "next_after": page[-1].name if more else None,
        }
    )


async def get_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    view = await broker.view(tenant, request.match_info["topic"])
    return json_response(await describe(broker, view))


async def patch_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    body = await read_json(request)
    if isinstance(body, dict) and "config" in body:
        body = body["config"]
    view = await broker.patch_topic(tenant, request.match_info["topic"], body)
    return json_response(await describe(broker, view))


async def delete_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    await request.app[BROKER].delete_topic(tenant, request.match_info["topic"])
    return web.Response(status=204)


async def _lineage_answer(broker: Broker, tenant: str, topic: str, change: LineageChange) -> Any:
    view = await broker.view(tenant, topic)
    offsets = await broker.partition_offsets(view)
    return {
        "sealed": [partition_json(p, *offsets[p.partition_id]) for p in change.sealed],
        "created": [partition_json(p, *offsets[p.partition_id]) for p in change.created],
    }


async def split_partition(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    topic = request.match_info["topic"]
    partition_id = partition_param(request)
    body = await read_json(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise InvalidParameterError('the body is {"at": "<hash point>"} or empty')
    at: int | None = None
    if body.get("at") is not None:
        raw = body["at"]
        try:
            at = int(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
        except ValueError:
            at = None
        if at is None:
            raise InvalidParameterError('"at" is a hash point: a decimal string or an integer')
    change = await broker.split(tenant, topic, partition_id, at)
    return json_response(await _lineage_answer(broker, tenant, topic, change))


async def merge_partitions(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    topic = request.match_info["topic"]
    body = await read_json(request)
    ids = body.get("partitions") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise InvalidParameterError('the body is {"partitions": [<id>, <id>]}')
    change = await broker.merge(tenant, topic, ids)
    return json_response(await _lineage_answer(broker, tenant, topic, change))


async def visible_topic_page(
    request: web.Request, broker: Broker, tenant: str, *, after: str | None, limit: int
) -> tuple[list[TopicRecord], bool]:
    """One page of the topics the key may see, in name order after ``after``, and whether
    another page follows.

    A key limited to some topics pages over its own names only (at most
    ``MAX_SCOPE_TOPICS`` lookups): filtering a page of all the tenant's topics would leave
    pages short or empty and, worse, start the next page after a topic the key may not see.
    """
    allowed = request[PRINCIPAL].scope.topics
    if allowed is None:
        # One more than asked tells whether another page exists.
        topics = await broker.list_topics(tenant, after=after, limit=limit + 1)
        return topics[:limit], len(topics) > limit
    found: list[TopicRecord] = []
    for name in sorted(n for n in allowed if after is None or n > after):
        if len(found) > limit:
            break
        with contextlib.suppress(TopicNotFoundError):
            found.append(await broker.catalog.get_topic(tenant, name))
    return found[:limit], len(found) > limit
