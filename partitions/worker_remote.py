"""The partition worker interface across processes: :class:`RemotePartitionWorker` calls a
peer's :class:`~partitions.worker.LocalPartitionWorker` through a channel
(:mod:`partitions.channel`), and :class:`WorkerService` answers those calls.

Each operation is one channel op. Its fixed fields are packed with the ``struct`` formats
below; record batches travel as the frame's blob, exactly as they are stored, in both
directions (an append sends the encoded batch, a read of batches answers stored batches).
A read of records (bounded by count and payload bytes, which only the owner can apply to
what it fetches from object storage) answers them as one batch in the same format, which
the caller decodes. Small structured answers (log stats, segment lists) are JSON; no
record ever is.

A partition key is packed as ``KEY_HEAD`` (tenant length u8, incarnation length u8,
partition id u32) followed by the tenant and incarnation bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import struct
from collections.abc import Awaitable, Callable

import orjson

from partitions.batch import (
    BatchBytes,
    NewRecord,
    decode_records,
    encode_batch,
    with_base_offset,
)
from partitions.batch import Record as StoredRecord
from partitions.channel import ChannelClient, ChannelServer, Connection, Payload, Received
from partitions.log.values import (
    AppendResult,
    BatchRead,
    LogConfig,
    LogStats,
    ReadResult,
    SegmentInfo,
)
from partitions.partition_key import PartitionKey
from partitions.worker import LocalPartitionWorker

log = logging.getLogger(__name__)

# --- ops ------------------------------------------------------------------------------------

OPEN = 1
APPEND = 2
READ_BATCHES = 3
OFFSET_FOR_TIMESTAMP = 4
WAIT_FOR_DATA = 5
PRODUCER_TAGS = 6
SEAL = 7
FREEZE = 8
THAW = 9
STATS = 10
ENFORCE_RETENTION = 11
SEGMENT_DETAILS = 12
ADVANCE_START = 13
DELETE_LOCAL_BELOW = 14
DROP_TOPIC = 15
READ = 16
# Ops up to this one are the worker's; the gateway numbers its own above it.
LAST_WORKER_OP = 31

# --- layouts -------------------------------------------------------------------------------

KEY_HEAD = struct.Struct(">BBI")
U64 = struct.Struct(">Q")
I64 = struct.Struct(">q")
APPENDED = struct.Struct(">QI")  # base offset, record count
READ_ASK = struct.Struct(">QQ")  # offset, max bytes
READ_ASK_RECORDS = struct.Struct(">QIQ")  # offset, max records, max bytes
RECORDS = struct.Struct(">QQQB")  # next, high watermark, start, sealed
BATCHES = struct.Struct(">QQQQB")  # first, next, high watermark, start, sealed
WAIT_ASK = struct.Struct(">Qd")  # offset, timeout in seconds
FLAG = struct.Struct(">B")
TAG_HEAD = struct.Struct(">QH")  # base offset, tag length
# enforce_retention: retention_ms, retention_bytes, max_offset; -1 for none.
RETENTION_ASK = struct.Struct(">qqq")
_NO_LIMIT = 1 << 62
_CONFIG_FIELDS = [f.name for f in dataclasses.fields(LogConfig)]
LOG_CONFIG = struct.Struct(">" + "q" * len(_CONFIG_FIELDS))


def pack_key(key: PartitionKey) -> bytes:
    tenant, incarnation = key.tenant.encode(), key.incarnation.encode()
    return KEY_HEAD.pack(len(tenant), len(incarnation), key.partition_id) + tenant + incarnation


def unpack_key(meta: bytes) -> tuple[PartitionKey, int]:
    """The key at the start of ``meta``, and where the rest begins."""
    tenant_len, incarnation_len, pid = KEY_HEAD.unpack_from(meta)
    pos = KEY_HEAD.size
    tenant = meta[pos : pos + tenant_len].decode()
    pos += tenant_len
    incarnation = meta[pos : pos + incarnation_len].decode()
    return PartitionKey(tenant, incarnation, pid), pos + incarnation_len


def pack_topic(tenant: str, incarnation: str) -> bytes:
    return pack_key(PartitionKey(tenant, incarnation, 0))


def _segments_json(segments: list[SegmentInfo]) -> bytes:
    return orjson.dumps([dataclasses.asdict(s) for s in segments])


def _segments(meta: bytes) -> list[SegmentInfo]:
    return [SegmentInfo(**item) for item in orjson.loads(meta)]


def _optional(value: int | None) -> int:
    return -1 if value is None else value


def _present(value: int) -> int | None:
    return None if value < 0 else value


# --- the caller's side ---------------------------------------------------------------------


class RemotePartitionWorker:
    """The async part of :class:`~partitions.worker.PartitionWorker`, carried out by the
    worker process at the other end of ``client``."""

    def __init__(self, client: ChannelClient) -> None:
        self.client = client

    async def _call(self, op: int, meta: bytes, blob: BatchBytes = b"") -> Received:
        return await self.client.call(op, meta, blob)

    async def open_partition(self, key: PartitionKey, config: LogConfig) -> None:
        values = [getattr(config, name) for name in _CONFIG_FIELDS]
        await self._call(OPEN, pack_key(key) + LOG_CONFIG.pack(*values))

    async def append(self, key: PartitionKey, batch: BatchBytes) -> AppendResult:
        meta, _ = await self._call(APPEND, pack_key(key), batch)
        return AppendResult(*APPENDED.unpack(meta))

    async def read_batches(self, key: PartitionKey, offset: int, *, max_bytes: int) -> BatchRead:
        ask = pack_key(key) + READ_ASK.pack(offset, max_bytes)
        meta, blob = await self._call(READ_BATCHES, ask)
        first, next_offset, hw, start, sealed = BATCHES.unpack(meta)
        return BatchRead(blob, first, next_offset, hw, start, bool(sealed))

    async def read(
        self, key: PartitionKey, offset: int, *, max_records: int, max_bytes: int
    ) -> ReadResult:
        """The owner reads (within the bounds, from object storage too) and sends the
        records back as one batch, which is decoded here."""
        ask = pack_key(key) + READ_ASK_RECORDS.pack(offset, max_records, max_bytes)
        meta, blob = await self._call(READ, ask)
        next_offset, hw, start, sealed = RECORDS.unpack(meta)
        records = decode_records(blob) if blob else []
        return ReadResult(records, next_offset, hw, start, bool(sealed))

    async def offset_for_timestamp(self, key: PartitionKey, timestamp_ms: int) -> int | None:
        meta, _ = await self._call(OFFSET_FOR_TIMESTAMP, pack_key(key) + I64.pack(timestamp_ms))
        return _present(I64.unpack(meta)[0])

    async def wait_for_data(self, key: PartitionKey, offset: int, timeout_s: float) -> bool:
        meta, _ = await self._call(WAIT_FOR_DATA, pack_key(key) + WAIT_ASK.pack(offset, timeout_s))
        return bool(FLAG.unpack(meta)[0])

    async def producer_tags(self, key: PartitionKey, since_ms: int) -> list[tuple[int, bytes]]:
        _, data = await self._call(PRODUCER_TAGS, pack_key(key) + I64.pack(since_ms))
        out: list[tuple[int, bytes]] = []
        pos = 0
        while pos < len(data):
            base, length = TAG_HEAD.unpack_from(data, pos)
            pos += TAG_HEAD.size
            out.append((base, data[pos : pos + length]))
            pos += length
        return out

    async def seal(self, key: PartitionKey) -> int:
        meta, _ = await self._call(SEAL, pack_key(key))
        return int(U64.unpack(meta)[0])

    async def freeze(self, key: PartitionKey) -> int:
        meta, _ = await self._call(FREEZE, pack_key(key))
        return int(U64.unpack(meta)[0])

    async def thaw(self, key: PartitionKey) -> None:
        await self._call(THAW, pack_key(key))

    async def stats(self, key: PartitionKey) -> LogStats:
        meta, _ = await self._call(STATS, pack_key(key))
        return LogStats(**orjson.loads(meta))

    async def enforce_retention(
        self,
        key: PartitionKey,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        max_offset: int | None = None,
    ) -> list[SegmentInfo]:
        ask = RETENTION_ASK.pack(
            _optional(retention_ms), _optional(retention_bytes), _optional(max_offset)
        )
        meta, _ = await self._call(ENFORCE_RETENTION, pack_key(key) + ask)
        return _segments(meta)

    async def segment_details(self, key: PartitionKey) -> list[SegmentInfo]:
        meta, _ = await self._call(SEGMENT_DETAILS, pack_key(key))
        return _segments(meta)

    async def advance_start(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        meta, _ = await self._call(ADVANCE_START, pack_key(key) + U64.pack(offset))
        return _segments(meta)

    async def delete_local_below(self, key: PartitionKey, offset: int) -> list[SegmentInfo]:
        meta, _ = await self._call(DELETE_LOCAL_BELOW, pack_key(key) + U64.pack(offset))
        return _segments(meta)

    async def drop_topic(self, tenant: str, incarnation: str) -> None:
        """Have the peer let go of the incarnation: close its logs, forget its state. The
        caller removes the files once every process has let go."""
        await self._call(DROP_TOPIC, pack_topic(tenant, incarnation))


def _as_batch(records: list[StoredRecord]) -> bytes:
    """Records read (consecutive offsets) as one batch, to cross the channel as bytes."""
    if not records:
        return b""
    batch = encode_batch(
        [
            NewRecord(
                value=r.value,
                key=r.key,
                headers=r.headers,
                timestamp_ms=r.timestamp_ms,
                key_is_text=r.key_is_text,
                value_is_text=r.value_is_text,
            )
            for r in records
        ],
        now_ms=0,
        max_record_bytes=_NO_LIMIT,
    )
    return with_base_offset(batch, records[0].offset)


# --- the owner's side ----------------------------------------------------------------------

DropTopic = Callable[[str, str], Awaitable[None]]


class WorkerService:
    """Answers a peer's :class:`RemotePartitionWorker` with this process's local worker.

    A freeze belongs to the connection that asked for it: if that connection closes (the
    process that was splitting died), the partition thaws, so appends never wait forever.
    """

    def __init__(
        self, worker: LocalPartitionWorker, *, on_drop_topic: DropTopic | None = None
    ) -> None:
        self.worker = worker
        self.on_drop_topic = on_drop_topic or worker.release_topic
        self._freezes: dict[PartitionKey, Connection] = {}
        self._thawing: set[asyncio.Task[None]] = set()

    def register(self, server: ChannelServer) -> None:
        handlers: dict[int, Callable[[bytes, bytes, Connection], Awaitable[Payload]]] = {
            OPEN: self._open,
            APPEND: self._append,
            READ_BATCHES: self._read_batches,
            READ: self._read,
            OFFSET_FOR_TIMESTAMP: self._offset_for_timestamp,
            WAIT_FOR_DATA: self._wait_for_data,
            PRODUCER_TAGS: self._producer_tags,
            SEAL: self._seal,
            FREEZE: self._freeze,
            THAW: self._thaw,
            STATS: self._stats,
            ENFORCE_RETENTION: self._enforce_retention,
            SEGMENT_DETAILS: self._segment_details,
            ADVANCE_START: self._advance_start,
            DELETE_LOCAL_BELOW: self._delete_local_below,
            DROP_TOPIC: self._drop_topic,
        }
        for op, handler in handlers.items():
            server.register(op, handler)

    async def _open(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        values = LOG_CONFIG.unpack_from(meta, pos)
        config = LogConfig(**dict(zip(_CONFIG_FIELDS, values, strict=True)))
        await self.worker.open_partition(key, config)
        return b"", b""

    async def _append(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        result = await self.worker.append(key, blob)
        return APPENDED.pack(result.base_offset, result.record_count), b""

    async def _read_batches(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        offset, max_bytes = READ_ASK.unpack_from(meta, pos)
        got = await self.worker.read_batches(key, offset, max_bytes=max_bytes)
        head = BATCHES.pack(
            got.first_offset, got.next_offset, got.high_watermark, got.start_offset, got.sealed
        )
        return head, got.data

    async def _read(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        offset, max_records, max_bytes = READ_ASK_RECORDS.unpack_from(meta, pos)
        got = await self.worker.read(key, offset, max_records=max_records, max_bytes=max_bytes)
        head = RECORDS.pack(got.next_offset, got.high_watermark, got.start_offset, got.sealed)
        return head, _as_batch(got.records)

    async def _offset_for_timestamp(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        (timestamp_ms,) = I64.unpack_from(meta, pos)
        found = await self.worker.offset_for_timestamp(key, timestamp_ms)
        return I64.pack(_optional(found)), b""

    async def _wait_for_data(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        offset, timeout_s = WAIT_ASK.unpack_from(meta, pos)
        if not math.isfinite(timeout_s):
            timeout_s = 0.0
        return FLAG.pack(await self.worker.wait_for_data(key, offset, timeout_s)), b""

    async def _producer_tags(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        (since_ms,) = I64.unpack_from(meta, pos)
        parts: list[bytes] = []
        for base, tag in await self.worker.producer_tags(key, since_ms):
            parts.append(TAG_HEAD.pack(base, len(tag)))
            parts.append(tag)
        return b"", parts

    async def _seal(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        self._freezes.pop(key, None)
        return U64.pack(await self.worker.seal(key)), b""

    async def _freeze(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        end = await self.worker.freeze(key)
        self._freezes[key] = conn
        conn.on_close.append(lambda: self._holder_gone(key, conn))
        return U64.pack(end), b""

    def _holder_gone(self, key: PartitionKey, conn: Connection) -> None:
        if self._freezes.get(key) is conn:
            del self._freezes[key]
            log.warning("partition %s: the process that froze it went away; thawing", key)
            task = asyncio.get_running_loop().create_task(self.worker.thaw(key))
            self._thawing.add(task)
            task.add_done_callback(self._thawing.discard)

    async def _thaw(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        self._freezes.pop(key, None)
        await self.worker.thaw(key)
        return b"", b""

    async def _stats(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        stats = await self.worker.stats(key)
        return orjson.dumps(dataclasses.asdict(stats)), b""

    async def _enforce_retention(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        retention_ms, retention_bytes, max_offset = RETENTION_ASK.unpack_from(meta, pos)
        gone = await self.worker.enforce_retention(
            key,
            retention_ms=_present(retention_ms),
            retention_bytes=_present(retention_bytes),
            max_offset=_present(max_offset),
        )
        return _segments_json(gone), b""

    async def _segment_details(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        return _segments_json(await self.worker.segment_details(key)), b""

    async def _advance_start(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        (offset,) = U64.unpack_from(meta, pos)
        return _segments_json(await self.worker.advance_start(key, offset)), b""

    async def _delete_local_below(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, pos = unpack_key(meta)
        (offset,) = U64.unpack_from(meta, pos)
        return _segments_json(await self.worker.delete_local_below(key, offset)), b""

    async def _drop_topic(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        key, _ = unpack_key(meta)
        await self.on_drop_topic(key.tenant, key.incarnation)
        return b"", b""
