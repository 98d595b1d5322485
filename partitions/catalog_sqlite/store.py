"""The catalog in SQLite, for one node: a file in the data directory.

One connection on one dedicated thread does every read and write, so the event loop never
blocks on SQLite and operations are serialised: each is a single ``BEGIN IMMEDIATE``
transaction that either commits whole or changes nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import partitions.catalog_sqlite.groups as groups
import partitions.catalog_sqlite.idempotency as idempotency
import partitions.catalog_sqlite.lineage as lineage
import partitions.catalog_sqlite.settings as settings
import partitions.catalog_sqlite.tenants as tenants
import partitions.catalog_sqlite.topics as topics
from partitions.catalog import (
    HOUR_MS,
    USAGE_COUNTERS,
    ApiKeyRecord,
    Catalog,
    GroupRecord,
    IdempotencyRecord,
    LineageChange,
    PartitionRecord,
    RemoteSegmentRecord,
    RemoteSegmentState,
    TenantCounts,
    TenantRecord,
    TopicRecord,
    UsageCounters,
    UsageRecord,
)
from partitions.catalog_sqlite.rows import (
    remote_segment_record,
)
from partitions.catalog_sqlite.schema import backup_catalog, connect, migrate
from partitions.errors import (
    InvalidOffsetError,
    RemoteSegmentExistsError,
    RemoteSegmentNotFoundError,
    RemoteSegmentStateError,
    TopicNotFoundError,
)

P = ParamSpec("P")
T = TypeVar("T")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteCatalog:
    """:class:`partitions.catalog.Catalog` in one SQLite file."""

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
        self._conn = connect(self.path)
        migrate(self._conn)

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)

    async def backup(self, destination: Path) -> None:
        await self._run(backup_catalog, self.path, destination)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(fn, *args, **kwargs))

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

    async def get_setting(self, name: str) -> str | None:
        return await self._tx(settings.get_setting, name)

    async def put_setting(self, name: str, value: str) -> None:
        await self._tx(settings.put_setting, name, value)

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

    async def get_tenant(self, name: str) -> TenantRecord:
        return await self._tx(tenants.get_tenant, name)

    async def list_tenants(self) -> list[TenantRecord]:
        return await self._tx(tenants.list_tenants)

    async def update_tenant(
        self,
        name: str,
        *,
        expected_version: int,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> TenantRecord:
        return await self._tx(
            tenants.update_tenant, name, expected_version=expected_version, quotas=quotas, plan=plan
        )

    async def delete_tenant(self, name: str) -> list[TopicRecord]:
        return await self._tx(tenants.delete_tenant, name, clock_ms=self._clock_ms)

    async def tenant_counts(self, tenant: str) -> TenantCounts:
        return await self._tx(tenants.tenant_counts, tenant)

    async def add_api_key(
        self, tenant: str, key_id: str, key_hash: str, scope: Mapping[str, Any]
    ) -> ApiKeyRecord:
        return await self._tx(
            tenants.add_api_key, tenant, key_id, key_hash, scope, clock_ms=self._clock_ms
        )

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        return await self._tx(tenants.find_api_key, key_hash)

    async def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]:
        return await self._tx(tenants.list_api_keys, tenant)

    async def revoke_api_key(self, tenant: str, key_id: str) -> None:
        await self._tx(tenants.revoke_api_key, tenant, key_id)

    async def touch_api_key(self, tenant: str, key_id: str, used_ms: int) -> None:
        await self._tx(tenants.touch_api_key, tenant, key_id, used_ms)

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
        lineage.check_placement(placement, 1)
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

    async def get_topic(self, tenant: str, name: str) -> TopicRecord:
        return await self._tx(topics.get_topic, tenant, name)

    async def list_topics(
        self, tenant: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicRecord]:
        return await self._tx(topics.list_topics, tenant, after=after, limit=limit)

    async def update_topic_config(
        self, tenant: str, name: str, config: Mapping[str, Any], *, expected_version: int
    ) -> TopicRecord:
        return await self._tx(
            topics.update_topic_config, tenant, name, config, expected_version=expected_version
        )

    async def delete_topic(self, tenant: str, name: str) -> TopicRecord:
        return await self._tx(topics.delete_topic, tenant, name, clock_ms=self._clock_ms)

    async def list_deleted_topics(self) -> list[TopicRecord]:
        return await self._tx(topics.list_deleted_topics)

    async def purge_topic(self, tenant: str, incarnation: str) -> None:
        await self._tx(topics.purge_topic, tenant, incarnation)

    # --- partitions and lineage ----------------------------------------------------------

    async def list_partitions(
        self, tenant: str, topic: str, *, incarnation: str | None = None
    ) -> list[PartitionRecord]:
        return await self._tx(lineage.list_partitions, tenant, topic, incarnation=incarnation)

    async def get_partition(self, tenant: str, topic: str, partition_id: int) -> PartitionRecord:
        return await self._tx(lineage.get_partition, tenant, topic, partition_id)

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
    ) -> LineageChange:
        lineage.check_placement(placement, 2)
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
        )

    async def merge_partitions(
        self,
        tenant: str,
        topic: str,
        partition_ids: Sequence[int],
        *,
        end_offsets: Sequence[int],
        placement: Sequence[int] | None = None,
    ) -> LineageChange:
        lineage.check_placement(placement, 1)
        return await self._tx(
            lineage.merge_partitions,
            tenant,
            topic,
            partition_ids,
            end_offsets=end_offsets,
            placement=placement,
            clock_ms=self._clock_ms,
        )

    async def list_placements(self, tenant: str, incarnation: str) -> dict[int, int]:
        return await self._tx(lineage.list_placements, tenant, incarnation)

    async def advance_start_offset(
        self,
        tenant: str,
        topic: str,
        partition_id: int,
        start_offset: int,
        *,
        incarnation: str | None = None,
    ) -> PartitionRecord:
        return await self._tx(
            lineage.advance_start_offset,
            tenant,
            topic,
            partition_id,
            start_offset,
            incarnation=incarnation,
        )

    # --- consumer groups -----------------------------------------------------------------

    async def get_group(self, tenant: str, topic: str, group: str) -> GroupRecord:
        return await self._tx(groups.get_group, tenant, topic, group)

    async def list_groups(self, tenant: str, topic: str) -> list[GroupRecord]:
        return await self._tx(groups.list_groups, tenant, topic)

    async def put_group(
        self,
        tenant: str,
        topic: str,
        group: str,
        *,
        generation: int,
        metadata: Mapping[str, Any],
        expected_version: int | None,
    ) -> GroupRecord:
        return await self._tx(
            groups.put_group,
            tenant,
            topic,
            group,
            generation=generation,
            metadata=metadata,
            expected_version=expected_version,
        )

    async def commit_offsets(
        self,
        tenant: str,
        topic: str,
        group: str,
        offsets: Mapping[int, int],
        *,
        generation: int | None = None,
        expected_version: int | None = None,
    ) -> GroupRecord:
        return await self._tx(
            groups.commit_offsets,
            tenant,
            topic,
            group,
            offsets,
            generation=generation,
            expected_version=expected_version,
        )

    async def delete_group(
        self, tenant: str, topic: str, group: str, *, expected_version: int | None = None
    ) -> None:
        await self._tx(groups.delete_group, tenant, topic, group, expected_version=expected_version)

    # --- idempotency ---------------------------------------------------------------------

    async def remember_answer(self, record: IdempotencyRecord, *, now_ms: int) -> IdempotencyRecord:
        return await self._tx(idempotency.remember_answer, record, now_ms=now_ms)

    async def find_answer(
        self, tenant: str, topic: str, key: str, *, now_ms: int
    ) -> IdempotencyRecord | None:
        return await self._tx(idempotency.find_answer, tenant, topic, key, now_ms=now_ms)

    async def forget_expired_answers(self, *, now_ms: int) -> int:
        return await self._tx(idempotency.forget_expired_answers, now_ms=now_ms)

    # --- remote segments -----------------------------------------------------------------

    def _segment_row(
        self, conn: sqlite3.Connection, tenant: str, incarnation: str, pid: int, base: int
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

    async def add_remote_segment(self, record: RemoteSegmentRecord) -> RemoteSegmentRecord:
        def op(conn: sqlite3.Connection) -> RemoteSegmentRecord:
            if record.state is not RemoteSegmentState.COPY_STARTED:
                raise RemoteSegmentStateError("a remote segment starts as copy-started")
            if record.last_offset < record.base_offset:
                raise InvalidOffsetError("a remote segment's last offset is below its base")
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
                    "INSERT INTO remote_segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
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
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise RemoteSegmentExistsError(
                    f"remote segment {record.base_offset} of partition {record.partition_id} "
                    "is already recorded",
                    base_offset=record.base_offset,
                ) from exc
            return self._segment_row(
                conn, record.tenant, record.incarnation, record.partition_id, record.base_offset
            )

        return await self._tx(op)

    async def set_remote_segment_state(
        self,
        tenant: str,
        incarnation: str,
        partition_id: int,
        base_offset: int,
        *,
        from_state: RemoteSegmentState,
        to_state: RemoteSegmentState,
    ) -> RemoteSegmentRecord:
        def op(conn: sqlite3.Connection) -> RemoteSegmentRecord:
            current = self._segment_row(conn, tenant, incarnation, partition_id, base_offset)
            if current.state is not from_state:
                raise RemoteSegmentStateError(
                    f"remote segment {base_offset} is {current.state.value}, "
                    f"not {from_state.value}",
                    state=current.state.value,
                )
            conn.execute(
                "UPDATE remote_segments SET state = ?, version = version + 1 "
                "WHERE tenant = ? AND incarnation = ? AND partition_id = ? AND base_offset = ?",
                (to_state.value, tenant, incarnation, partition_id, base_offset),
            )
            return self._segment_row(conn, tenant, incarnation, partition_id, base_offset)

        return await self._tx(op)

    async def list_remote_segments(
        self, tenant: str, incarnation: str, partition_id: int
    ) -> list[RemoteSegmentRecord]:
        def op(conn: sqlite3.Connection) -> list[RemoteSegmentRecord]:
            rows = conn.execute(
                "SELECT * FROM remote_segments WHERE tenant = ? AND incarnation = ? "
                "AND partition_id = ? ORDER BY base_offset",
                (tenant, incarnation, partition_id),
            )
            return [remote_segment_record(r) for r in rows]

        return await self._tx(op)

    async def remove_remote_segment(
        self, tenant: str, incarnation: str, partition_id: int, base_offset: int
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            current = self._segment_row(conn, tenant, incarnation, partition_id, base_offset)
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

        await self._tx(op)

    async def list_remote_segments_in_state(
        self,
        state: RemoteSegmentState,
        *,
        after: tuple[str, str, int, int] | None = None,
        limit: int = 1000,
    ) -> list[RemoteSegmentRecord]:
        def op(conn: sqlite3.Connection) -> list[RemoteSegmentRecord]:
            start = after or ("", "", -1, -1)
            rows = conn.execute(
                "SELECT * FROM remote_segments WHERE state = ? "
                "AND (tenant, incarnation, partition_id, base_offset) > (?, ?, ?, ?) "
                "ORDER BY tenant, incarnation, partition_id, base_offset LIMIT ?",
                (state.value, *start, limit),
            )
            return [remote_segment_record(r) for r in rows]

        return await self._tx(op)

    # --- usage ---------------------------------------------------------------------------

    async def add_usage(self, deltas: Sequence[UsageRecord]) -> None:
        summed: dict[tuple[int, str], UsageCounters] = {}
        for delta in deltas:
            if delta.hour_ms < 0 or delta.hour_ms % HOUR_MS:
                raise ValueError(f"not the start of a UTC hour: {delta.hour_ms}")
            if any(value < 0 for value in delta.counters.to_json().values()):
                raise ValueError(f"usage only grows: {delta.counters}")
            key = (delta.hour_ms, delta.tenant)
            summed[key] = summed.get(key, UsageCounters()) + delta.counters
        if not summed:
            return
        updates = ", ".join(f"{name} = {name} + excluded.{name}" for name in USAGE_COUNTERS)
        statement = (
            f"INSERT INTO usage (hour_ms, tenant, {', '.join(USAGE_COUNTERS)}) "  # noqa: S608
            f"VALUES ({', '.join('?' * (2 + len(USAGE_COUNTERS)))}) "
            f"ON CONFLICT (hour_ms, tenant) DO UPDATE SET {updates}"
        )
        rows = [
            (hour, tenant, *counters.to_json().values())
            for (hour, tenant), counters in summed.items()
        ]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(statement, rows)

        await self._tx(op)

    async def list_usage(
        self, start_ms: int, end_ms: int, *, tenant: str | None = None
    ) -> list[UsageRecord]:
        def op(conn: sqlite3.Connection) -> list[UsageRecord]:
            if tenant is None:
                rows = conn.execute(
                    "SELECT * FROM usage WHERE hour_ms >= ? AND hour_ms < ? "
                    "ORDER BY hour_ms, tenant",
                    (start_ms, end_ms),
                )
            else:
                rows = conn.execute(
                    "SELECT * FROM usage WHERE tenant = ? AND hour_ms >= ? AND hour_ms < ? "
                    "ORDER BY hour_ms",
                    (tenant, start_ms, end_ms),
                )
            return [
                UsageRecord(
                    tenant=row["tenant"],
                    hour_ms=row["hour_ms"],
                    counters=UsageCounters(*(row[name] for name in USAGE_COUNTERS)),
                )
                for row in rows
            ]

        return await self._tx(op)


def _conforms(catalog: SqliteCatalog) -> Catalog:
    """Lets mypy prove that this store implements the whole Protocol."""
    return catalog
