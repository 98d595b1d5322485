"""Idempotency records: the answer given to a keyed request, kept until it expires.

Expired records are ignored by every read before ``forget_expired_answers`` deletes them,
so an answer past its expiry is never returned however late the cleanup runs.
"""

from __future__ import annotations

import sqlite3

from partitions.catalog import IdempotencyRecord
from partitions.catalog_sqlite.incarnations import live_topic


def remember_answer(
    conn: sqlite3.Connection, record: IdempotencyRecord, *, now_ms: int
) -> IdempotencyRecord:
    """Keep ``record`` unless a live answer for its key exists; answers the one kept."""
    incarnation = live_topic(conn, record.tenant, record.topic)["incarnation"]
    row = conn.execute(
        "SELECT * FROM idempotency WHERE tenant = ? AND incarnation = ? AND key = ? "
        "AND expires_ms > ?",
        (record.tenant, incarnation, record.key, now_ms),
    ).fetchone()
    if row is not None:
        return IdempotencyRecord(
            tenant=record.tenant,
            topic=record.topic,
            key=record.key,
            request_hash=row["request_hash"],
            answer=row["answer"],
            expires_ms=row["expires_ms"],
        )
    conn.execute(
        "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.tenant,
            incarnation,
            record.key,
            record.request_hash,
            record.answer,
            record.expires_ms,
        ),
    )
    return record


def find_answer(
    conn: sqlite3.Connection, tenant: str, topic: str, key: str, *, now_ms: int
) -> IdempotencyRecord | None:
    incarnation = live_topic(conn, tenant, topic)["incarnation"]
    row = conn.execute(
        "SELECT * FROM idempotency WHERE tenant = ? AND incarnation = ? AND key = ? "
        "AND expires_ms > ?",
        (tenant, incarnation, key, now_ms),
    ).fetchone()
    if row is None:
        return None
    return IdempotencyRecord(
        tenant=tenant,
        topic=topic,
        key=key,
        request_hash=row["request_hash"],
        answer=row["answer"],
        expires_ms=row["expires_ms"],
    )


def forget_expired_answers(conn: sqlite3.Connection, *, now_ms: int) -> int:
    return conn.execute("DELETE FROM idempotency WHERE expires_ms <= ?", (now_ms,)).rowcount
