"""HTTP handlers of consumer groups: a topic's list of them, fetch (joining, continuing,
long-polling), a member's event stream, commit, leave, seek, describe and delete. The
broker's group coordinator does the work."""

from __future__ import annotations

from aiohttp import web

from gateway.broker.names import validate_topic_name
from gateway.http import bodies, events
from gateway.http.charges import charge_consume, meter_delivered
from gateway.http.inputs import JsonBody, Query, QueryParams
from gateway.http.keys import BROKER, CONFIG, METRICS, tenant_of
from gateway.http.params import MAX_BYTES, MAX_LIST_LIMIT, MAX_RECORDS, WAIT_MS, json_response
from gateway.http.record_json import render_record
from partitions.batch import payload_totals
from partitions.group_model import EARLIEST, LATEST, InvalidSeekError
from partitions.shapes import Boolean, Choice, Integer, ListOf, Nullable, Object, OneOf, Text

_MEMBER_ID = Text(
    min_length=1, max_length=256, description="The member's id, from its first fetch's answer"
)
_PARTITION_OFFSETS = ListOf(
    item=Object(
        fields={"partition": Integer(), "offset": Integer()}, required=("partition", "offset")
    ),
    min_items=1,
)
_SESSION_TIMEOUT_MS = Integer(
    low=1_000,
    high=300_000,
    description="A member that does not fetch for this long leaves (default 30000)",
)
_AUTO_OFFSET_RESET = Choice(
    values=(LATEST, EARLIEST),
    default=LATEST,
    description="Where a partition without a committed offset starts",
)
FETCH_BODY = JsonBody(
    Object(
        fields={
            "member_id": Nullable(
                shape=_MEMBER_ID, description="Left out or null: join the group as a new member"
            ),
            "max_records": MAX_RECORDS,
            "max_bytes": MAX_BYTES,
            "wait_ms": WAIT_MS,
            "auto_commit": Boolean(
                description="Commit what the last fetch delivered at the next fetch "
                "(the member's choice at join stays until it says otherwise; default true)"
            ),
            "session_timeout_ms": _SESSION_TIMEOUT_MS,
            "auto_offset_reset": _AUTO_OFFSET_RESET,
        }
    ),
    required=False,
)
STREAM_QUERY = QueryParams(
    (
        Query(
            "commit",
            Choice(values=("auto", "ack"), default="auto"),
            "auto: what was sent is committed as the stream goes on (at least once); ack: "
            "the client commits with POST .../commit and the member event's member_id",
        ),
        Query("auto_offset_reset", _AUTO_OFFSET_RESET, _AUTO_OFFSET_RESET.description or ""),
        Query("session_timeout_ms", _SESSION_TIMEOUT_MS, "The member's session timeout"),
    )
)
STREAM_HEADERS = (events.LAST_EVENT_ID_HEADER,)
COMMIT_BODY = JsonBody(
    Object(
        fields={
            "member_id": _MEMBER_ID,
            "generation": Integer(
                description="The generation the member last saw (fences nothing)"
            ),
            "offsets": _PARTITION_OFFSETS,
        },
        required=("member_id", "offsets"),
    )
)
LEAVE_BODY = JsonBody(
    Object(
        fields={
            "member_id": _MEMBER_ID,
            "commit": Boolean(default=True, description="Commit what the last fetch delivered"),
        },
        required=("member_id",),
    )
)
SEEK_BODY = JsonBody(
    Object(
        fields={
            "to": OneOf(
                shapes=(
                    Choice(values=(EARLIEST, LATEST)),
                    Object(fields={"timestamp_ms": Integer()}, required=("timestamp_ms",)),
                    Object(fields={"offsets": _PARTITION_OFFSETS}, required=("offsets",)),
                ),
                meaning='"earliest", "latest", {"timestamp_ms": T} or {"offsets": [...]}',
            )
        },
        required=("to",),
    ),
    error=InvalidSeekError,
)


def _group_name(request: web.Request) -> str:
    name = request.match_info["group"]
    validate_topic_name(name)  # the same rules as topic names
    return name


async def group_fetch(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    name = _group_name(request)
    body = await FETCH_BODY.read(request)
    binary = bodies.wants_batches(request)
    result = await broker.groups.fetch(
        shape,
        name,
        member_id=body.get("member_id"),
        max_records=body["max_records"],
        max_bytes=body["max_bytes"],
        wait_ms=min(body["wait_ms"], request.app[CONFIG].max_wait_ms),
        auto_commit=body.get("auto_commit"),
        session_timeout_ms=body.get("session_timeout_ms"),
        auto_offset_reset=body["auto_offset_reset"],
        raw=binary,
    )
    request.app[METRICS].count_read(result.fetched.count)
    if binary:
        # Charged as JSON answers are: the records' payload, not the batches' framing.
        totals = [payload_totals(c.data, c.from_offset) for c in result.fetched.chunks]
        charge_consume(request, sum(payload for _count, payload in totals))
        for delivered in totals:
            meter_delivered(request, *delivered)
        headers = {
            "Eventbus-Member-Id": result.member_id,
            "Eventbus-Generation": str(result.generation),
            "Eventbus-Assignment": ",".join(str(p) for p in result.assignment),
        }
        return await bodies.batches_answer(request, result.fetched.chunks, headers=headers)
    charge_consume(request, result.fetched.size)
    meter_delivered(request, len(result.records), result.fetched.size)
    return await bodies.json_answer(
        request,
        {
            "member_id": result.member_id,
            "generation": result.generation,
            "assignment": result.assignment,
            "records": [render_record(record, pid) for pid, record in result.records],
        },
    )


async def group_records(request: web.Request) -> web.StreamResponse:
    """One member of the group for as long as the stream lasts (see ``events.py``)."""
    bodies.accept_events(request)
    query = STREAM_QUERY.read(request)
    name = _group_name(request)
    return await events.group_stream(
        request,
        name,
        auto_commit=query["commit"] == "auto",
        auto_offset_reset=query["auto_offset_reset"],
        session_timeout_ms=query["session_timeout_ms"],
    )


async def group_commit(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await COMMIT_BODY.read(request)
    offsets = {item["partition"]: item["offset"] for item in body["offsets"]}
    committed = await broker.groups.commit(
        shape,
        _group_name(request),
        member_id=body["member_id"],
        generation=body.get("generation"),
        offsets=offsets,
    )
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )


async def group_leave(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await LEAVE_BODY.read(request)
    await broker.groups.leave(shape, _group_name(request), body["member_id"], commit=body["commit"])
    return web.Response(status=204)


LIST_QUERY = QueryParams(
    (
        Query("limit", Integer(low=1, high=MAX_LIST_LIMIT, default=100), "Groups per page"),
        Query(
            "after",
            Text(min_length=1, max_length=256),
            "List groups after this name (the last page's next_after)",
        ),
    )
)


async def list_groups(request: web.Request) -> web.Response:
    """A topic's groups by name, a page at a time (served by any process: the catalog's)."""
    tenant = tenant_of(request)
    query = LIST_QUERY.read(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    after, limit = query["after"], query["limit"]
    listed = [g for g in await broker.groups.list(shape) if after is None or g["group"] > after]
    page = listed[:limit]
    more = len(listed) > limit
    return json_response({"groups": page, "next_after": page[-1]["group"] if more else None})


async def group_describe(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    return json_response(await broker.groups.describe(shape, _group_name(request)))


async def group_delete(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    await broker.groups.delete(shape, _group_name(request))
    return web.Response(status=204)


async def group_seek(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await SEEK_BODY.read(request)
    committed = await broker.groups.seek(shape, _group_name(request), body["to"])
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )
