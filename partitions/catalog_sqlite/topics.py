"""Topics: each name's incarnations, their config, deletion and, once the data is gone, purge.

Creating a topic makes a new incarnation and its partition 0 over the whole hash space in
one transaction. Deleting one marks the incarnation deleted and drops its groups and
idempotency records; its partitions, placements and remote segments stay until
``purge_topic``, since the data they describe is still being cleaned up.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import partitions.catalog_sqlite.tenants as tenants
from partitions.catalog import WHOLE_SPACE, PartitionRecord, TopicRecord
from partitions.catalog_rules import check_partition_limit, check_topic_limit
from partitions.catalog_sqlite.incarnations import live_topic
from partitions.catalog_sqlite.lineage import insert_partition, place, require_partition
from partitions.catalog_sqlite.rows import json_text, topic_record
from partitions.errors import TopicExistsError, TopicNotFoundError, VersionConflictError


def create_topic(
    conn: sqlite3.Connection,
    tenant: str,
    name: str,
    config: Mapping[str, Any],
    *,
    max_topics: int | None,
    max_partitions: int | None,
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
) -> tuple[TopicRecord, PartitionRecord]:
    tenants.require_tenant(conn, tenant)
    existing = conn.execute(
        "SELECT incarnation FROM topics WHERE tenant = ? AND name = ? AND deleted_ms IS NULL",
        (tenant, name),
    ).fetchone()
    if existing is not None:
        raise TopicExistsError(
            f"topic {name!r} exists", topic=name, incarnation=existing["incarnation"]
        )
    if max_topics is not None or max_partitions is not None:
        counts = tenants.live_counts(conn, tenant)
        check_topic_limit(counts, tenant, max_topics)
        check_partition_limit(counts, tenant, 1, max_partitions)
    incarnation = str(uuid.uuid4())
    now = clock_ms()
    conn.execute(
        "INSERT INTO topics VALUES (?, ?, ?, ?, ?, NULL, 1, 1)",
        (tenant, incarnation, name, json_text(config), now),
    )
    insert_partition(conn, tenant, incarnation, 0, WHOLE_SPACE, (), now)
    place(conn, tenant, incarnation, [0], placement)
    topic = topic_record(live_topic(conn, tenant, name))
    return topic, require_partition(conn, tenant, incarnation, 0, name)


def get_topic(conn: sqlite3.Connection, tenant: str, name: str) -> TopicRecord:
    return topic_record(live_topic(conn, tenant, name))


def list_topics(
    conn: sqlite3.Connection, tenant: str, *, after: str | None = None, limit: int = 100
) -> list[TopicRecord]:
    rows = conn.execute(
        "SELECT * FROM topics WHERE tenant = ? AND deleted_ms IS NULL AND name > ? "
        "ORDER BY name LIMIT ?",
        (tenant, after or "", limit),
    )
    return [topic_record(r) for r in rows]


def update_topic_config(
    conn: sqlite3.Connection,
    tenant: str,
    name: str,
    config: Mapping[str, Any],
    *,
    expected_version: int,
) -> TopicRecord:
    row = live_topic(conn, tenant, name)
    if row["version"] != expected_version:
        raise VersionConflictError(
            f"topic {name!r} is at version {row['version']}, not {expected_version}",
            version=row["version"],
        )
    conn.execute(
        "UPDATE topics SET config = ?, version = version + 1 WHERE tenant = ? AND incarnation = ?",
        (json_text(config), tenant, row["incarnation"]),
    )
    return topic_record(live_topic(conn, tenant, name))


def delete_topic(
    conn: sqlite3.Connection, tenant: str, name: str, *, clock_ms: Callable[[], int]
) -> TopicRecord:
    row = live_topic(conn, tenant, name)
    incarnation = row["incarnation"]
    conn.execute(
        "UPDATE topics SET deleted_ms = ?, version = version + 1 "
        "WHERE tenant = ? AND incarnation = ?",
        (clock_ms(), tenant, incarnation),
    )
    for table in ("groups", "group_offsets", "idempotency"):
        conn.execute(
            f"DELETE FROM {table} WHERE tenant = ? AND incarnation = ?",  # noqa: S608
            (tenant, incarnation),
        )
    gone = conn.execute(
        "SELECT * FROM topics WHERE tenant = ? AND incarnation = ?", (tenant, incarnation)
    )
    return topic_record(gone.fetchone())


def list_deleted_topics(conn: sqlite3.Connection) -> list[TopicRecord]:
    rows = conn.execute("SELECT * FROM topics WHERE deleted_ms IS NOT NULL ORDER BY deleted_ms")
    return [topic_record(r) for r in rows]


def purge_topic(conn: sqlite3.Connection, tenant: str, incarnation: str) -> None:
    row = conn.execute(
        "SELECT deleted_ms FROM topics WHERE tenant = ? AND incarnation = ?",
        (tenant, incarnation),
    ).fetchone()
    if row is None:
        raise TopicNotFoundError(f"no topic incarnation {incarnation}")
    if row["deleted_ms"] is None:
        raise TopicExistsError(
            f"incarnation {incarnation} is live; delete the topic first",
            incarnation=incarnation,
        )
    for table in ("partitions", "placements", "remote_segments", "topics"):
        conn.execute(
            f"DELETE FROM {table} WHERE tenant = ? AND incarnation = ?",  # noqa: S608
            (tenant, incarnation),
        )
