"""HTTP handlers of topics: create, list, describe, change, delete, split and merge
partitions by hand, and a topic's changes as an event stream."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from gateway.broker.service import Broker
from gateway.broker.topic_config import TOPIC_CONFIG_SHAPE, InvalidConfigError, with_defaults
from gateway.broker.views import TopicView
from gateway.http import events
from gateway.http.inputs import JsonBody, Query, QueryParams
from gateway.http.keys import BROKER, PRINCIPAL, tenant_of
from gateway.http.params import MAX_LIST_LIMIT, json_response, partition_param
from partitions.catalog import LineageChange, PartitionRecord, TopicRecord
from partitions.errors import InvalidMergeError, TopicNotFoundError
from partitions.shapes import Integer, ListOf, Nullable, Object, OneOf, Text


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


LIST_QUERY = QueryParams(
    (
        Query(
            "limit",
            Integer(low=1, high=MAX_LIST_LIMIT, default=100),
            "Topics per page",
        ),
        Query(
            "after",
            Text(min_length=1, max_length=249),
            "List names after this one (the last page's next_after)",
        ),
    )
)
EVENTS_QUERY = QueryParams(
    (
        Query(
            "interval_ms",
            Integer(low=500, high=60_000, default=2000),
            "How often a throughput event comes",
        ),
    )
)
CREATE_BODY = JsonBody(TOPIC_CONFIG_SHAPE, required=False, error=InvalidConfigError, detail="key")
CHANGE_BODY = JsonBody(TOPIC_CONFIG_SHAPE, error=InvalidConfigError, detail="key")
# A hash point: a decimal string (64-bit points do not fit a JSON number everywhere) or an
# integer. One outside the partition's range answers 409.
_HASH_POINT = OneOf(
    shapes=(Text(pattern="[0-9]{1,20}"), Integer(high=2**64 - 1)),
    meaning="a hash point: a decimal string or an integer",
)
SPLIT_BODY = JsonBody(
    Object(
        fields={
            "at": Nullable(
                shape=_HASH_POINT,
                description="Where to split: a hash point strictly inside the partition's "
                "range (null or left out: its middle)",
            )
        }
    ),
    required=False,
)
MERGE_BODY = JsonBody(
    Object(
        fields={
            "partitions": ListOf(
                item=Integer(),
                min_items=2,
                max_items=2,
                unique=True,
                description="Two adjacent active partitions",
            )
        },
        required=("partitions",),
    ),
    error=InvalidMergeError,
)


async def put_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    config = await CREATE_BODY.read(request)
    view, created = await broker.put_topic(tenant, request.match_info["topic"], config)
    return json_response(await describe(broker, view), status=201 if created else 200)


async def list_topics(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    query = LIST_QUERY.read(request)
    page, more = await visible_topic_page(
        request, request.app[BROKER], tenant, after=query["after"], limit=query["limit"]
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


async def topic_events(request: web.Request) -> web.StreamResponse:
    """The topic, first and after every change, and its throughput (see ``events.py``)."""
    query = EVENTS_QUERY.read(request)
    broker = request.app[BROKER]
    return await events.topic_stream(
        request, query["interval_ms"], lambda view: describe(broker, view)
    )


async def patch_topic(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    config = await CHANGE_BODY.read(request)
    view = await broker.patch_topic(tenant, request.match_info["topic"], config)
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
    at = (await SPLIT_BODY.read(request)).get("at")
    change = await broker.split(tenant, topic, partition_id, None if at is None else int(at))
    return json_response(await _lineage_answer(broker, tenant, topic, change))


async def merge_partitions(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    topic = request.match_info["topic"]
    ids = (await MERGE_BODY.read(request))["partitions"]
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
