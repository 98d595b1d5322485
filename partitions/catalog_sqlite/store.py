""":class:`SqliteCatalog`: the catalog Protocol over one SQLite connection.

One connection on one dedicated thread does every read and write, so the event loop never
blocks on SQLite and operations are serialised: each is a single ``BEGIN IMMEDIATE``
transaction that either commits whole or changes nothing. Each method runs one function of
an entity module in that transaction; what the operation does is there, not here.
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
import partitions.catalog_sqlite.segments as segments
import partitions.catalog_sqlite.settings as settings
import partitions.catalog_sqlite.tenants as tenants
import partitions.catalog_sqlite.topics as topics
import partitions.catalog_sqlite.usage as usage
from partitions.catalog import (
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
    UsageRecord,
)
from partitions.catalog_sqlite.schema import backup_catalog, connect, migrate

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

    async def add_remote_segment(self, record: RemoteSegmentRecord) -> RemoteSegmentRecord:
        return await self._tx(segments.add_remote_segment, record)

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
        return await self._tx(
            segments.set_remote_segment_state,
            tenant,
            incarnation,
            partition_id,
            base_offset,
            from_state=from_state,
            to_state=to_state,
        )

    async def list_remote_segments(
        self, tenant: str, incarnation: str, partition_id: int
    ) -> list[RemoteSegmentRecord]:
        return await self._tx(segments.list_remote_segments, tenant, incarnation, partition_id)

    async def remove_remote_segment(
        self, tenant: str, incarnation: str, partition_id: int, base_offset: int
    ) -> None:
        await self._tx(
            segments.remove_remote_segment, tenant, incarnation, partition_id, base_offset
        )

    async def list_remote_segments_in_state(
        self,
        state: RemoteSegmentState,
        *,
        after: tuple[str, str, int, int] | None = None,
        limit: int = 1000,
    ) -> list[RemoteSegmentRecord]:
        return await self._tx(
            segments.list_remote_segments_in_state, state, after=after, limit=limit
        )

    # --- usage ---------------------------------------------------------------------------

    async def add_usage(self, deltas: Sequence[UsageRecord]) -> None:
        rows = usage.usage_rows(deltas)
        if rows:
            await self._tx(usage.add_usage, rows)

    async def list_usage(
        self, start_ms: int, end_ms: int, *, tenant: str | None = None
    ) -> list[UsageRecord]:
        return await self._tx(usage.list_usage, start_ms, end_ms, tenant=tenant)


def _conforms(catalog: SqliteCatalog) -> Catalog:
    """Lets mypy prove that this store implements the whole Protocol."""
    return catalog
