"""Tenants and their API keys, and the counts that a tenant's limits are checked against.

The counts are taken in the transaction of the change they limit (a topic created, a
partition split), so two racing changes cannot both slip under a limit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from partitions.catalog import ApiKeyRecord, TenantCounts, TenantRecord, TopicRecord
from partitions.catalog_sqlite.rows import api_key_record, json_text, tenant_record, topic_record
from partitions.errors import (
    ApiKeyNotFoundError,
    TenantExistsError,
    TenantNotFoundError,
    VersionConflictError,
)


def require_tenant(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM tenants WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise TenantNotFoundError(f"no tenant {name!r}", tenant=name)
    return row


def create_tenant(
    conn: sqlite3.Connection,
    name: str,
    *,
    quotas: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None,
    clock_ms: Callable[[], int],
) -> TenantRecord:
    if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
        raise TenantExistsError(f"tenant {name!r} exists", tenant=name)
    conn.execute(
        "INSERT INTO tenants VALUES (?, ?, ?, ?, 1)",
        (name, clock_ms(), json_text(quotas or {}), json_text(plan or {})),
    )
    return tenant_record(require_tenant(conn, name))


def get_tenant(conn: sqlite3.Connection, name: str) -> TenantRecord:
    return tenant_record(require_tenant(conn, name))


def list_tenants(conn: sqlite3.Connection) -> list[TenantRecord]:
    return [tenant_record(r) for r in conn.execute("SELECT * FROM tenants ORDER BY name")]


def update_tenant(
    conn: sqlite3.Connection,
    name: str,
    *,
    expected_version: int,
    quotas: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
) -> TenantRecord:
    row = require_tenant(conn, name)
    if row["version"] != expected_version:
        raise VersionConflictError(
            f"tenant {name!r} is at version {row['version']}, not {expected_version}",
            version=row["version"],
        )
    conn.execute(
        "UPDATE tenants SET quotas = ?, plan = ?, version = version + 1 WHERE name = ?",
        (
            json_text(quotas if quotas is not None else json.loads(row["quotas"])),
            json_text(plan if plan is not None else json.loads(row["plan"])),
            name,
        ),
    )
    return tenant_record(require_tenant(conn, name))


def delete_tenant(
    conn: sqlite3.Connection, name: str, *, clock_ms: Callable[[], int]
) -> list[TopicRecord]:
    """Forget the tenant, its keys and its groups; answers the topics this deleted."""
    require_tenant(conn, name)
    now = clock_ms()
    conn.execute(
        "UPDATE topics SET deleted_ms = ?, version = version + 1 "
        "WHERE tenant = ? AND deleted_ms IS NULL",
        (now, name),
    )
    for table in ("groups", "group_offsets", "idempotency", "api_keys"):
        conn.execute(f"DELETE FROM {table} WHERE tenant = ?", (name,))  # noqa: S608
    conn.execute("DELETE FROM tenants WHERE name = ?", (name,))
    rows = conn.execute("SELECT * FROM topics WHERE tenant = ? AND deleted_ms = ?", (name, now))
    return [topic_record(r) for r in rows]


def live_counts(conn: sqlite3.Connection, tenant: str) -> TenantCounts:
    topics = conn.execute(
        "SELECT COUNT(*) FROM topics WHERE tenant = ? AND deleted_ms IS NULL", (tenant,)
    ).fetchone()[0]
    # Partitions of a deleted incarnation not yet purged do not count.
    active = conn.execute(
        "SELECT COUNT(*) FROM partitions p JOIN topics t "
        "ON t.tenant = p.tenant AND t.incarnation = p.incarnation "
        "WHERE p.tenant = ? AND p.state = 'active' AND t.deleted_ms IS NULL",
        (tenant,),
    ).fetchone()[0]
    return TenantCounts(topics=int(topics), active_partitions=int(active))


def tenant_counts(conn: sqlite3.Connection, tenant: str) -> TenantCounts:
    require_tenant(conn, tenant)
    return live_counts(conn, tenant)


def add_api_key(
    conn: sqlite3.Connection,
    tenant: str,
    key_id: str,
    key_hash: str,
    scope: Mapping[str, Any],
    *,
    clock_ms: Callable[[], int],
) -> ApiKeyRecord:
    require_tenant(conn, tenant)
    conn.execute(
        "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
        (tenant, key_id, key_hash, json_text(scope), clock_ms()),
    )
    row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
    return api_key_record(row.fetchone())


def find_api_key(conn: sqlite3.Connection, key_hash: str) -> ApiKeyRecord | None:
    row = conn.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
    found = row.fetchone()
    return None if found is None else api_key_record(found)


def list_api_keys(conn: sqlite3.Connection, tenant: str) -> list[ApiKeyRecord]:
    require_tenant(conn, tenant)
    rows = conn.execute(
        "SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_ms, key_id", (tenant,)
    )
    return [api_key_record(r) for r in rows]


def revoke_api_key(conn: sqlite3.Connection, tenant: str, key_id: str) -> None:
    gone = conn.execute("DELETE FROM api_keys WHERE tenant = ? AND key_id = ?", (tenant, key_id))
    if gone.rowcount == 0:
        raise ApiKeyNotFoundError(f"no key {key_id!r} for tenant {tenant!r}")


def touch_api_key(conn: sqlite3.Connection, tenant: str, key_id: str, used_ms: int) -> None:
    conn.execute(
        "UPDATE api_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?) "
        "WHERE tenant = ? AND key_id = ?",
        (used_ms, tenant, key_id),
    )
