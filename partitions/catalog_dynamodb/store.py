""":class:`DynamoDbCatalog`: the catalog Protocol over four DynamoDB tables.

Each method runs one function of an entity module with the store's :class:`Dynamo` (most
are bound with :class:`on_dynamo`, taking the function's own parameters); what the operation
does is there, not here. Opening checks that DynamoDB answers and that the tables exist, so
that a server fails at start with one clear line rather than at its first request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import partitions.catalog_dynamodb.answers as answers
import partitions.catalog_dynamodb.groups as groups
import partitions.catalog_dynamodb.lineage as lineage
import partitions.catalog_dynamodb.segments as segments
import partitions.catalog_dynamodb.tenants as tenants
import partitions.catalog_dynamodb.topics as topics
import partitions.catalog_dynamodb.usage as usage
from partitions.catalog import (
    ApiKeyRecord,
    Catalog,
    IdempotencyRecord,
    LeaseFence,
    LineageChange,
    PartitionRecord,
    TenantRecord,
    TopicRecord,
)
from partitions.catalog_dynamodb.client import DEFAULT_TIMEOUT_S, Dynamo
from partitions.catalog_dynamodb.tables import TABLE_KINDS, TableNames
from partitions.catalog_rules import check_placement
from partitions.errors import CatalogTablesMissingError

P = ParamSpec("P")
T = TypeVar("T")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class on_dynamo(Generic[P, T]):  # noqa: N801 - read as a decorator of the class's methods
    """A method of :class:`DynamoDbCatalog` that runs an entity module's function,
    ``fn(db, *args, **kwargs)``: the method has the function's parameters (but the first)
    and answers what it answers."""

    def __init__(self, fn: Callable[Concatenate[Dynamo, P], Coroutine[Any, Any, T]]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> on_dynamo[P, T]: ...

    @overload
    def __get__(
        self, instance: DynamoDbCatalog, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(
        self, instance: DynamoDbCatalog | None, owner: type[Any]
    ) -> on_dynamo[P, T] | Callable[P, Coroutine[Any, Any, T]]:
        if instance is None:
            return self
        return partial(self._fn, instance.dynamo)


class DynamoDbCatalog:
    """:class:`partitions.catalog.Catalog` in DynamoDB."""

    def __init__(self, dynamo: Dynamo, clock_ms: Callable[[], int]) -> None:
        self.dynamo = dynamo
        self._clock_ms = clock_ms

    @classmethod
    async def open(
        cls,
        names: TableNames,
        *,
        endpoint_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> DynamoDbCatalog:
        """Connect, and check that every table is there (``CatalogUnavailableError`` if
        DynamoDB does not answer, ``CatalogTablesMissingError`` if a table is missing)."""
        dynamo = await Dynamo.open(names, endpoint_url=endpoint_url, timeout_s=timeout_s)
        try:
            for kind in TABLE_KINDS:
                await _require_table(dynamo, names.of(kind))
        except BaseException:
            await dynamo.close()
            raise
        return cls(dynamo, clock_ms)

    @property
    def url(self) -> str:
        return self.dynamo.where

    async def close(self) -> None:
        await self.dynamo.close()

    # --- settings ------------------------------------------------------------------------

    get_setting = on_dynamo(tenants.get_setting)

    put_setting = on_dynamo(tenants.put_setting)

    # --- tenants and keys ----------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> TenantRecord:
        return await tenants.create_tenant(
            self.dynamo, name, quotas=quotas, plan=plan, clock_ms=self._clock_ms
        )

    get_tenant = on_dynamo(tenants.get_tenant)

    list_tenants = on_dynamo(tenants.list_tenants)

    update_tenant = on_dynamo(tenants.update_tenant)

    async def delete_tenant(self, name: str) -> list[TopicRecord]:
        return await topics.delete_tenant(self.dynamo, name, clock_ms=self._clock_ms)

    tenant_counts = on_dynamo(tenants.tenant_counts)

    async def add_api_key(
        self, tenant: str, key_id: str, key_hash: str, scope: Mapping[str, Any]
    ) -> ApiKeyRecord:
        return await tenants.add_api_key(
            self.dynamo, tenant, key_id, key_hash, scope, clock_ms=self._clock_ms
        )

    find_api_key = on_dynamo(tenants.find_api_key)

    list_api_keys = on_dynamo(tenants.list_api_keys)

    revoke_api_key = on_dynamo(tenants.revoke_api_key)

    touch_api_key = on_dynamo(tenants.touch_api_key)

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
        return await topics.create_topic(
            self.dynamo,
            tenant,
            name,
            config,
            max_topics=max_topics,
            max_partitions=max_partitions,
            placement=placement,
            clock_ms=self._clock_ms,
        )

    get_topic = on_dynamo(topics.get_topic)

    list_topics = on_dynamo(topics.list_topics)

    update_topic_config = on_dynamo(topics.update_topic_config)

    async def delete_topic(self, tenant: str, name: str) -> TopicRecord:
        return await topics.delete_topic(self.dynamo, tenant, name, clock_ms=self._clock_ms)

    list_deleted_topics = on_dynamo(topics.list_deleted_topics)

    purge_topic = on_dynamo(topics.purge_topic)

    # --- partitions and lineage ----------------------------------------------------------

    list_partitions = on_dynamo(lineage.list_partitions)

    get_partition = on_dynamo(lineage.get_partition)

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
        return await lineage.split_partition(
            self.dynamo,
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
        return await lineage.merge_partitions(
            self.dynamo,
            tenant,
            topic,
            partition_ids,
            end_offsets=end_offsets,
            placement=placement,
            clock_ms=self._clock_ms,
            fences=fences,
        )

    list_placements = on_dynamo(lineage.list_placements)

    advance_start_offset = on_dynamo(lineage.advance_start_offset)

    # --- consumer groups -----------------------------------------------------------------

    get_group = on_dynamo(groups.get_group)

    list_groups = on_dynamo(groups.list_groups)

    put_group = on_dynamo(groups.put_group)

    commit_offsets = on_dynamo(groups.commit_offsets)

    delete_group = on_dynamo(groups.delete_group)

    # --- idempotency ---------------------------------------------------------------------

    async def remember_answer(self, record: IdempotencyRecord, *, now_ms: int) -> IdempotencyRecord:
        return await answers.remember_answer(self.dynamo, record, now_ms=now_ms)

    find_answer = on_dynamo(answers.find_answer)

    forget_expired_answers = on_dynamo(answers.forget_expired_answers)

    # --- remote segments -----------------------------------------------------------------

    add_remote_segment = on_dynamo(segments.add_remote_segment)

    set_remote_segment_state = on_dynamo(segments.set_remote_segment_state)

    list_remote_segments = on_dynamo(segments.list_remote_segments)

    remove_remote_segment = on_dynamo(segments.remove_remote_segment)

    list_remote_segments_in_state = on_dynamo(segments.list_remote_segments_in_state)

    # --- usage ---------------------------------------------------------------------------

    add_usage = on_dynamo(usage.add_usage)

    list_usage = on_dynamo(usage.list_usage)


async def _require_table(dynamo: Dynamo, name: str) -> None:
    try:
        await dynamo.call("describe table", "describe_table", TableName=name)
    except CatalogTablesMissingError:
        raise CatalogTablesMissingError(
            f"the catalog table {name} does not exist: create the tables with "
            f"`eventbus catalog create-tables dynamodb://PREFIX`",
            table=name,
        ) from None


def _conforms(catalog: DynamoDbCatalog) -> Catalog:
    """Lets mypy prove that this store implements the whole Protocol."""
    return catalog
