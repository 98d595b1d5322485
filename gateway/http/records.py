"""HTTP handlers of records: produce (JSON, NDJSON or binary batches, idempotent with a
key) and partition reads (JSON or stored batches, long-polling at the end)."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from gateway.broker.answers import IdempotentRequest
from gateway.client.wire import BATCH, NDJSON
from gateway.http import bodies
from gateway.http.charges import (
    admit_produce,
    charge_consume,
    meter_delivered,
    meter_produced,
    settle_produce,
)
from gateway.http.keys import BROKER, CONFIG, METRICS, tenant_of
from gateway.http.metrics import Metrics
from gateway.http.params import (
    MAX_READ_BYTES,
    MAX_READ_RECORDS,
    InvalidParameterError,
    int_param,
    optional_int_param,
    parse_json,
    partition_param,
)
from gateway.http.record_json import parse_ndjson, parse_records, render_record
from partitions.batch import payload_totals, trim_batches
from partitions.group_model import RawChunk
from partitions.idempotency import check_key as check_idempotency_key
from partitions.idempotency import request_hash
from partitions.log.values import BatchRead


async def produce(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    topic = request.match_info["topic"]
    await broker.view(tenant, topic)  # 404 for an unknown topic before reading the body
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    media = bodies.produce_media_type(request)
    raw = await bodies.read_body(request)
    now = broker.now_ms()
    if media == BATCH:
        records = bodies.parse_batches(raw, now_ms=now)
    elif media == NDJSON:
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
    return await bodies.json_answer(
        request, {"offsets": [{"partition": p, "offset": o} for p, o in placed]}
    )


async def read_records(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    broker = request.app[BROKER]
    partition_id = partition_param(request)
    binary = bodies.wants_batches(request)
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
        return await bodies.answer(request, bodies.encode_chunks(chunks), BATCH, headers=headers)
    request.app[METRICS].read_records.inc(len(result.records))
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
