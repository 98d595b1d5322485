"""HTTP handlers of API v1. They parse and answer; the broker does the work."""

from __future__ import annotations

from functools import partial
from typing import Any, TypeGuard

import orjson
from aiohttp import web

from gateway import wire
from gateway.auth import require_tenant
from gateway.autoscaling import autoscale_json
from gateway.broker import Broker, IdempotentRequest, TopicView, validate_topic_name
from gateway.config import with_defaults
from gateway.keys import BROKER, CONFIG, METRICS, OPENAPI
from gateway.metering import meter_delivered, meter_produced
from gateway.metrics import Metrics
from gateway.records import MalformedJsonError, parse_ndjson, parse_records, render_record
from gateway.tenancy import admit_produce, charge_consume, settle_produce, visible_topic_page
from partitions.batch import payload_totals, trim_batches
from partitions.catalog import LineageChange, PartitionRecord
from partitions.errors import InvalidInputError, InvalidOffsetError
from partitions.groups import EARLIEST, LATEST, RawChunk
from partitions.idempotency import check_key as check_idempotency_key
from partitions.idempotency import request_hash
from partitions.log.values import BatchRead

MAX_READ_RECORDS = 10_000
MAX_READ_BYTES = 16 * 1024 * 1024
MAX_LIST_LIMIT = 1000


class InvalidParameterError(InvalidInputError):
    code = "invalid_parameter"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    return parse_json(await wire.read_body(request))


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise MalformedJsonError("the request has no body; send JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJsonError(f"the body is not valid JSON: {exc}") from exc


def _parse_int(request: web.Request, name: str, low: int, high: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"{name} must be an integer", parameter=name) from None
    if value < low:
        error = InvalidOffsetError if name == "offset" else InvalidParameterError
        raise error(f"{name} must be at least {low}", parameter=name)
    if high is not None and value > high:
        raise InvalidParameterError(f"{name} may be at most {high}", parameter=name)
    return value


def int_param(
    request: web.Request, name: str, *, default: int, low: int, high: int | None = None
) -> int:
    value = _parse_int(request, name, low, high)
    return default if value is None else value


def optional_int_param(request: web.Request, name: str, *, low: int) -> int | None:
    return _parse_int(request, name, low, None)


def _broker(request: web.Request) -> Broker:
    return request.app[BROKER]


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
        "autoscale": (
            autoscale_json(broker, view)
            if broker.remote_autoscale is None
            else await broker.remote_autoscale(view)
        ),
    }


