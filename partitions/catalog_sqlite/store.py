""":class:`SqliteCatalog`: the catalog Protocol over one SQLite connection.

One connection on one dedicated thread does every read and write, so the event loop never
blocks on SQLite and operations are serialised: each is a single ``BEGIN IMMEDIATE``
transaction that either commits whole or changes nothing. Each method runs one function of
an entity module in that transaction (most are bound with :class:`transaction`, taking the
function's own parameters); what the operation does is there, not here.

It is also the one place where SQLite's failures of a full disk become the event bus's:
every operation (and the opening) that finds no room to write raises
:class:`~partitions.errors.DiskFullError`, retriable, whatever SQLite called it; reads go
on while the disk is full.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import partitions.catalog_sqlite.groups as groups
import partitions.catalog_sqlite.idempotency as idempotency
import partitions.catalog_sqlite.lineage as lineage
import partitions.catalog_sqlite.segments as segments
import partitions.catalog_sqlite.settings as settings
import partitions.catalog_sqlite.tenants as tenants
import partitions.catalog_sqlite.topics as topics
import partitions.catalog_sqlite.usage as usage
from partitions.catalog import (
    ApiKeyRecord,
    Catalog,
    LeaseFence,
    LineageChange,
    PartitionRecord,
    TenantRecord,
    TopicRecord,
    UsageRecord,
)
from partitions.catalog_rules import check_placement
from partitions.catalog_sqlite.schema import (
    backup_catalog,
    connect,
    keep_shared_index_room,
    migrate,
)
from partitions.errors import DiskFullError

P = ParamSpec("P")
T = TypeVar("T")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Below this much free space, an I/O error of SQLite's is taken for a full disk: it writes
# pages of a few KiB, and a write the kernel refuses for room may leave some space free.
NEARLY_FULL_BYTES = 1 << 20


def out_of_space(exc: sqlite3.Error, directory: Path) -> bool:
    """Whether SQLite failed for want of room on the device holding ``directory``.

    A write refused with ``ENOSPC`` is ``SQLITE_FULL`` ("database or disk is full"). Some
    writes report a full disk as ``SQLITE_IOERR`` ("disk I/O error") instead: sizing the
    shared-memory index of WAL mode, an fsync on some file systems. SQLite does not say
    which errno was behind those, so the device's free space decides.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return False
    primary = code & 0xFF
    if primary == sqlite3.SQLITE_FULL:
        return True
    if primary != sqlite3.SQLITE_IOERR:
        return False
    try:
        room = os.statvfs(directory)
    except OSError:
        return False
    return room.f_bavail * room.f_frsize < NEARLY_FULL_BYTES


