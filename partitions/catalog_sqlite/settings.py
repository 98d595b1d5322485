"""Installation-wide settings (the admin key's hash, for one): a name and a text value."""

from __future__ import annotations

import sqlite3


def get_setting(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row["value"])


def put_setting(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
