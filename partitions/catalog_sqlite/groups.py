"""Consumer groups of a topic incarnation: generation, metadata and committed offsets.

A group is one row in ``groups`` and one row per partition in ``group_offsets``; every
change to either bumps the group row's version, so a writer holding an older version is
refused. Commits can also be fenced by generation, so a member from before a rebalance
cannot move the group's offsets.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from partitions.catalog import GroupRecord
from partitions.catalog_sqlite.incarnations import live_topic
from partitions.catalog_sqlite.rows import json_text
from partitions.errors import (
    GroupNotFoundError,
    InvalidOffsetError,
    PartitionNotFoundError,
    StaleGenerationError,
    VersionConflictError,
)


def _find_group(
    conn: sqlite3.Connection, tenant: str, incarnation: str, topic: str, group: str
) -> GroupRecord | None:
    row = conn.execute(
        "SELECT * FROM groups WHERE tenant = ? AND incarnation = ? AND name = ?",
        (tenant, incarnation, group),
    ).fetchone()
    if row is None:
        return None
    offsets = conn.execute(
        "SELECT partition_id, next_offset FROM group_offsets "
        "WHERE tenant = ? AND incarnation = ? AND name = ? ORDER BY partition_id",
        (tenant, incarnation, group),
    )
    return GroupRecord(
        tenant=tenant,
        topic=topic,
        group=group,
        generation=row["generation"],
        metadata=json.loads(row["metadata"]),
        offsets={r["partition_id"]: r["next_offset"] for r in offsets},
        version=row["version"],
    )


def _require_group(
    conn: sqlite3.Connection, tenant: str, incarnation: str, topic: str, group: str
) -> GroupRecord:
    found = _find_group(conn, tenant, incarnation, topic, group)
    if found is None:
        raise GroupNotFoundError(f"no group {group!r} on topic {topic!r}", group=group)
    return found


def _check_version(found: GroupRecord | None, expected: int | None, group: str) -> None:
    """Refuse unless the group is at ``expected`` (``None``: the group must not exist)."""
    current = None if found is None else found.version
    if current != expected:
        raise VersionConflictError(
            f"group {group!r} is at version {current}, not {expected}", version=current
        )


def get_group(conn: sqlite3.Connection, tenant: str, topic: str, group: str) -> GroupRecord:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    return _require_group(conn, tenant, incarnation, topic, group)


def list_groups(conn: sqlite3.Connection, tenant: str, topic: str) -> list[GroupRecord]:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    names = conn.execute(
        "SELECT name FROM groups WHERE tenant = ? AND incarnation = ? ORDER BY name",
        (tenant, incarnation),
    ).fetchall()
    groups = [_find_group(conn, tenant, incarnation, topic, r["name"]) for r in names]
    return [g for g in groups if g is not None]


def put_group(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    group: str,
    *,
    generation: int,
    metadata: Mapping[str, Any],
    expected_version: int | None,
) -> GroupRecord:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    found = _find_group(conn, tenant, incarnation, topic, group)
    _check_version(found, expected_version, group)
    conn.execute(
        "INSERT INTO groups VALUES (?, ?, ?, ?, ?, 1) "
        "ON CONFLICT (tenant, incarnation, name) DO UPDATE SET "
        "generation = excluded.generation, metadata = excluded.metadata, "
        "version = groups.version + 1",
        (tenant, incarnation, group, generation, json_text(metadata)),
    )
    return _require_group(conn, tenant, incarnation, topic, group)


def commit_offsets(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    group: str,
    offsets: Mapping[int, int],
    *,
    generation: int | None = None,
    expected_version: int | None = None,
) -> GroupRecord:
    for pid, offset in offsets.items():
        if offset < 0:
            raise InvalidOffsetError(
                f"a committed offset cannot be negative: {offset} for partition {pid}"
            )
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    known = {
        r["partition_id"]
        for r in conn.execute(
            "SELECT partition_id FROM partitions WHERE tenant = ? AND incarnation = ?",
            (tenant, incarnation),
        )
    }
    for pid in offsets:
        if pid not in known:
            raise PartitionNotFoundError(
                f"topic {topic!r} has no partition {pid}", topic=topic, partition=pid
            )
    found = _find_group(conn, tenant, incarnation, topic, group)
    if expected_version is not None:
        _check_version(found, expected_version, group)
    if generation is not None:
        current = None if found is None else found.generation
        if current != generation:
            raise StaleGenerationError(
                f"group {group!r} is at generation {current}, not {generation}",
                generation=current,
            )
    if found is None:
        conn.execute(
            "INSERT INTO groups VALUES (?, ?, ?, 0, '{}', 1)", (tenant, incarnation, group)
        )
    else:
        conn.execute(
            "UPDATE groups SET version = version + 1 "
            "WHERE tenant = ? AND incarnation = ? AND name = ?",
            (tenant, incarnation, group),
        )
    conn.executemany(
        "INSERT INTO group_offsets VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant, incarnation, name, partition_id) "
        "DO UPDATE SET next_offset = excluded.next_offset",
        [(tenant, incarnation, group, pid, off) for pid, off in offsets.items()],
    )
    return _require_group(conn, tenant, incarnation, topic, group)


def delete_group(
    conn: sqlite3.Connection,
    tenant: str,
    topic: str,
    group: str,
    *,
    expected_version: int | None = None,
) -> None:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    found = _find_group(conn, tenant, incarnation, topic, group)
    if found is None:
        raise GroupNotFoundError(f"no group {group!r} on topic {topic!r}", group=group)
    if expected_version is not None:
        _check_version(found, expected_version, group)
    for table in ("groups", "group_offsets"):
        conn.execute(
            f"DELETE FROM {table} WHERE tenant = ? AND incarnation = ? AND name = ?",  # noqa: S608
            (tenant, incarnation, group),
        )
