"""Body formats of the HTTP API: media types, the binary batch framing and compression.

``docs/wire-format.md`` is the specification; this module is its server and client side.

Produce bodies come as JSON (``{"records": [...]}``), as NDJSON (one record object per line)
or as binary batches (``application/vnd.eventbus.batch``: batches of
:mod:`partitions.batch` back to back, base offsets 0, producer tags empty). Reads and group
fetches answer JSON or, when ``Accept`` asks for it, the binary framing: a sequence of chunks,
each ``partition u32 | from_offset u64 | length u32`` and then ``length`` bytes of whole stored
batches. A batch may start below ``from_offset`` (batches are never cut); a reader skips the
records below it. Bodies may be compressed with gzip or zstd (``Content-Encoding`` on produce,
``Accept-Encoding`` on reads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from aiohttp.web_protocol import RequestPayloadError

from gateway.client.wire import BATCH, CHUNK_HEADER, JSON, NDJSON, compress
from gateway.http.record_json import (
    MAX_FUTURE_SKEW_MS,
    MAX_PRODUCE_RECORDS,
    InvalidRecordError,
    check_timestamp,
)
from partitions.batch import BatchBytes
from partitions.errors import EventBusError, InvalidInputError
from partitions.group_model import RawChunk
from partitions.incoming import IncomingBatches, index_batches

# ``curl -d`` sends form encoding, some tools text/plain and HTTP libraries octet-stream for
# bytes they know nothing of; such bodies are read as JSON.
JSON_ALIASES = frozenset(
    {"", JSON, "application/x-www-form-urlencoded", "text/plain", "application/octet-stream"}
)
NDJSON_ALIASES = frozenset({NDJSON, "application/jsonl", "application/x-jsonlines"})
EVENT_STREAM = "text/event-stream"
_EVENTS_RANGES = frozenset({EVENT_STREAM, "text/*", "*/*"})
# aiohttp decodes these request encodings before the handler reads the body.
REQUEST_ENCODINGS = frozenset({"identity", "gzip", "x-gzip", "deflate", "zstd"})
RESPONSE_ENCODINGS = ("zstd", "gzip")
# Smaller bodies are sent as they are: compressing them saves nothing worth the time.
MIN_COMPRESS_BYTES = 1024
# Larger bodies are compressed off the event loop.
COMPRESS_INLINE_BYTES = 64 * 1024


class UnsupportedMediaTypeError(EventBusError):
    code = "unsupported_media_type"
    status = 415


class NotAcceptableError(EventBusError):
    code = "not_acceptable"
    status = 406


class UnsupportedEncodingError(EventBusError):
    code = "unsupported_content_encoding"
    status = 415


class BadEncodingError(InvalidInputError):
    code = "invalid_content_encoding"


class InvalidBatchBodyError(InvalidInputError):
    code = "invalid_batch"


# --- request bodies --------------------------------------------------------------------------


async def read_body(request: web.Request) -> bytes:
    """The request body, decompressed; a body that does not decode is a 400."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in REQUEST_ENCODINGS:
        raise UnsupportedEncodingError(
            f"Content-Encoding {encoding!r} is not supported; send gzip, zstd or none"
        )
    try:
        return await request.read()
    except RequestPayloadError as exc:
        # What aiohttp raises when the body does not decompress (it then closes the
        # connection after the answer, and logs that it could not drain the body).
        raise BadEncodingError(f"the body does not decode as Content-Encoding {encoding}") from exc


def produce_media_type(request: web.Request) -> str:
    """Which of JSON, NDJSON and BATCH the produce body is; 415 for anything else."""
    given = request.headers.get("Content-Type")
    if given == JSON:  # as clients send it, with nothing to parse
        return JSON
    media = request.content_type.lower() if given else ""
    if media == BATCH:
        return BATCH
    if media in NDJSON_ALIASES:
        return NDJSON
    if media in JSON_ALIASES:
        return JSON
    raise UnsupportedMediaTypeError(
        f"cannot produce from {media!r}; send {JSON}, {NDJSON} or {BATCH}"
    )


def parse_batches(raw: bytes, *, now_ms: int) -> IncomingBatches:
    """The records of the binary batches in ``raw``, checked where they lie and not
    decoded (:func:`partitions.incoming.index_batches` says what is checked), with every
    timestamp not negative and at most an hour ahead. Batches must have an empty producer
    tag: the server writes the tag, from the ``Idempotency-Key`` header.
    """
    if not raw:
        raise InvalidBatchBodyError("the body holds no batch")
    batches = index_batches(raw, max_records=MAX_PRODUCE_RECORDS)
    if batches.min_timestamp < 0:
        index = next(i for i, ts in enumerate(batches.timestamps) if ts < 0)
        raise InvalidRecordError(f"record {index} has a negative timestamp", index=index)
    if batches.max_timestamp > now_ms + MAX_FUTURE_SKEW_MS:
        for index, timestamp in enumerate(batches.timestamps):
            check_timestamp(timestamp, index, now_ms=now_ms)
    return batches


