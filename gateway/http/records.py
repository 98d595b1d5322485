"""HTTP handlers of records: produce (JSON, NDJSON or binary batches, idempotent with a
key) and partition reads (JSON or stored batches, long-polling at the end, or an event
stream)."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from gateway.broker.answers import IdempotentRequest
from gateway.client.wire import BATCH, JSON, NDJSON
from gateway.http import bodies, events
from gateway.http.charges import (
    admit_produce,
    charge_consume,
    meter_delivered,
    settle_produce,
)
from gateway.http.events import LAST_EVENT_ID_HEADER, last_event_id
from gateway.http.inputs import Header, Query, QueryParams
from gateway.http.keys import BROKER, CONFIG, METRICS, tenant_of
from gateway.http.params import MAX_BYTES, MAX_RECORDS, WAIT_MS, parse_json, partition_param
from gateway.http.record_json import PRODUCE_SHAPE, parse_ndjson, parse_records, render_record
from partitions.batch import payload_totals, trim_batches
from partitions.errors import InvalidOffsetError
from partitions.group_model import RawChunk
from partitions.idempotency import KEY_SHAPE, request_hash
from partitions.idempotency import check_key as check_idempotency_key
from partitions.incoming import IncomingRecords, RecordList
from partitions.log.values import BatchRead
from partitions.shapes import Choice, Integer


class ProduceBody:
    """Records as JSON, as NDJSON or as binary batches (docs/wire-format.md)."""

    def document(self) -> dict[str, Any]:
        return {
            "required": True,
            "content": {
                JSON: {"schema": PRODUCE_SHAPE.schema()},
                NDJSON: {
                    "schema": {
                        "type": "string",
                        "description": "One record object per line, as in records",
                    }
                },
                BATCH: {"schema": {"type": "string", "format": "binary"}},
            },
        }


PRODUCE_BODY = ProduceBody()
PRODUCE_HEADERS = (Header("Idempotency-Key", KEY_SHAPE),)
READ_HEADERS = (LAST_EVENT_ID_HEADER,)


async def produce(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    topic = request.match_info["topic"]
    if broker.views.get(tenant, topic) is None:
        await broker.view(tenant, topic)  # 404 for an unknown topic before reading the body
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    media = bodies.produce_media_type(request)
    raw = await bodies.read_body(request)
    now = broker.now_ms()
    records: IncomingRecords
    if media == BATCH:
        records = bodies.parse_batches(raw, now_ms=now)
    elif media == NDJSON:
        records = RecordList(parse_ndjson(raw, now_ms=now))
    else:
        records = RecordList(parse_records(parse_json(raw), now_ms=now))
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
        settle_produce(request, records, appended)
    request.app[METRICS].count_produced(len(records), records.key_value_bytes())
    return await bodies.json_answer(
        request, {"offsets": [{"partition": p, "offset": o} for p, o in placed]}
    )


READ_QUERY = QueryParams(
    (
        Query(
            "offset",
            Integer(error=InvalidOffsetError),
            "First offset to read (left out: the log's start)",
        ),
        Query("timestamp_ms", Integer(), "Start at the first record at or after this time"),
        Query("max_records", MAX_RECORDS, "At most this many records"),
        Query("max_bytes", MAX_BYTES, "At most about this many bytes of records"),
        Query("wait_ms", WAIT_MS, WAIT_MS.description or ""),
        Query(
            "follow_children",
            Choice(values=("true", "false"), default="true"),
            "Event streams: once the partition is sealed and read, go on with its children",
        ),
    ),
    at_most_one=(("offset", "timestamp_ms"),),
)


async def read_records(request: web.Request) -> web.StreamResponse:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    partition_id = partition_param(request)
    query = READ_QUERY.read(request)
    if bodies.wants_events(request):
        return await events.partition_stream(
            request,
            partition_id,
            offset=query["offset"],
            timestamp_ms=query["timestamp_ms"],
            follow_children=query["follow_children"] == "true",
        )
    last_event_id(request)  # checked alike, though only a stream resumes from it
    binary = bodies.wants_batches(request)
    answer = await broker.read(
        tenant,
        request.match_info["topic"],
        partition_id,
        offset=query["offset"],
        timestamp_ms=query["timestamp_ms"],
        max_records=query["max_records"],
        max_bytes=query["max_bytes"],
        wait_ms=min(query["wait_ms"], request.app[CONFIG].max_wait_ms),
        raw=binary,
    )
    result = answer.result
    sealed = answer.partition.state.value == "sealed" or result.sealed
    children = list(answer.partition.children)
    if isinstance(result, BatchRead):
        start = answer.offset
        data, next_offset = trim_batches(result.data, start, query["max_records"])
        # Charged as JSON answers are: the records' payload, not the batches' framing.
        delivered = payload_totals(data, start)
        charge_consume(request, delivered[1])
        meter_delivered(request, *delivered)
        if not data:
            next_offset = result.next_offset
        request.app[METRICS].count_read(next_offset - start)
        chunks = [RawChunk(partition_id, start, data)] if data else []
        headers = {
            "Eventbus-Next-Offset": str(next_offset),
            "Eventbus-High-Watermark": str(result.high_watermark),
            "Eventbus-Start-Offset": str(result.start_offset),
            "Eventbus-Sealed": "true" if sealed else "false",
            "Eventbus-Children": ",".join(str(c) for c in children),
        }
        return await bodies.batches_answer(request, chunks, headers=headers)
    request.app[METRICS].count_read(len(result.records))
    payload = sum(r.payload_bytes for r in result.records)
    charge_consume(request, payload)
    meter_delivered(request, len(result.records), payload)
    return await bodies.json_answer(
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
