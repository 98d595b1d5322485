"""The SQLite catalog's file: its name, its schema and the steps that bring it up to date.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` brings an older
file up to date at open, one transaction per step, and a file from a newer build is refused
rather than misread. A released step is never edited, since a file already past it would
never see the change: a change is a new step.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from pathlib import Path

CATALOG_FILE = "catalog.sqlite3"
# WAL mode's shared-memory index beside the file, and the size SQLite first gives it.
SHARED_INDEX_SUFFIX = "-shm"
SHARED_INDEX_BYTES = 32 * 1024

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        quotas TEXT NOT NULL,
        plan TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_used_ms INTEGER,
        PRIMARY KEY (tenant, key_id)
    );
    CREATE TABLE topics (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        deleted_ms INTEGER,
        next_partition_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation)
    );
    CREATE UNIQUE INDEX topics_live_name ON topics (tenant, name) WHERE deleted_ms IS NULL;
    CREATE TABLE partitions (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        partition_id INTEGER NOT NULL,
        hash_start TEXT NOT NULL,
        hash_end TEXT NOT NULL,
        state TEXT NOT NULL,
        parents TEXT NOT NULL,
        children TEXT NOT NULL,
        start_offset INTEGER NOT NULL,
        end_offset INTEGER,
        created_ms INTEGER NOT NULL,
        sealed_ms INTEGER,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, partition_id)
    );
    CREATE TABLE groups (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        name TEXT NOT NULL,
        generation INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, name)
    );
    CREATE TABLE group_offsets (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        name TEXT NOT NULL,
        partition_id INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, name, partition_id)
    );
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        answer TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, key)
    );
    CREATE INDEX idempotency_expiry ON idempotency (expires_ms);
    CREATE TABLE remote_segments (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        partition_id INTEGER NOT NULL,
        base_offset INTEGER NOT NULL,
        last_offset INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        first_timestamp_ms INTEGER NOT NULL,
        max_timestamp_ms INTEGER NOT NULL,
        object_key TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, partition_id, base_offset)
    );
    """,
    # 2: installation-wide settings (the admin key's hash, for one).
    """
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 3: metered usage, one row per tenant and UTC hour. No foreign key to tenants: a
    # deleted tenant's usage stays for its last bill.
    """
    CREATE TABLE usage (
        hour_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        requests INTEGER NOT NULL,
        records_in INTEGER NOT NULL,
        records_out INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        stored_byte_seconds INTEGER NOT NULL,
        partition_seconds INTEGER NOT NULL,
        PRIMARY KEY (hour_ms, tenant)
    ) WITHOUT ROWID;
    CREATE INDEX usage_by_tenant ON usage (tenant, hour_ms);
    """,
    # 4: which worker process owns each partition (chosen when the partition is made).
    """
    CREATE TABLE placements (
        tenant TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        partition_id INTEGER NOT NULL,
        worker INTEGER NOT NULL,
        PRIMARY KEY (tenant, incarnation, partition_id)
    );
    """,
    # 5: the lease epoch a remote segment's objects were uploaded under (part of their keys
    # when not 0); every row before it is of epoch 0, whose keys carry none.
    """
    ALTER TABLE remote_segments ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open the catalog file for the store's one thread.

    WAL with ``synchronous=FULL``: a committed transaction survives a crash of the process
    or of the machine, and a backup reads while the server writes.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
    except BaseException:
        conn.close()
        raise
    return conn


def keep_shared_index_room(path: Path) -> None:
    """Put back the ``-shm`` file beside the catalog at ``path`` if SQLite removed it.

    In WAL mode even a read needs the shared-memory index, and the first connection to open
    the file writes its 32 KiB; on a full disk that fails ("disk I/O error",
    ``SQLITE_IOERR_SHMSIZE``), so a server restarted on a full disk could not read its
    catalog at all. SQLite removes the file when the last connection closes cleanly: this
    puts a file of that size back, so that the next open finds the room it needs. The first
    connection to open the catalog truncates and rebuilds whatever index it finds, so the
    content does not matter; the file appears whole or not at all (a link of a complete
    temporary file, which fails if another process made one meanwhile). Best effort: with
    no room for it now, the next open makes it as before.
    """
    index = path.with_name(path.name + SHARED_INDEX_SUFFIX)
    if index.exists() or not path.exists():
        return
    tmp = path.with_name(f"{path.name}{SHARED_INDEX_SUFFIX}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, path.stat().st_mode & 0o777)
            written = 0
            while written < SHARED_INDEX_BYTES:
                written += os.write(fd, bytes(SHARED_INDEX_BYTES - written))
        finally:
            os.close(fd)
        os.link(tmp, index)
    except OSError:
        pass  # no room (the next open tries as before), or another process made one
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; answers the version found."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the catalog has schema version {found}; this build knows up to {SCHEMA_VERSION}"
        )
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found


def backup_catalog(source: Path, destination: Path) -> None:
    """Write a consistent copy of the catalog at ``source`` to ``destination``.

    Uses SQLite's online backup, so it is safe while a server writes to ``source``; the
    copy is written to a temporary file, fsync'd and renamed into place.
    """
    if not source.exists():
        raise FileNotFoundError(f"no catalog at {source}")
    src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    tmp = destination.with_name(destination.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(destination)
    dir_fd = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