# --- binary read answers ---------------------------------------------------------------------


def frame_chunks(chunks: list[RawChunk]) -> list[BatchBytes]:
    """The chunk framing as pieces to send one after another: each chunk's header, then its
    stored bytes as they were read (a view, never joined into one copy)."""
    parts: list[BatchBytes] = []
    for chunk in chunks:
        parts.append(CHUNK_HEADER.pack(chunk.partition, chunk.from_offset, len(chunk.data)))
        parts.append(chunk.data)
    return parts


def wants_events(request: web.Request) -> bool:
    """Whether ``Accept`` asks for an event stream: named, and not below JSON or batches."""
    quality = dict(_ranges(request))
    q = quality.get(EVENT_STREAM, 0.0)
    return q > 0 and q >= quality.get(JSON, 0.0) and q >= quality.get(BATCH, 0.0)


def accept_events(request: web.Request) -> None:
    """406 unless ``Accept`` (if given) admits an event stream: a route that answers only one."""
    if not request.headers.get("Accept", "").strip():
        return
    if any(q > 0 and media in _EVENTS_RANGES for media, q in _ranges(request)):
        return
    raise NotAcceptableError(f"this route answers {EVENT_STREAM} only")


def _ranges(request: web.Request) -> list[tuple[str, float]]:
    accept = request.headers.get("Accept", "")
    return [_media_range(part) for part in accept.split(",") if part.strip()]


def wants_batches(request: web.Request) -> bool:
    """Whether ``Accept`` asks for the binary framing (it wins over JSON only when named)."""
    accept = request.headers.get("Accept", "")
    if not accept:
        return False
    ranges = [_media_range(part) for part in accept.split(",") if part.strip()]
    quality = {media: q for media, q in ranges}
    if quality.get(BATCH, 0.0) > 0 and quality.get(BATCH, 0.0) >= quality.get(JSON, 0.0):
        return True
    if any(q > 0 and media in (JSON, "application/*", "*/*") for media, q in ranges):
        return False
    raise NotAcceptableError(
        f"answers are {JSON}, {BATCH} or {EVENT_STREAM}; Accept names none of them"
    )


def _media_range(part: str) -> tuple[str, float]:
    media, _, params = part.strip().partition(";")
    q = 1.0
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return media.strip().lower(), q


# --- answers ---------------------------------------------------------------------------------


def choose_encoding(accept_encoding: str) -> str | None:
    """The response encoding for an ``Accept-Encoding`` value: zstd, then gzip, else none."""
    offered: dict[str, float] = {}
    for part in accept_encoding.split(","):
        if part.strip():
            name, q = _media_range(part)
            offered[name] = q
    for name in RESPONSE_ENCODINGS:
        q = offered[name] if name in offered else offered.get("*", 0.0)
        if q > 0:
            return name
    return None


async def answer(
    request: web.Request,
    body: bytes,
    content_type: str,
    *,
    headers: Mapping[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    """A response whose body is compressed when the client accepts it and it is worth it."""
    out_headers = dict(headers or {})
    out_headers["Content-Type"] = content_type
    out_headers["Vary"] = "Accept, Accept-Encoding"
    encoding = None
    if len(body) >= MIN_COMPRESS_BYTES:  # a small answer is sent as it is, whatever accepted
        encoding = choose_encoding(request.headers.get("Accept-Encoding", ""))
    if encoding is not None:
        if len(body) >= COMPRESS_INLINE_BYTES:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, compress, body, encoding)
        else:
            body = compress(body, encoding)
        out_headers["Content-Encoding"] = encoding
    return web.Response(status=status, body=body, headers=out_headers)


class _Pieces(Payload):
    """A body sent as the buffers it is made of: the stored batches of a binary read go from
    the buffer they were read into to the socket, with no join into one more copy."""

    def __init__(self, pieces: list[BatchBytes], content_type: str) -> None:
        super().__init__(pieces, content_type=content_type)
        self._pieces = pieces
        self._size = sum(len(piece) for piece in pieces)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for piece in self._pieces:
            await writer.write(piece)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._pieces).decode(encoding, errors)


async def batches_answer(
    request: web.Request, chunks: list[RawChunk], *, headers: Mapping[str, str]
) -> web.Response:
    """A binary read's answer: the chunk framing, compressed when the client accepts it and
    it is worth it, else sent straight from the buffers the batches were read into."""
    pieces = frame_chunks(chunks)
    size = sum(len(piece) for piece in pieces)
    encoding = choose_encoding(request.headers.get("Accept-Encoding", ""))
    if size < MIN_COMPRESS_BYTES or encoding is None:
        out_headers = {**headers, "Vary": "Accept, Accept-Encoding"}
        return web.Response(body=_Pieces(pieces, BATCH), headers=out_headers)
    return await answer(request, b"".join(pieces), BATCH, headers=headers)


async def json_answer(request: web.Request, value: object, *, status: int = 200) -> web.Response:
    return await answer(request, orjson.dumps(value), JSON, status=status)
