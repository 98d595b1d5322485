"""Remote segments: the tiered copies of sealed segments, in KIP-405's states.

A row is added as copy-started before the upload, moves to copy-finished after it, to
delete-started before the objects are deleted, and is removed only from delete-started.
Every state change names the state it expects to leave, so a change made from a stale read
is refused. Rows are listed by state across all topics for tiered storage's start-up and
cleanup: the copies that never finished and the deletions a crash interrupted.

A row keeps the lease epoch its objects were uploaded under (``epoch``, 0 for rows made
before epochs). The writer's lease fence that the Protocol's changes take is accepted and
ignored: one machine has one owner of each partition, so there is no stale owner to refuse.
"""

from __future__ import annotations

import sqlite3

from partitions.catalog import LeaseFence, RemoteSegmentRecord, RemoteSegmentState
from partitions.catalog_sqlite.rows import remote_segment_record
from partitions.errors import (
    InvalidOffsetError,
    RemoteSegmentExistsError,
    RemoteSegmentNotFoundError,
    RemoteSegmentStateError,
    TopicNotFoundError,
)


def _require_segment(
    conn: sqlite3.Connection, tenant: str, incarnation: str, pid: int, base: int
) -> RemoteSegmentRecord:
    row = conn.execute(
        "SELECT * FROM remote_segments WHERE tenant = ? AND incarnation = ? "
        "AND partition_id = ? AND base_offset = ?",
        (tenant, incarnation, pid, base),
    ).fetchone()
    if row is None:
        raise RemoteSegmentNotFoundError(
            f"no remote segment {base} of partition {pid}", partition=pid, base_offset=base
        )
    return remote_segment_record(row)


def add_remote_segment(
    conn: sqlite3.Connection, record: RemoteSegmentRecord, *, fence: LeaseFence | None = None
) -> RemoteSegmentRecord:
    if record.state is not RemoteSegmentState.COPY_STARTED:
        raise RemoteSegmentStateError("a remote segment starts as copy-started")
    if record.last_offset < record.base_offset:
        raise InvalidOffsetError("a remote segment's last offset is below its base")
    # A copy racing the topic's deletion must not leave a row behind the purge.
    topic = conn.execute(
        "SELECT deleted_ms FROM topics WHERE tenant = ? AND incarnation = ?",
        (record.tenant, record.incarnation),
    ).fetchone()
    if topic is None or topic["deleted_ms"] is not None:
        raise TopicNotFoundError(
            f"no live topic incarnation {record.incarnation}",
            incarnation=record.incarnation,
        )
    try:
        conn.execute(
            "INSERT INTO remote_segments (tenant, incarnation, partition_id, base_offset, "
            "last_offset, size_bytes, first_timestamp_ms, max_timestamp_ms, object_key, state, "
            "version, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (
                record.tenant,
                record.incarnation,
                record.partition_id,
                record.base_offset,
                record.last_offset,
                record.size_bytes,
                record.first_timestamp_ms,
                record.max_timestamp_ms,
                record.object_key,
                record.state.value,
                record.epoch,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise RemoteSegmentExistsError(
            f"remote segment {record.base_offset} of partition {record.partition_id} "
            "is already recorded",
            base_offset=record.base_offset,
        ) from exc
    return _require_segment(
        conn, record.tenant, record.incarnation, record.partition_id, record.base_offset
    )


def set_remote_segment_state(
    conn: sqlite3.Connection,
    tenant: str,
    incarnation: str,
    partition_id: int,
    base_offset: int,
    *,
    from_state: RemoteSegmentState,
    to_state: RemoteSegmentState,
    fence: LeaseFence | None = None,
) -> RemoteSegmentRecord:
    current = _require_segment(conn, tenant, incarnation, partition_id, base_offset)
    if current.state is not from_state:
        raise RemoteSegmentStateError(
            f"remote segment {base_offset} is {current.state.value}, not {from_state.value}",
            state=current.state.value,
        )
    conn.execute(
        "UPDATE remote_segments SET state = ?, version = version + 1 "
        "WHERE tenant = ? AND incarnation = ? AND partition_id = ? AND base_offset = ?",
        (to_state.value, tenant, incarnation, partition_id, base_offset),
    )
    return _require_segment(conn, tenant, incarnation, partition_id, base_offset)


def list_remote_segments(
    conn: sqlite3.Connection, tenant: str, incarnation: str, partition_id: int
) -> list[RemoteSegmentRecord]:
    rows = conn.execute(
        "SELECT * FROM remote_segments WHERE tenant = ? AND incarnation = ? "
        "AND partition_id = ? ORDER BY base_offset",
        (tenant, incarnation, partition_id),
    )
    return [remote_segment_record(r) for r in rows]


def remove_remote_segment(
    conn: sqlite3.Connection,
    tenant: str,
    incarnation: str,
    partition_id: int,
    base_offset: int,
    *,
    fence: LeaseFence | None = None,
) -> None:
    current = _require_segment(conn, tenant, incarnation, partition_id, base_offset)
    if current.state is not RemoteSegmentState.DELETE_STARTED:
        raise RemoteSegmentStateError(
            f"remote segment {base_offset} is {current.state.value}; only a "
            "delete-started segment can be forgotten",
            state=current.state.value,
        )
    conn.execute(
        "DELETE FROM remote_segments WHERE tenant = ? AND incarnation = ? "
        "AND partition_id = ? AND base_offset = ?",
        (tenant, incarnation, partition_id, base_offset),
    )


def list_remote_segments_in_state(
    conn: sqlite3.Connection,
    state: RemoteSegmentState,
    *,
    after: tuple[str, str, int, int] | None = None,
    limit: int = 1000,
) -> list[RemoteSegmentRecord]:
    """One page of the rows in ``state`` across all topics, after the key ``after``."""
    start = after or ("", "", -1, -1)
    rows = conn.execute(
        "SELECT * FROM remote_segments WHERE state = ? "
        "AND (tenant, incarnation, partition_id, base_offset) > (?, ?, ?, ?) "
        "ORDER BY tenant, incarnation, partition_id, base_offset LIMIT ?",
        (state.value, *start, limit),
    )
    return [remote_segment_record(r) for r in rows]
