"""Partitions and their lineage: splits, merges, placements and start offsets.

A split or a merge is one transaction: the parents are sealed only if they are still at the
version read (so of two racing changes one wins), the children get ids from the topic's
counter, and a refusal raised before the end leaves the counter and every row as they were.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import partitions.catalog_sqlite.tenants as tenants
from partitions.catalog import HashRange, LeaseFence, LineageChange, PartitionRecord
from partitions.catalog_rules import (
    check_end,
    check_merge_request,
    check_new_start,
    check_partition_limit,
    check_split,
    merge_order,
)
from partitions.catalog_sqlite.incarnations import live_incarnation, live_topic
from partitions.catalog_sqlite.rows import hash_text, json_text, partition_record
from partitions.errors import (
    PartitionNotFoundError,
    VersionConflictError,
)


def insert_partition(
    conn: sqlite3.Connection,
    tenant: str,
    incarnation: str,
    partition_id: int,
    hash_range: HashRange,
    parents: tuple[int, ...],
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO partitions VALUES (?, ?, ?, ?, ?, 'active', ?, '[]', 0, NULL, ?, NULL, 1)",
        (
            tenant,
            incarnation,
            partition_id,
            hash_text(hash_range.start),
            hash_text(hash_range.end),
            json_text(list(parents)),
            now,
        ),
    )


def require_partition(
    conn: sqlite3.Connection, tenant: str, incarnation: str, pid: int, topic: str
) -> PartitionRecord:
    row = conn.execute(
        "SELECT * FROM partitions WHERE tenant = ? AND incarnation = ? AND partition_id = ?",
        (tenant, incarnation, pid),
    ).fetchone()
    if row is None:
        raise PartitionNotFoundError(
            f"topic {topic!r} has no partition {pid}", topic=topic, partition=pid
        )
    return partition_record(row, topic)


def place(
    conn: sqlite3.Connection,
    tenant: str,
    incarnation: str,
    partition_ids: Sequence[int],
    placement: Sequence[int] | None,
) -> None:
    if placement is None:
        return
    conn.executemany(
        "INSERT INTO placements VALUES (?, ?, ?, ?)",
        [
            (tenant, incarnation, pid, worker)
            for pid, worker in zip(partition_ids, placement, strict=True)
        ],
    )


def _next_partition_ids(
    conn: sqlite3.Connection, tenant: str, incarnation: str, count: int
) -> list[int]:
    row = conn.execute(
        "SELECT next_partition_id FROM topics WHERE tenant = ? AND incarnation = ?",
        (tenant, incarnation),
    ).fetchone()
    first = int(row["next_partition_id"])
    conn.execute(
        "UPDATE topics SET next_partition_id = ? WHERE tenant = ? AND incarnation = ?",
        (first + count, tenant, incarnation),
    )
    return list(range(first, first + count))


def _seal(
    conn: sqlite3.Connection,
    parent: PartitionRecord,
    end_offset: int,
    children: list[int],
    now: int,
) -> None:
    check_end(parent, end_offset)
    changed = conn.execute(
        "UPDATE partitions SET state = 'sealed', end_offset = ?, children = ?, "
        "sealed_ms = ?, version = version + 1 "
        "WHERE tenant = ? AND incarnation = ? AND partition_id = ? AND version = ? "
        "AND state = 'active'",
        (
            end_offset,
            json_text(children),
            now,
            parent.tenant,
            parent.incarnation,
            parent.partition_id,
            parent.version,
        ),
    )
    if changed.rowcount != 1:
        raise VersionConflictError(f"partition {parent.partition_id} changed meanwhile")


def list_partitions(
    conn: sqlite3.Connection, tenant: str, topic: str, *, incarnation: str | None = None
) -> list[PartitionRecord]:
    live = live_incarnation(conn, tenant, topic, incarnation)
    rows = conn.execute(
        "SELECT * FROM partitions WHERE tenant = ? AND incarnation = ? ORDER BY partition_id",
        (tenant, live),
    )
    return [partition_record(r, topic) for r in rows]


def get_partition(
    conn: sqlite3.Connection, tenant: str, topic: str, partition_id: int
) -> PartitionRecord:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    return require_partition(conn, tenant, incarnation, partition_id, topic)


def split_partition(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    partition_id: int,
    *,
    at: int,
    end_offset: int,
    max_partitions: int | None,
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
    fence: LeaseFence | None = None,  # one machine, one owner: nothing to check
) -> LineageChange:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    parent = require_partition(conn, tenant, incarnation, partition_id, topic)
    check_split(parent, at)
    if max_partitions is not None:
        # One parent sealed, two children active: one more active partition.
        check_partition_limit(tenants.live_counts(conn, tenant), tenant, 1, max_partitions)
    now = clock_ms()
    left, right = _next_partition_ids(conn, tenant, incarnation, 2)
    _seal(conn, parent, end_offset, [left, right], now)
    parents = (partition_id,)
    insert_partition(
        conn, tenant, incarnation, left, HashRange(parent.hash_range.start, at), parents, now
    )
    insert_partition(
        conn, tenant, incarnation, right, HashRange(at, parent.hash_range.end), parents, now
    )
    place(conn, tenant, incarnation, [left, right], placement)
    return LineageChange(
        sealed=(require_partition(conn, tenant, incarnation, partition_id, topic),),
        created=tuple(
            require_partition(conn, tenant, incarnation, pid, topic) for pid in (left, right)
        ),
    )


def merge_partitions(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    partition_ids: Sequence[int],
    *,
    end_offsets: Sequence[int],
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
    fences: Sequence[LeaseFence] | None = None,  # one machine, one owner: nothing to check
) -> LineageChange:
    check_merge_request(partition_ids, end_offsets, fences)
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    parents = [require_partition(conn, tenant, incarnation, pid, topic) for pid in partition_ids]
    ends = dict(zip(partition_ids, end_offsets, strict=True))
    low, high = merge_order(parents)
    now = clock_ms()
    (child,) = _next_partition_ids(conn, tenant, incarnation, 1)
    for parent in (low, high):
        _seal(conn, parent, ends[parent.partition_id], [child], now)
    insert_partition(
        conn,
        tenant,
        incarnation,
        child,
        HashRange(low.hash_range.start, high.hash_range.end),
        (low.partition_id, high.partition_id),
        now,
    )
    place(conn, tenant, incarnation, [child], placement)
    return LineageChange(
        sealed=tuple(
            require_partition(conn, tenant, incarnation, p.partition_id, topic) for p in (low, high)
        ),
        created=(require_partition(conn, tenant, incarnation, child, topic),),
    )


def list_placements(conn: sqlite3.Connection, tenant: str, incarnation: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition_id, worker FROM placements WHERE tenant = ? AND incarnation = ?",
        (tenant, incarnation),
    )
    return {int(r["partition_id"]): int(r["worker"]) for r in rows}


def advance_start_offset(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    partition_id: int,
    start_offset: int,
    *,
    incarnation: str | None = None,
    fence: LeaseFence | None = None,  # one machine, one owner: nothing to check
) -> PartitionRecord:
    live = live_incarnation(conn, tenant, topic, incarnation)
    current = require_partition(conn, tenant, live, partition_id, topic)
    check_new_start(current, start_offset)
    # The start only rises: a report older than the row changes nothing, not even the version.
    conn.execute(
        "UPDATE partitions SET start_offset = MAX(start_offset, ?), "
        "version = version + (start_offset < ?) "
        "WHERE tenant = ? AND incarnation = ? AND partition_id = ?",
        (start_offset, start_offset, tenant, live, partition_id),
    )
    return require_partition(conn, tenant, live, partition_id, topic)
