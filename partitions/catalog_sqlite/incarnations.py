"""A topic name's live incarnation: where every operation that names a topic starts.

A name has at most one live incarnation (the unique index ``topics_live_name`` holds only
rows not deleted). Deleting a topic and creating the name again makes a new incarnation, so
a caller that read the incarnation earlier can name the one it expects and be refused if
the topic it meant is gone.
"""

from __future__ import annotations

import sqlite3

from partitions.errors import TopicNotFoundError


def live_topic(conn: sqlite3.Connection, tenant: str, name: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM topics WHERE tenant = ? AND name = ? AND deleted_ms IS NULL",
        (tenant, name),
    ).fetchone()
    if row is None:
        raise TopicNotFoundError(f"no topic {name!r}", topic=name)
    return row


def live_incarnation(
    conn: sqlite3.Connection, tenant: str, topic: str, expected: str | None
) -> str:
    """The live incarnation of ``topic``; with ``expected``, only if it is that one."""
    live = str(live_topic(conn, tenant, topic)["incarnation"])
    if expected is not None and live != expected:
        raise TopicNotFoundError(f"topic {topic!r} was deleted (and created again)", topic=topic)
    return live