class transaction(Generic[P, T]):  # noqa: N801 - read as a decorator of the class's methods
    """A method of :class:`SqliteCatalog` that runs an entity module's function,
    ``fn(conn, *args, **kwargs)``, in one transaction: the method has the function's
    parameters (but the connection) and answers what it answers."""

    def __init__(self, fn: Callable[Concatenate[sqlite3.Connection, P], T]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> transaction[P, T]: ...

    @overload
    def __get__(
        self, instance: SqliteCatalog, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(
        self, instance: SqliteCatalog | None, owner: type[Any]
    ) -> transaction[P, T] | Callable[P, Coroutine[Any, Any, T]]:
        if instance is None:
            return self
        return partial(instance._tx, self._fn)


class SqliteCatalog:
    """:class:`partitions.catalog.Catalog` in one SQLite file.

    Lease fences (``fence=``, ``fences=`` of the owner-side writes) are accepted and
    ignored: a SQLite catalog serves one machine, which has one owner of each partition,
    so no write can come from an owner that lost its partition to another node.
    """

    def __init__(self, path: Path, clock_ms: Callable[[], int]) -> None:
        self.path = path
        self._clock_ms = clock_ms
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(
        cls, path: Path, *, clock_ms: Callable[[], int] = wall_clock_ms
    ) -> SqliteCatalog:
        self = cls(path, clock_ms)
        try:
            await self._run(self._open)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            migrate(conn)
        except BaseException:
            conn.close()  # an open that failed (a full disk) leaves no file open
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close)
            self._conn = None
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            keep_shared_index_room(self.path)

    async def backup(self, destination: Path) -> None:
        await self._run(backup_catalog, self.path, destination)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, partial(self._on_thread, partial(fn, *args, **kwargs))
        )

    def _on_thread(self, call: Callable[[], T]) -> T:
        """``call()`` on the catalog's thread, a full disk raised as :class:`DiskFullError`
        (the free space is looked up here, off the event loop)."""
        try:
            return call()
        except sqlite3.Error as exc:
            if out_of_space(exc, self.path.parent):
                raise DiskFullError(
                    f"no space left on the device holding the catalog {self.path}: {exc}"
                ) from exc
            raise

    async def _tx(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one immediate transaction on the catalog thread."""

        def operation(conn: sqlite3.Connection) -> T:
            return fn(conn, *args, **kwargs)

        return await self._run(self._in_transaction, operation)

    def _in_transaction(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the catalog is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = operation(conn)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (a failed COMMIT, some I/O errors): only
            # roll back what is still open, so that the original error is what surfaces.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # --- settings ------------------------------------------------------------------------

    get_setting = transaction(settings.get_setting)

    put_setting = transaction(settings.put_setting)

    # --- tenants and keys ----------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> TenantRecord:
        return await self._tx(
            tenants.create_tenant, name, quotas=quotas, plan=plan, clock_ms=self._clock_ms
        )

    get_tenant = transaction(tenants.get_tenant)

    list_tenants = transaction(tenants.list_tenants)

    update_tenant = transaction(tenants.update_tenant)

    async def delete_tenant(self, name: str) -> list[TopicRecord]:
        return await self._tx(tenants.delete_tenant, name, clock_ms=self._clock_ms)

    tenant_counts = transaction(tenants.tenant_counts)

    async def add_api_key(
        self, tenant: str, key_id: str, key_hash: str, scope: Mapping[str, Any]
    ) -> ApiKeyRecord:
        return await self._tx(
            tenants.add_api_key, tenant, key_id, key_hash, scope, clock_ms=self._clock_ms
        )

    find_api_key = transaction(tenants.find_api_key)

    list_api_keys = transaction(tenants.list_api_keys)

    revoke_api_key = transaction(tenants.revoke_api_key)

    touch_api_key = transaction(tenants.touch_api_key)

    # --- topics --------------------------------------------------------------------------

    async def create_topic(
        self,
        tenant: str,
        name: str,
        config: Mapping[str, Any],
        *,
        max_topics: int | None = None,
        max_partitions: int | None = None,
        placement: Sequence[int] | None = None,
    ) -> tuple[TopicRecord, PartitionRecord]:
        check_placement(placement, 1)
        return await self._tx(
            topics.create_topic,
            tenant,
            name,
            config,
            max_topics=max_topics,
            max_partitions=max_partitions,
            placement=placement,
            clock_ms=self._clock_ms,
        )

    get_topic = transaction(topics.get_topic)

    list_topics = transaction(topics.list_topics)

    update_topic_config = transaction(topics.update_topic_config)

    async def delete_topic(self, tenant: str, name: str) -> TopicRecord:
        return await self._tx(topics.delete_topic, tenant, name, clock_ms=self._clock_ms)

    list_deleted_topics = transaction(topics.list_deleted_topics)

    purge_topic = transaction(topics.purge_topic)

    # --- partitions and lineage ----------------------------------------------------------

    list_partitions = transaction(lineage.list_partitions)

    get_partition = transaction(lineage.get_partition)

    async def split_partition(
        self,
        tenant: str,
        topic: str,
        partition_id: int,
        *,
        at: int,
        end_offset: int,
        max_partitions: int | None = None,
        placement: Sequence[int] | None = None,
        fence: LeaseFence | None = None,
    ) -> LineageChange:
        check_placement(placement, 2)
        return await self._tx(
            lineage.split_partition,
            tenant,
            topic,
            partition_id,
            at=at,
            end_offset=end_offset,
            max_partitions=max_partitions,
            placement=placement,
            clock_ms=self._clock_ms,
            fence=fence,
        )

    async def merge_partitions(
        self,
        tenant: str,
        topic: str,
        partition_ids: Sequence[int],
        *,
        end_offsets: Sequence[int],
        placement: Sequence[int] | None = None,
        fences: Sequence[LeaseFence] | None = None,
    ) -> LineageChange:
        check_placement(placement, 1)
        return await self._tx(
            lineage.merge_partitions,
            tenant,
            topic,
            partition_ids,
            end_offsets=end_offsets,
            placement=placement,
            clock_ms=self._clock_ms,
            fences=fences,
        )

    list_placements = transaction(lineage.list_placements)

    advance_start_offset = transaction(lineage.advance_start_offset)

    # --- consumer groups -----------------------------------------------------------------

    get_group = transaction(groups.get_group)

    list_groups = transaction(groups.list_groups)

    put_group = transaction(groups.put_group)

    commit_offsets = transaction(groups.commit_offsets)

    delete_group = transaction(groups.delete_group)

    # --- idempotency ---------------------------------------------------------------------

    remember_answer = transaction(idempotency.remember_answer)

    find_answer = transaction(idempotency.find_answer)

    forget_expired_answers = transaction(idempotency.forget_expired_answers)

    # --- remote segments -----------------------------------------------------------------

    add_remote_segment = transaction(segments.add_remote_segment)

    set_remote_segment_state = transaction(segments.set_remote_segment_state)

    list_remote_segments = transaction(segments.list_remote_segments)

    remove_remote_segment = transaction(segments.remove_remote_segment)

    list_remote_segments_in_state = transaction(segments.list_remote_segments_in_state)

    # --- usage ---------------------------------------------------------------------------

    async def add_usage(self, deltas: Sequence[UsageRecord]) -> None:
        rows = usage.usage_rows(deltas)
        if rows:
            await self._tx(usage.add_usage, rows)

    list_usage = transaction(usage.list_usage)


def _conforms(catalog: SqliteCatalog) -> Catalog:
    """Lets mypy prove that this store implements the whole Protocol."""
    return catalog
