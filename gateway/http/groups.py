"""HTTP handlers of consumer groups: fetch (joining, continuing, long-polling), commit,
leave, seek, describe and delete. The broker's group coordinator does the work."""

from __future__ import annotations

from aiohttp import web

from gateway.broker.names import validate_topic_name
from gateway.client.wire import BATCH
from gateway.http import bodies
from gateway.http.charges import charge_consume, meter_delivered
from gateway.http.keys import BROKER, CONFIG, METRICS, tenant_of
from gateway.http.params import (
    MAX_READ_BYTES,
    MAX_READ_RECORDS,
    InvalidParameterError,
    body_int,
    is_int,
    json_object,
    json_response,
)
from gateway.http.record_json import render_record
from partitions.batch import payload_totals
from partitions.group_model import EARLIEST, LATEST

SESSION_TIMEOUT_MS = (1_000, 300_000)  # lowest, highest


def _group_name(request: web.Request) -> str:
    name = request.match_info["group"]
    validate_topic_name(name)  # the same rules as topic names
    return name


async def group_fetch(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    name = _group_name(request)
    body = await json_object(request, optional=True)
    member_id = body.get("member_id")
    if member_id is not None and not isinstance(member_id, str):
        raise InvalidParameterError("member_id is a string")
    auto_commit = body.get("auto_commit")
    if auto_commit is not None and not isinstance(auto_commit, bool):
        raise InvalidParameterError("auto_commit is true or false")
    reset = body.get("auto_offset_reset", LATEST)
    if reset not in (LATEST, EARLIEST):
        raise InvalidParameterError('auto_offset_reset is "earliest" or "latest"')
    low, high = SESSION_TIMEOUT_MS
    session_timeout_ms = (
        None
        if body.get("session_timeout_ms") is None
        else body_int(body, "session_timeout_ms", 0, low, high)
    )
    binary = bodies.wants_batches(request)
    result = await broker.groups.fetch(
        shape,
        name,
        member_id=member_id,
        max_records=body_int(body, "max_records", 500, 1, MAX_READ_RECORDS),
        max_bytes=body_int(body, "max_bytes", 1024 * 1024, 1, MAX_READ_BYTES),
        wait_ms=body_int(body, "wait_ms", 0, 0, request.app[CONFIG].max_wait_ms),
        auto_commit=auto_commit,
        session_timeout_ms=session_timeout_ms,
        auto_offset_reset=reset,
        raw=binary,
    )
    request.app[METRICS].read_records.inc(result.fetched.count)
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
        framed = bodies.encode_chunks(result.fetched.chunks)
        return await bodies.answer(request, framed, BATCH, headers=headers)
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


async def group_commit(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await json_object(request)
    member_id, generation, items = (
        body.get("member_id"),
        body.get("generation"),
        body.get("offsets"),
    )
    if not isinstance(member_id, str):
        raise InvalidParameterError("member_id is required")
    if generation is not None and not is_int(generation):
        raise InvalidParameterError("generation is an integer (from the fetch answer)")
    if not isinstance(items, list) or not items:
        raise InvalidParameterError('offsets is a list of {"partition", "offset"}')
    offsets: dict[int, int] = {}
    for item in items:
        part = item.get("partition") if isinstance(item, dict) else None
        offset = item.get("offset") if isinstance(item, dict) else None
        if not is_int(part) or not is_int(offset) or offset < 0:
            raise InvalidParameterError(f"not a partition offset: {item!r}")
        offsets[part] = offset
    committed = await broker.groups.commit(
        shape, _group_name(request), member_id=member_id, generation=generation, offsets=offsets
    )
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )


async def group_leave(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await json_object(request)
    member_id = body.get("member_id")
    if not isinstance(member_id, str):
        raise InvalidParameterError("member_id is required")
    commit = body.get("commit", True)
    if not isinstance(commit, bool):
        raise InvalidParameterError("commit is true or false")
    await broker.groups.leave(shape, _group_name(request), member_id, commit=commit)
    return web.Response(status=204)


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
    body = await json_object(request)
    committed = await broker.groups.seek(shape, _group_name(request), body.get("to"))
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )
