"""Columns to records and back, shared by the store's entity modules.

Hash points are stored as 20-digit zero-padded decimal text: SQLite integers are signed
64-bit and the end of the hash space, 2**64, does not fit in one. Documents (quotas, plans,
scopes, configs, lineage lists) are JSON text with sorted keys, so that one document is
always one text.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from partitions.catalog import (
    ApiKeyRecord,
    HashRange,
    PartitionRecord,
    PartitionState,
    RemoteSegmentRecord,
    RemoteSegmentState,
    TenantRecord,
    TopicRecord,
)


def hash_text(point: int) -> str:
    return f"{point:020d}"


def json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def tenant_record(row: sqlite3.Row) -> TenantRecord:
    return TenantRecord(
        name=row["name"],
        created_ms=row["created_ms"],
        quotas=json.loads(row["quotas"]),
        plan=json.loads(row["plan"]),
        version=row["version"],
    )


def api_key_record(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        tenant=row["tenant"],
        key_id=row["key_id"],
        key_hash=row["key_hash"],
        scope=json.loads(row["scope"]),
        created_ms=row["created_ms"],
        last_used_ms=row["last_used_ms"],
    )


def topic_record(row: sqlite3.Row) -> TopicRecord:
    return TopicRecord(
        tenant=row["tenant"],
        name=row["name"],
        incarnation=row["incarnation"],
        config=json.loads(row["config"]),
        created_ms=row["created_ms"],
        deleted=row["deleted_ms"] is not None,
        deleted_ms=row["deleted_ms"],
        version=row["version"],
    )


def partition_record(row: sqlite3.Row, topic: str) -> PartitionRecord:
    """A partition row as a record; the row holds the incarnation, the caller its topic name."""
    return PartitionRecord(
        tenant=row["tenant"],
        topic=topic,
        incarnation=row["incarnation"],
        partition_id=row["partition_id"],
        hash_range=HashRange(int(row["hash_start"]), int(row["hash_end"])),
        state=PartitionState(row["state"]),
        parents=tuple(json.loads(row["parents"])),
        children=tuple(json.loads(row["children"])),
        start_offset=row["start_offset"],
        end_offset=row["end_offset"],
        created_ms=row["created_ms"],
        sealed_ms=row["sealed_ms"],
        version=row["version"],
    )


def remote_segment_record(row: sqlite3.Row) -> RemoteSegmentRecord:
    return RemoteSegmentRecord(
        tenant=row["tenant"],
        incarnation=row["incarnation"],
        partition_id=row["partition_id"],
        base_offset=row["base_offset"],
        last_offset=row["last_offset"],
        size_bytes=row["size_bytes"],
        first_timestamp_ms=row["first_timestamp_ms"],
        max_timestamp_ms=row["max_timestamp_ms"],
        object_key=row["object_key"],
        state=RemoteSegmentState(row["state"]),
        version=row["version"],
        epoch=row["epoch"],
    )