# --- service routes --------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    broker = request.app.get(BROKER)
    tiered = broker.tiered if broker is not None else None
    if tiered is not None and tiered.failed is not None:
        # A tiering loop died: nothing is uploaded or cleaned any more; restart the server.
        return json_response({"status": "unhealthy", "reason": "tiered storage stopped"}, 503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    registry: Metrics = request.app[METRICS]
    body, content_type = await registry.render_all()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


# --- topics ------------------------------------------------------------------------------------


async def put_topic(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    body = await read_json(request) if request.can_read_body else {}
    if isinstance(body, dict) and "config" in body:
        body = body["config"]
    view, created = await broker.put_topic(tenant, request.match_info["topic"], body or {})
    return json_response(await describe(broker, view), status=201 if created else 200)


async def list_topics(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    limit = int_param(request, "limit", default=100, low=1, high=MAX_LIST_LIMIT)
    after = request.query.get("after") or None
    page, more = await visible_topic_page(
        request, _broker(request), tenant, after=after, limit=limit
    )
    return json_response(
        {
            "topics": [{"name": t.name, "created_ms": t.created_ms} for t in page],
            "next_after": page[-1].name if more else None,
        }
    )


async def get_topic(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    view = await broker.view(tenant, request.match_info["topic"])
    return json_response(await describe(broker, view))


async def patch_topic(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    body = await read_json(request)
    if isinstance(body, dict) and "config" in body:
        body = body["config"]
    view = await broker.patch_topic(tenant, request.match_info["topic"], body)
    return json_response(await describe(broker, view))


async def delete_topic(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    await _broker(request).delete_topic(tenant, request.match_info["topic"])
    return web.Response(status=204)


# --- records -----------------------------------------------------------------------------------


async def produce(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    topic = request.match_info["topic"]
    await broker.view(tenant, topic)  # 404 for an unknown topic before reading the body
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    media = wire.produce_media_type(request)
    raw = await wire.read_body(request)
    now = broker.now_ms()
    if media == wire.BATCH:
        records = wire.parse_batches(raw, now_ms=now)
    elif media == wire.NDJSON:
        records = parse_ndjson(raw, now_ms=now)
    else:
        records = parse_records(parse_json(raw), now_ms=now)
    idempotency = None
    if idempotency_key is not None:
        idempotency = IdempotentRequest(idempotency_key, request_hash(media, raw))
    appended: list[int] = []
    try:
        placed = await broker.produce(
            tenant,
            topic,
            records,
            idempotency=idempotency,
            appended=appended,
            admit=partial(admit_produce, request, records),
        )
    finally:
        meter_produced(request, records, appended)
        settle_produce(request, records, appended)
    registry: Metrics = request.app[METRICS]
    registry.produced_records.inc(len(records))
    registry.produced_bytes.inc(sum(len(r.value) + len(r.key or b"") for r in records))
    return await wire.json_answer(
        request, {"offsets": [{"partition": p, "offset": o} for p, o in placed]}
    )


async def read_records(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    try:
        partition_id = int(request.match_info["partition"])
    except ValueError:
        raise InvalidParameterError("the partition must be an integer") from None
    binary = wire.wants_batches(request)
    max_wait = request.app[CONFIG].max_wait_ms
    offset = optional_int_param(request, "offset", low=0)
    timestamp_ms = optional_int_param(request, "timestamp_ms", low=0)
    if offset is not None and timestamp_ms is not None:
        raise InvalidParameterError("give offset or timestamp_ms, not both")
    max_records = int_param(request, "max_records", default=500, low=1, high=MAX_READ_RECORDS)
    max_bytes = int_param(request, "max_bytes", default=1024 * 1024, low=1, high=MAX_READ_BYTES)
    wait_ms = int_param(request, "wait_ms", default=0, low=0, high=max_wait)
    answer = await broker.read(
        tenant,
        request.match_info["topic"],
        partition_id,
        offset=offset,
        timestamp_ms=timestamp_ms,
        max_records=max_records,
        max_bytes=max_bytes,
        wait_ms=wait_ms,
        raw=binary,
    )
    result = answer.result
    sealed = answer.partition.state.value == "sealed" or result.sealed
    children = list(answer.partition.children)
    if isinstance(result, BatchRead):
        start = answer.offset
        data, next_offset = trim_batches(result.data, start, max_records)
        # Charged as JSON answers are: the records' payload, not the batches' framing.
        delivered = payload_totals(data, start)
        charge_consume(request, delivered[1])
        meter_delivered(request, *delivered)
        if not data:
            next_offset = result.next_offset
        request.app[METRICS].read_records.inc(next_offset - start)
        chunks = [RawChunk(partition_id, start, data)] if data else []
        headers = {
            "Eventbus-Next-Offset": str(next_offset),
            "Eventbus-High-Watermark": str(result.high_watermark),
            "Eventbus-Start-Offset": str(result.start_offset),
            "Eventbus-Sealed": "true" if sealed else "false",
            "Eventbus-Children": ",".join(str(c) for c in children),
        }
        return await wire.answer(request, wire.encode_chunks(chunks), wire.BATCH, headers=headers)
    request.app[METRICS].read_records.inc(len(result.records))
    payload = sum(r.payload_bytes for r in result.records)
    charge_consume(request, payload)
    meter_delivered(request, len(result.records), payload)
    return await wire.json_answer(
        request,
        {
            "records": [render_record(r, partition_id) for r in result.records],
            "next_offset": result.next_offset,
            "high_watermark": result.high_watermark,
            "start_offset": result.start_offset,
            "sealed": sealed,
            "children": children,
        },
    )


# --- split and merge by hand ---------------------------------------------------------------


async def _lineage_answer(broker: Broker, tenant: str, topic: str, change: LineageChange) -> Any:
    view = await broker.view(tenant, topic)
    offsets = await broker.partition_offsets(view)
    return {
        "sealed": [partition_json(p, *offsets[p.partition_id]) for p in change.sealed],
        "created": [partition_json(p, *offsets[p.partition_id]) for p in change.created],
    }


async def split_partition(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    topic = request.match_info["topic"]
    try:
        partition_id = int(request.match_info["partition"])
    except ValueError:
        raise InvalidParameterError("the partition must be an integer") from None
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
    tenant = require_tenant(request)
    broker = _broker(request)
    topic = request.match_info["topic"]
    body = await read_json(request)
    ids = body.get("partitions") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise InvalidParameterError('the body is {"partitions": [<id>, <id>]}')
    change = await broker.merge(tenant, topic, ids)
    return json_response(await _lineage_answer(broker, tenant, topic, change))


# --- consumer groups -------------------------------------------------------------------------

SESSION_TIMEOUT_MS = (1_000, 300_000)  # lowest, highest


def _group_name(request: web.Request) -> str:
    name = request.match_info["group"]
    validate_topic_name(name)  # the same rules as topic names
    return name


def _body_int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be an integer from {low} to {high}")
    return value


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if optional and not request.can_read_body:
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise MalformedJsonError("the body must be a JSON object")
    return body


async def group_fetch(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    name = _group_name(request)
    body = await _json_object(request, optional=True)
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
        else _body_int(body, "session_timeout_ms", 0, low, high)
    )
    binary = wire.wants_batches(request)
    result = await broker.groups.fetch(
        shape,
        name,
        member_id=member_id,
        max_records=_body_int(body, "max_records", 500, 1, MAX_READ_RECORDS),
        max_bytes=_body_int(body, "max_bytes", 1024 * 1024, 1, MAX_READ_BYTES),
        wait_ms=_body_int(body, "wait_ms", 0, 0, request.app[CONFIG].max_wait_ms),
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
        framed = wire.encode_chunks(result.fetched.chunks)
        return await wire.answer(request, framed, wire.BATCH, headers=headers)
    charge_consume(request, result.fetched.size)
    meter_delivered(request, len(result.records), result.fetched.size)
    return await wire.json_answer(
        request,
        {
            "member_id": result.member_id,
            "generation": result.generation,
            "assignment": result.assignment,
            "records": [render_record(record, pid) for pid, record in result.records],
        },
    )


async def group_commit(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await _json_object(request)
    member_id, generation, items = (
        body.get("member_id"),
        body.get("generation"),
        body.get("offsets"),
    )
    if not isinstance(member_id, str):
        raise InvalidParameterError("member_id is required")
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise InvalidParameterError("generation is required (from the fetch answer)")
    if not isinstance(items, list) or not items:
        raise InvalidParameterError('offsets is a list of {"partition", "offset"}')
    offsets: dict[int, int] = {}
    for item in items:
        part = item.get("partition") if isinstance(item, dict) else None
        offset = item.get("offset") if isinstance(item, dict) else None
        if not _is_int(part) or not _is_int(offset) or offset < 0:
            raise InvalidParameterError(f"not a partition offset: {item!r}")
        offsets[part] = offset
    committed = await broker.groups.commit(
        shape, _group_name(request), member_id=member_id, generation=generation, offsets=offsets
    )
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )


def _is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


async def group_leave(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await _json_object(request)
    member_id = body.get("member_id")
    if not isinstance(member_id, str):
        raise InvalidParameterError("member_id is required")
    commit = body.get("commit", True)
    if not isinstance(commit, bool):
        raise InvalidParameterError("commit is true or false")
    await broker.groups.leave(shape, _group_name(request), member_id, commit=commit)
    return web.Response(status=204)


async def group_describe(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    return json_response(await broker.groups.describe(shape, _group_name(request)))


async def group_delete(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    await broker.groups.delete(shape, _group_name(request))
    return web.Response(status=204)


async def group_seek(request: web.Request) -> web.Response:
    tenant = require_tenant(request)
    broker = _broker(request)
    shape = await broker.shape(tenant, request.match_info["topic"])
    body = await _json_object(request)
    committed = await broker.groups.seek(shape, _group_name(request), body.get("to"))
    return json_response(
        {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
    )


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    ("GET", "/v1/topics", list_topics),
    ("PUT", "/v1/topics/{topic}", put_topic),
    ("GET", "/v1/topics/{topic}", get_topic),
    ("PATCH", "/v1/topics/{topic}", patch_topic),
    ("DELETE", "/v1/topics/{topic}", delete_topic),
    ("POST", "/v1/topics/{topic}/records", produce),
    ("GET", "/v1/topics/{topic}/partitions/{partition}/records", read_records),
    ("POST", "/v1/topics/{topic}/partitions/{partition}/split", split_partition),
    ("POST", "/v1/topics/{topic}/merge", merge_partitions),
    ("POST", "/v1/topics/{topic}/groups/{group}/fetch", group_fetch),
    ("POST", "/v1/topics/{topic}/groups/{group}/commit", group_commit),
    ("POST", "/v1/topics/{topic}/groups/{group}/leave", group_leave),
    ("POST", "/v1/topics/{topic}/groups/{group}/seek", group_seek),
    ("GET", "/v1/topics/{topic}/groups/{group}", group_describe),
    ("DELETE", "/v1/topics/{topic}/groups/{group}", group_delete),
]
