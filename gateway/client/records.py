"""The values the client takes and answers: records to produce, reads and group fetches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from partitions.batch import NewRecord, Record

Compression: TypeAlias = Literal["zstd", "gzip"] | None
# A record to produce: a NewRecord, a (key, value) pair, or a mapping with "value" and
# optionally "key", "headers" and "timestamp_ms". str keys and values are sent as text.
RecordLike: TypeAlias = NewRecord | tuple[str | bytes | None, str | bytes] | Mapping[str, Any]
SeekTarget: TypeAlias = str | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One partition read: records and where the partition stands."""

    records: list[Record]
    next_offset: int
    high_watermark: int
    start_offset: int
    sealed: bool
    children: list[int]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One group fetch: the member's identity and assignment, and (partition, record) pairs."""

    member_id: str
    generation: int
    assignment: list[int]
    records: list[tuple[int, Record]]


def _as_bytes(value: str | bytes) -> tuple[bytes, bool]:
    """Bytes, and whether they were given as text."""
    if isinstance(value, str):
        return value.encode(), True
    return bytes(value), False


def to_new_record(item: RecordLike) -> NewRecord:
    """A :class:`NewRecord` from any accepted record form."""
    if isinstance(item, NewRecord):
        return item
    if isinstance(item, tuple):
        key, value = item
        headers: Iterable[tuple[str, str]] = ()
        timestamp_ms = None
    else:
        key, value = item.get("key"), item["value"]
        raw_headers = item.get("headers") or ()
        headers = raw_headers.items() if isinstance(raw_headers, Mapping) else raw_headers
        timestamp_ms = item.get("timestamp_ms")
    value_b, value_text = _as_bytes(value)
    key_b, key_text = (None, False) if key is None else _as_bytes(key)
    return NewRecord(
        value=value_b,
        key=key_b,
        headers=tuple((str(n), str(v)) for n, v in headers),
        timestamp_ms=timestamp_ms,
        key_is_text=key_text,
        value_is_text=value_text,
    )
