"""The catalog conformance suite: every store must pass all of it.

Parametrized over the stores, SQLite and DynamoDB (moto's server): each test that takes the
``catalog`` fixture runs once per store, unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aioboto3
import pytest

from partitions.catalog import (
    HASH_SPACE_END,
    HOUR_MS,
    WHOLE_SPACE,
    Catalog,
    HashRange,
    IdempotencyRecord,
    LeaseFence,
    PartitionState,
    RemoteSegmentRecord,
    RemoteSegmentState,
    TenantCounts,
    UsageCounters,
    UsageRecord,
)
from partitions.catalog_dynamodb import DynamoDbCatalog, TableNames, create_tables
from partitions.catalog_dynamodb.leases import Lease, PartitionRef, grant, hand_over
from partitions.catalog_dynamodb.nodes import Session, Timing, join
from partitions.catalog_sqlite import SqliteCatalog
from partitions.catalog_sqlite.schema import (
    SCHEMA_VERSION,
    SHARED_INDEX_BYTES,
    SHARED_INDEX_SUFFIX,
)
from partitions.catalog_sqlite.store import out_of_space
from partitions.errors import (
    ApiKeyNotFoundError,
    DiskFullError,
    GroupNotFoundError,
    InvalidMergeError,
    InvalidOffsetError,
    InvalidSplitPointError,
    LeaseLostError,
    PartitionLimitError,
    PartitionNotActiveError,
    PartitionNotFoundError,
    PartitionsNotAdjacentError,
    RemoteSegmentExistsError,
    RemoteSegmentNotFoundError,
    RemoteSegmentStateError,
    StaleGenerationError,
    TenantExistsError,
    TenantNotFoundError,
    TopicExistsError,
    TopicLimitError,
    TopicNotFoundError,
    VersionConflictError,
)
from tests.catalog_checks import assert_lineage_invariants, random_lineage_change
from tests.dynamodb import new_table_names
from tests.tmpfs import fill, small_tmpfs

MID = 1 << 63


async def _open_sqlite(directory: Path) -> Catalog:
    return await SqliteCatalog.open(directory / "catalog.sqlite3")


async def _open_dynamodb(
    request: pytest.FixtureRequest, names: TableNames | None = None
) -> Catalog:
    """Tables of its own on moto's DynamoDB (one request at a time, as tests/dynamodb.py
    says why), or another handle on ``names``."""
    endpoint = request.getfixturevalue("dynamodb_endpoint")
    if names is None:
        names = new_table_names()
        async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint) as client:
            await create_tables(client, names)
    return await DynamoDbCatalog.open(names, endpoint_url=endpoint)


STORES = ("dynamodb", "sqlite")


@pytest.fixture(params=STORES)
async def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Catalog]:
    if request.param == "sqlite":
        store = await _open_sqlite(tmp_path)
    else:
        store = await _open_dynamodb(request)
    await store.create_tenant("acme")
    yield store
    await store.close()


@pytest.fixture(params=STORES)
async def two_handles(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Catalog, Catalog]]:
    """Two handles on one store, as two processes or two nodes have."""
    one = await (_open_sqlite(tmp_path) if request.param == "sqlite" else _open_dynamodb(request))
    if isinstance(one, DynamoDbCatalog):
        two = await _open_dynamodb(request, one.dynamo.names)
    else:
        two = await _open_sqlite(tmp_path)
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


# --- settings and tenants and keys -------------------------------------------------------


async def test_settings(catalog: Catalog) -> None:
    assert await catalog.get_setting("admin_key_hash") is None
    await catalog.put_setting("admin_key_hash", "one")
    await catalog.put_setting("admin_key_hash", "two")
    assert await catalog.get_setting("admin_key_hash") == "two"


async def test_tenants(catalog: Catalog) -> None:
    created = await catalog.create_tenant("globex", quotas={"produce_bytes_per_s": 10})
    assert created.name == "globex" and created.quotas == {"produce_bytes_per_s": 10}
    with pytest.raises(TenantExistsError):
        await catalog.create_tenant("globex")
    assert [t.name for t in await catalog.list_tenants()] == ["acme", "globex"]
    updated = await catalog.update_tenant(
        "globex", expected_version=created.version, plan={"usd_per_gb_in": "0.05"}
    )
    assert updated.plan == {"usd_per_gb_in": "0.05"}
    assert updated.quotas == {"produce_bytes_per_s": 10}  # untouched
    with pytest.raises(VersionConflictError):
        await catalog.update_tenant("globex", expected_version=created.version, quotas={})
    with pytest.raises(TenantNotFoundError):
        await catalog.get_tenant("initech")


async def test_api_keys_are_found_by_hash_and_revoked(catalog: Catalog) -> None:
    key = await catalog.add_api_key("acme", "k1", "hash-one", {"role": "full"})
    assert key.tenant == "acme" and key.last_used_ms is None
    found = await catalog.find_api_key("hash-one")
    assert found is not None and found.key_id == "k1" and found.scope == {"role": "full"}
    assert await catalog.find_api_key("hash-two") is None
    await catalog.touch_api_key("acme", "k1", 1234)
    await catalog.touch_api_key("acme", "k1", 1000)  # an older use never moves it back
    assert [k.last_used_ms for k in await catalog.list_api_keys("acme")] == [1234]
    await catalog.revoke_api_key("acme", "k1")
    assert await catalog.find_api_key("hash-one") is None
    with pytest.raises(ApiKeyNotFoundError):
        await catalog.revoke_api_key("acme", "k1")
    with pytest.raises(TenantNotFoundError):
        await catalog.add_api_key("nobody", "k2", "hash-three", {})


async def test_deleting_a_tenant_marks_its_topics_and_drops_its_rows(catalog: Catalog) -> None:
    await catalog.create_tenant("globex")
    await catalog.add_api_key("globex", "k", "globex-hash", {})
    await catalog.create_topic("globex", "orders", {})
    await catalog.commit_offsets("globex", "orders", "g", {0: 5})
    marked = await catalog.delete_tenant("globex")
    assert [t.name for t in marked] == ["orders"] and marked[0].deleted
    assert await catalog.find_api_key("globex-hash") is None
    with pytest.raises(TenantNotFoundError):
        await catalog.get_tenant("globex")
    assert [t.name for t in await catalog.list_deleted_topics()] == ["orders"]


async def test_tenant_counts_count_live_topics_and_active_partitions(catalog: Catalog) -> None:
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=0, active_partitions=0)
    await catalog.create_topic("acme", "orders", {})
    await catalog.create_topic("acme", "payments", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=0)  # 0 sealed; 1, 2
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=2, active_partitions=3)
    await catalog.merge_partitions("acme", "orders", [1, 2], end_offsets=[0, 0])  # 3
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=2, active_partitions=2)
    await catalog.delete_topic("acme", "orders")  # deleted, not yet purged: not counted
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=1, active_partitions=1)
    await catalog.create_tenant("globex")
    await catalog.create_topic("globex", "orders", {})
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=1, active_partitions=1)
    with pytest.raises(TenantNotFoundError):
        await catalog.tenant_counts("nobody")


async def test_topic_and_partition_limits_refuse_and_change_nothing(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "a", {}, max_topics=2, max_partitions=3)
    await catalog.create_topic("acme", "b", {}, max_topics=2, max_partitions=3)
    with pytest.raises(TopicLimitError) as refused:
        await catalog.create_topic("acme", "c", {}, max_topics=2)
    assert refused.value.details == {"max_topics": 2, "topics": 2}
    await catalog.split_partition("acme", "a", 0, at=MID, end_offset=0, max_partitions=3)
    before = await catalog.list_partitions("acme", "a")
    with pytest.raises(PartitionLimitError) as over:
        await catalog.split_partition("acme", "a", 1, at=MID // 2, end_offset=0, max_partitions=3)
    assert over.value.details == {"max_partitions": 3, "active_partitions": 3}
    with pytest.raises(PartitionLimitError):
        await catalog.create_topic("acme", "c", {}, max_topics=5, max_partitions=3)
    assert await catalog.list_partitions("acme", "a") == before
    assert await catalog.tenant_counts("acme") == TenantCounts(topics=2, active_partitions=3)
    # A merge always may; then a split fits again, and it spent no ids on the refusal.
    await catalog.merge_partitions("acme", "a", [1, 2], end_offsets=[0, 0])  # child 3
    change = await catalog.split_partition("acme", "a", 3, at=MID, end_offset=0, max_partitions=3)
    assert [p.partition_id for p in change.created] == [4, 5]
    # Without limits nothing is counted; other tenants' topics never count.
    await catalog.create_topic("acme", "c", {})
    await catalog.create_tenant("globex")
    await catalog.create_topic("globex", "a", {}, max_topics=1, max_partitions=1)


async def test_racing_creations_never_pass_the_topic_limit(catalog: Catalog) -> None:
    results = await asyncio.gather(
        *(catalog.create_topic("acme", f"t{i}", {}, max_topics=3) for i in range(8)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, TopicLimitError) for r in results if isinstance(r, BaseException))
    assert (await catalog.tenant_counts("acme")).topics == 3


# --- topics --------------------------------------------------------------------------------


async def test_create_topic_makes_partition_zero_over_the_whole_space(catalog: Catalog) -> None:
    topic, partition = await catalog.create_topic("acme", "orders", {"retention_ms": 1000})
    assert topic.config == {"retention_ms": 1000} and not topic.deleted
    assert partition.partition_id == 0
    assert partition.hash_range == WHOLE_SPACE
    assert partition.state is PartitionState.ACTIVE
    assert partition.parents == () and partition.children == ()
    assert partition.start_offset == 0 and partition.end_offset is None
    with pytest.raises(TopicExistsError) as exists:
        await catalog.create_topic("acme", "orders", {})
    assert exists.value.details["incarnation"] == topic.incarnation
    with pytest.raises(TenantNotFoundError):
        await catalog.create_topic("nobody", "orders", {})


async def test_topics_are_per_tenant(catalog: Catalog) -> None:
    await catalog.create_tenant("globex")
    mine, _ = await catalog.create_topic("acme", "orders", {"a": 1})
    theirs, _ = await catalog.create_topic("globex", "orders", {"b": 2})
    assert mine.incarnation != theirs.incarnation
    assert (await catalog.get_topic("acme", "orders")).config == {"a": 1}
    await catalog.commit_offsets("acme", "orders", "g", {0: 7})
    with pytest.raises(GroupNotFoundError):
        await catalog.get_group("globex", "orders", "g")
    with pytest.raises(TopicNotFoundError):
        await catalog.get_topic("globex", "payments")
    await catalog.create_topic("acme", "payments", {})
    with pytest.raises(TopicNotFoundError):
        await catalog.get_topic("globex", "payments")


async def test_list_topics_paginates_by_name(catalog: Catalog) -> None:
    names = [f"t{i:02d}" for i in range(25)]
    for name in reversed(names):
        await catalog.create_topic("acme", name, {})
    seen: list[str] = []
    after = None
    while True:
        page = await catalog.list_topics("acme", after=after, limit=10)
        if not page:
            break
        seen.extend(t.name for t in page)
        after = page[-1].name
    assert seen == names


async def test_topic_config_changes_compare_and_set(catalog: Catalog) -> None:
    topic, _ = await catalog.create_topic("acme", "orders", {"retention_ms": 1})
    changed = await catalog.update_topic_config(
        "acme", "orders", {"retention_ms": 2}, expected_version=topic.version
    )
    assert changed.config == {"retention_ms": 2} and changed.version > topic.version
    with pytest.raises(VersionConflictError):
        await catalog.update_topic_config(
            "acme", "orders", {"retention_ms": 3}, expected_version=topic.version
        )


async def test_delete_and_recreate_gives_a_new_empty_incarnation(catalog: Catalog) -> None:
    old, _ = await catalog.create_topic("acme", "orders", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=10)
    await catalog.commit_offsets("acme", "orders", "g", {1: 3})
    deleted = await catalog.delete_topic("acme", "orders")
    assert deleted.deleted and deleted.incarnation == old.incarnation
    with pytest.raises(TopicNotFoundError):
        await catalog.get_topic("acme", "orders")
    with pytest.raises(TopicNotFoundError):
        await catalog.delete_topic("acme", "orders")
    new, partition = await catalog.create_topic("acme", "orders", {})
    assert new.incarnation != old.incarnation
    assert [p.partition_id for p in await catalog.list_partitions("acme", "orders")] == [0]
    assert partition.hash_range == WHOLE_SPACE
    with pytest.raises(GroupNotFoundError):
        await catalog.get_group("acme", "orders", "g")
    assert [t.incarnation for t in await catalog.list_deleted_topics()] == [old.incarnation]
    with pytest.raises(TopicExistsError):
        await catalog.purge_topic("acme", new.incarnation)  # live: refused
    await catalog.purge_topic("acme", old.incarnation)
    assert await catalog.list_deleted_topics() == []


async def test_calls_for_a_deleted_incarnation_never_reach_its_successor(catalog: Catalog) -> None:
    """Retention holds an incarnation while it works; if the topic is deleted and created
    again meanwhile, its calls fail instead of landing on the new topic of the same name."""
    old, _ = await catalog.create_topic("acme", "orders", {})
    listed = await catalog.list_partitions("acme", "orders", incarnation=old.incarnation)
    assert [p.partition_id for p in listed] == [0]
    moved = await catalog.advance_start_offset("acme", "orders", 0, 4, incarnation=old.incarnation)
    assert moved.start_offset == 4
    await catalog.delete_topic("acme", "orders")
    with pytest.raises(TopicNotFoundError):
        await catalog.list_partitions("acme", "orders", incarnation=old.incarnation)
    with pytest.raises(TopicNotFoundError):
        await catalog.advance_start_offset("acme", "orders", 0, 9, incarnation=old.incarnation)
    new, _ = await catalog.create_topic("acme", "orders", {})
    with pytest.raises(TopicNotFoundError):
        await catalog.list_partitions("acme", "orders", incarnation=old.incarnation)
    with pytest.raises(TopicNotFoundError):
        await catalog.advance_start_offset("acme", "orders", 0, 9, incarnation=old.incarnation)
    (fresh,) = await catalog.list_partitions("acme", "orders", incarnation=new.incarnation)
    assert fresh.start_offset == 0
    moved = await catalog.advance_start_offset("acme", "orders", 0, 2, incarnation=new.incarnation)
    assert moved.start_offset == 2


# --- partitions and lineage ----------------------------------------------------------------


async def test_split(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    change = await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=42)
    (parent,) = change.sealed
    left, right = change.created
    assert parent.state is PartitionState.SEALED and parent.end_offset == 42
    assert parent.children == (1, 2)
    assert left.partition_id == 1 and left.hash_range == HashRange(0, MID)
    assert right.partition_id == 2 and right.hash_range == HashRange(MID, HASH_SPACE_END)
    assert left.parents == right.parents == (0,)
    assert left.start_offset == 0 and left.end_offset is None
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


async def test_split_refusals_change_nothing(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    await catalog.advance_start_offset("acme", "orders", 0, 5)
    for at in (0, HASH_SPACE_END, HASH_SPACE_END + 1, -1):
        with pytest.raises(InvalidSplitPointError):
            await catalog.split_partition("acme", "orders", 0, at=at, end_offset=10)
    with pytest.raises(InvalidOffsetError):
        await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=4)
    with pytest.raises(PartitionNotFoundError):
        await catalog.split_partition("acme", "orders", 9, at=MID, end_offset=10)
    with pytest.raises(TopicNotFoundError):
        await catalog.split_partition("acme", "nope", 0, at=MID, end_offset=10)
    before = await catalog.list_partitions("acme", "orders")
    assert [(p.partition_id, p.state) for p in before] == [(0, PartitionState.ACTIVE)]
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=10)
    with pytest.raises(PartitionNotActiveError):
        await catalog.split_partition("acme", "orders", 0, at=MID // 2, end_offset=10)
    # A failed split does not spend partition ids.
    change = await catalog.split_partition("acme", "orders", 1, at=MID // 2, end_offset=0)
    assert [p.partition_id for p in change.created] == [3, 4]


async def test_merge(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=10)
    change = await catalog.merge_partitions("acme", "orders", [2, 1], end_offsets=[7, 3])
    low, high = change.sealed
    (child,) = change.created
    assert (low.partition_id, low.end_offset) == (1, 3)
    assert (high.partition_id, high.end_offset) == (2, 7)
    assert child.partition_id == 3 and child.hash_range == WHOLE_SPACE
    assert child.parents == (1, 2)
    assert low.children == high.children == (3,)
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


async def test_merge_refusals_change_nothing(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=0)  # 1, 2
    await catalog.split_partition("acme", "orders", 2, at=MID + MID // 2, end_offset=0)  # 3, 4
    before = await catalog.list_partitions("acme", "orders")
    with pytest.raises(PartitionsNotAdjacentError):
        await catalog.merge_partitions("acme", "orders", [1, 4], end_offsets=[0, 0])
    with pytest.raises(InvalidMergeError):
        await catalog.merge_partitions("acme", "orders", [1, 1], end_offsets=[0, 0])
    with pytest.raises(InvalidMergeError):
        await catalog.merge_partitions("acme", "orders", [1, 3, 4], end_offsets=[0, 0, 0])
    with pytest.raises(InvalidMergeError):
        await catalog.merge_partitions("acme", "orders", [1, 3], end_offsets=[0])
    with pytest.raises(PartitionNotActiveError):
        await catalog.merge_partitions("acme", "orders", [1, 2], end_offsets=[0, 0])
    with pytest.raises(PartitionNotFoundError):
        await catalog.merge_partitions("acme", "orders", [1, 99], end_offsets=[0, 0])
    assert await catalog.list_partitions("acme", "orders") == before
    await catalog.merge_partitions("acme", "orders", [1, 3], end_offsets=[0, 0])


async def test_random_splits_and_merges_keep_every_invariant(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    rng = random.Random(7)
    highest = 0
    for step in range(150):
        change = await random_lineage_change(catalog, rng, step)
        ids = [p.partition_id for p in change.created]
        assert min(ids) > highest, "partition ids are never reused"
        highest = max(ids)
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


async def test_start_offset_only_rises(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    assert (await catalog.advance_start_offset("acme", "orders", 0, 10)).start_offset == 10
    assert (await catalog.advance_start_offset("acme", "orders", 0, 3)).start_offset == 10
    with pytest.raises(InvalidOffsetError):
        await catalog.advance_start_offset("acme", "orders", 0, -1)
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=20)
    assert (await catalog.advance_start_offset("acme", "orders", 0, 20)).start_offset == 20
    with pytest.raises(InvalidOffsetError):
        await catalog.advance_start_offset("acme", "orders", 0, 21)


# --- consumer groups ---------------------------------------------------------------------


async def test_commits_create_the_group_and_are_read_back(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=5)
    first = await catalog.commit_offsets("acme", "orders", "g", {0: 5, 1: 2})
    assert first.offsets == {0: 5, 1: 2} and first.generation == 0
    second = await catalog.commit_offsets("acme", "orders", "g", {1: 9})
    assert second.offsets == {0: 5, 1: 9} and second.version > first.version
    assert (await catalog.get_group("acme", "orders", "g")).offsets == {0: 5, 1: 9}
    assert [g.group for g in await catalog.list_groups("acme", "orders")] == ["g"]
    with pytest.raises(PartitionNotFoundError):
        await catalog.commit_offsets("acme", "orders", "g", {7: 1})
    with pytest.raises(InvalidOffsetError):
        await catalog.commit_offsets("acme", "orders", "g", {1: -1})
    assert (await catalog.get_group("acme", "orders", "g")).offsets == {0: 5, 1: 9}


async def test_generation_fencing_and_group_compare_and_set(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    group = await catalog.put_group(
        "acme", "orders", "g", generation=3, metadata={"members": ["a"]}, expected_version=None
    )
    with pytest.raises(VersionConflictError):
        await catalog.put_group(
            "acme", "orders", "g", generation=4, metadata={}, expected_version=None
        )
    await catalog.commit_offsets("acme", "orders", "g", {0: 1}, generation=3)
    with pytest.raises(StaleGenerationError):
        await catalog.commit_offsets("acme", "orders", "g", {0: 100}, generation=2)
    newer = await catalog.put_group(
        "acme",
        "orders",
        "g",
        generation=4,
        metadata={"members": ["b"]},
        expected_version=group.version + 1,
    )
    assert newer.generation == 4 and newer.metadata == {"members": ["b"]}
    with pytest.raises(StaleGenerationError):
        await catalog.commit_offsets("acme", "orders", "g", {0: 100}, generation=3)
    with pytest.raises(VersionConflictError):
        await catalog.commit_offsets("acme", "orders", "g", {0: 2}, expected_version=group.version)
    assert (await catalog.get_group("acme", "orders", "g")).offsets == {0: 1}
    with pytest.raises(VersionConflictError):
        await catalog.delete_group("acme", "orders", "g", expected_version=1)
    await catalog.delete_group("acme", "orders", "g")
    with pytest.raises(GroupNotFoundError):
        await catalog.delete_group("acme", "orders", "g")


# --- idempotency ---------------------------------------------------------------------------


async def test_idempotency_records(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    first = IdempotencyRecord("acme", "orders", "retry-1", "h1", '{"offsets":[]}', 1_000)
    assert await catalog.remember_answer(first, now_ms=0) == first
    # A second request with the same key gets the first answer back.
    other = IdempotencyRecord("acme", "orders", "retry-1", "h2", "{}", 2_000)
    assert await catalog.remember_answer(other, now_ms=10) == first
    assert await catalog.find_answer("acme", "orders", "retry-1", now_ms=999) == first
    assert await catalog.find_answer("acme", "orders", "retry-1", now_ms=1_000) is None
    # Once expired, the key is free again.
    assert await catalog.remember_answer(other, now_ms=1_000) == other
    assert await catalog.forget_expired_answers(now_ms=2_000) == 1
    assert await catalog.find_answer("acme", "orders", "retry-1", now_ms=0) is None
    with pytest.raises(TopicNotFoundError):
        await catalog.remember_answer(
            IdempotencyRecord("acme", "nope", "k", "h", "{}", 5), now_ms=0
        )


# --- remote segments -----------------------------------------------------------------------


def _segment(topic_incarnation: str, base: int, state: RemoteSegmentState) -> RemoteSegmentRecord:
    return RemoteSegmentRecord(
        tenant="acme",
        incarnation=topic_incarnation,
        partition_id=0,
        base_offset=base,
        last_offset=base + 9,
        size_bytes=1000,
        first_timestamp_ms=1,
        max_timestamp_ms=2,
        object_key=f"acme/{topic_incarnation}/0/{base:020d}.log",
        state=state,
    )


async def test_remote_segments_follow_kip_405_states(catalog: Catalog) -> None:
    topic, _ = await catalog.create_topic("acme", "orders", {})
    inc = topic.incarnation
    started, finished, deleting = (
        RemoteSegmentState.COPY_STARTED,
        RemoteSegmentState.COPY_FINISHED,
        RemoteSegmentState.DELETE_STARTED,
    )
    with pytest.raises(RemoteSegmentStateError):
        await catalog.add_remote_segment(_segment(inc, 0, finished))
    for base in (20, 0, 10):
        await catalog.add_remote_segment(_segment(inc, base, started))
    with pytest.raises(RemoteSegmentExistsError):
        await catalog.add_remote_segment(_segment(inc, 10, started))
    listed = await catalog.list_remote_segments("acme", inc, 0)
    assert [s.base_offset for s in listed] == [0, 10, 20]
    done = await catalog.set_remote_segment_state(
        "acme", inc, 0, 0, from_state=started, to_state=finished
    )
    assert done.state is finished and done.version == 2
    with pytest.raises(RemoteSegmentStateError):
        await catalog.set_remote_segment_state(
            "acme", inc, 0, 0, from_state=started, to_state=finished
        )
    with pytest.raises(RemoteSegmentStateError):
        await catalog.remove_remote_segment("acme", inc, 0, 0)  # not delete-started yet
    await catalog.set_remote_segment_state(
        "acme", inc, 0, 0, from_state=finished, to_state=deleting
    )
    await catalog.remove_remote_segment("acme", inc, 0, 0)
    with pytest.raises(RemoteSegmentNotFoundError):
        await catalog.remove_remote_segment("acme", inc, 0, 0)
    assert [s.base_offset for s in await catalog.list_remote_segments("acme", inc, 0)] == [10, 20]


async def test_a_remote_segment_keeps_the_epoch_it_was_uploaded_under(catalog: Catalog) -> None:
    topic, _ = await catalog.create_topic("acme", "orders", {})
    inc = topic.incarnation
    started = RemoteSegmentState.COPY_STARTED
    assert (await catalog.add_remote_segment(_segment(inc, 0, started))).epoch == 0
    added = await catalog.add_remote_segment(
        dataclasses.replace(_segment(inc, 10, started), epoch=3)
    )
    assert added.epoch == 3
    moved = await catalog.set_remote_segment_state(
        "acme", inc, 0, 10, from_state=started, to_state=RemoteSegmentState.COPY_FINISHED
    )
    assert moved.epoch == 3
    listed = await catalog.list_remote_segments("acme", inc, 0)
    assert [(s.base_offset, s.epoch) for s in listed] == [(0, 0), (10, 3)]
    (in_flight,) = await catalog.list_remote_segments_in_state(started)
    assert (in_flight.base_offset, in_flight.epoch) == (0, 0)


async def test_no_copy_starts_for_a_deleted_or_unknown_topic(catalog: Catalog) -> None:
    topic, _ = await catalog.create_topic("acme", "orders", {})
    inc = topic.incarnation
    await catalog.add_remote_segment(_segment(inc, 0, RemoteSegmentState.COPY_STARTED))
    with pytest.raises(TopicNotFoundError):
        await catalog.add_remote_segment(
            _segment("no-such-incarnation", 0, RemoteSegmentState.COPY_STARTED)
        )
    await catalog.delete_topic("acme", "orders")
    with pytest.raises(TopicNotFoundError):
        await catalog.add_remote_segment(_segment(inc, 10, RemoteSegmentState.COPY_STARTED))
    # Rows that were there stay until the incarnation is purged.
    assert [s.base_offset for s in await catalog.list_remote_segments("acme", inc, 0)] == [0]
    await catalog.purge_topic("acme", inc)
    assert await catalog.list_remote_segments("acme", inc, 0) == []


async def test_remote_segments_listed_by_state_across_topics(catalog: Catalog) -> None:
    await catalog.create_tenant("zeta")
    started, finished = RemoteSegmentState.COPY_STARTED, RemoteSegmentState.COPY_FINISHED
    expected = []
    for tenant in ("zeta", "acme"):
        for name in ("b", "a"):
            topic, _ = await catalog.create_topic(tenant, name, {})
            for pid in (1, 0):
                for base in (10, 0):
                    row = dataclasses.replace(
                        _segment(topic.incarnation, base, started),
                        tenant=tenant,
                        partition_id=pid,
                    )
                    await catalog.add_remote_segment(row)
                    if base == 0:
                        await catalog.set_remote_segment_state(
                            tenant, topic.incarnation, pid, 0, from_state=started, to_state=finished
                        )
                    else:
                        expected.append((tenant, topic.incarnation, pid, base))
    expected.sort()
    listed = await catalog.list_remote_segments_in_state(started)
    assert [(r.tenant, r.incarnation, r.partition_id, r.base_offset) for r in listed] == expected
    assert all(r.state is started for r in listed)
    # Page by page, each page continuing after the last row of the one before.
    paged: list[tuple[str, str, int, int]] = []
    after = None
    while page := await catalog.list_remote_segments_in_state(started, after=after, limit=3):
        assert len(page) <= 3
        paged.extend((r.tenant, r.incarnation, r.partition_id, r.base_offset) for r in page)
        after = paged[-1]
    assert paged == expected
    assert len(await catalog.list_remote_segments_in_state(finished)) == len(expected)
    assert await catalog.list_remote_segments_in_state(RemoteSegmentState.DELETE_STARTED) == []


# --- usage --------------------------------------------------------------------------------

H0 = 490_000 * HOUR_MS  # some hour in 2025


def _use(tenant: str, hour: int, **counters: int) -> UsageRecord:
    return UsageRecord(tenant, H0 + hour * HOUR_MS, UsageCounters(**counters))


async def test_usage_deltas_add_up_per_tenant_and_hour(catalog: Catalog) -> None:
    assert await catalog.list_usage(0, H0 * 2) == []
    await catalog.add_usage([])
    await catalog.add_usage(
        [
            _use("acme", 0, requests=2, bytes_in=100),
            _use("acme", 0, requests=1, records_in=3),  # the same row twice in one call
            _use("globex", 0, bytes_out=7),
            _use("acme", 1, stored_byte_seconds=3600, partition_seconds=60),
        ]
    )
    await catalog.add_usage([_use("acme", 0, requests=10, records_out=4, bytes_out=9)])
    rows = await catalog.list_usage(H0, H0 + 2 * HOUR_MS)
    assert rows == [
        _use("acme", 0, requests=13, records_in=3, records_out=4, bytes_in=100, bytes_out=9),
        _use("globex", 0, bytes_out=7),
        _use("acme", 1, stored_byte_seconds=3600, partition_seconds=60),
    ]
    # Half-open ranges, and one tenant's rows only.
    assert [r.hour_ms for r in await catalog.list_usage(H0 + HOUR_MS, H0 + 5 * HOUR_MS)] == [
        H0 + HOUR_MS
    ]
    assert await catalog.list_usage(H0, H0 + HOUR_MS, tenant="globex") == [
        _use("globex", 0, bytes_out=7)
    ]
    assert await catalog.list_usage(H0, H0 + 2 * HOUR_MS, tenant="initech") == []
    assert await catalog.list_usage(H0 + 2 * HOUR_MS, H0 + 2 * HOUR_MS) == []


async def test_usage_refusals_add_nothing(catalog: Catalog) -> None:
    good = _use("acme", 0, requests=1)
    for bad in (
        UsageRecord("acme", H0 + 1, UsageCounters(requests=1)),  # not the start of an hour
        UsageRecord("acme", -HOUR_MS, UsageCounters(requests=1)),
        _use("acme", 1, bytes_in=-5),  # usage only grows
    ):
        with pytest.raises(ValueError):
            await catalog.add_usage([good, bad])
    assert await catalog.list_usage(0, H0 * 2) == []


async def test_usage_outlives_its_tenant(catalog: Catalog) -> None:
    await catalog.create_tenant("globex")
    await catalog.add_usage([_use("globex", 0, requests=5)])
    await catalog.delete_tenant("globex")
    assert await catalog.list_usage(H0, H0 + HOUR_MS, tenant="globex") == [
        _use("globex", 0, requests=5)
    ]


async def test_concurrent_usage_deltas_are_each_added_once(catalog: Catalog) -> None:
    await asyncio.gather(
        *(
            catalog.add_usage(
                [_use("acme", i % 2, requests=1, bytes_in=i), _use("b", 0, requests=1)]
            )
            for i in range(40)
        )
    )
    rows = {
        (r.tenant, r.hour_ms): r.counters for r in await catalog.list_usage(H0, H0 + 2 * HOUR_MS)
    }
    assert rows[("acme", H0)] == UsageCounters(requests=20, bytes_in=sum(range(0, 40, 2)))
    assert rows[("acme", H0 + HOUR_MS)] == UsageCounters(requests=20, bytes_in=sum(range(1, 40, 2)))
    assert rows[("b", H0)] == UsageCounters(requests=40)


# --- races: exactly one wins ---------------------------------------------------------------


async def _race(*calls: object) -> tuple[list[object], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)  # type: ignore[call-overload]
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


async def test_racing_splits_of_one_partition(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    wins, losses = await _race(
        *(catalog.split_partition("acme", "orders", 0, at=MID + i, end_offset=i) for i in range(10))
    )
    assert len(wins) == 1
    assert all(isinstance(e, PartitionNotActiveError | VersionConflictError) for e in losses)
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


async def test_racing_merges_over_a_shared_partition(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=0)  # 1, 2
    await catalog.split_partition("acme", "orders", 2, at=MID + MID // 2, end_offset=0)  # 3, 4
    wins, losses = await _race(
        catalog.merge_partitions("acme", "orders", [1, 3], end_offsets=[0, 0]),
        catalog.merge_partitions("acme", "orders", [3, 4], end_offsets=[0, 0]),
    )
    assert len(wins) == 1 and len(losses) == 1
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


async def test_racing_commits_with_one_expected_version(catalog: Catalog) -> None:
    await catalog.create_topic("acme", "orders", {})
    group = await catalog.commit_offsets("acme", "orders", "g", {0: 1})
    wins, losses = await _race(
        *(
            catalog.commit_offsets(
                "acme", "orders", "g", {0: 10 + i}, expected_version=group.version
            )
            for i in range(8)
        )
    )
    assert len(wins) == 1
    assert all(isinstance(e, VersionConflictError) for e in losses)
    stored = await catalog.get_group("acme", "orders", "g")
    assert stored.offsets == wins[0].offsets  # type: ignore[attr-defined]


# --- DynamoDB specifics: owner-side writes fenced by the partition lease ---------------------

FENCE_TIMING = Timing(heartbeat_s=0.5, lease_s=3.0, margin_s=1.0)


async def _session(catalog: DynamoDbCatalog, node_id: str) -> Session:
    return await join(
        catalog.dynamo, node_id, f"{node_id}.local:9000", timing=FENCE_TIMING, clock=time.monotonic
    )


@pytest.fixture
async def dynamodb_catalog(request: pytest.FixtureRequest) -> AsyncIterator[DynamoDbCatalog]:
    store = await _open_dynamodb(request)
    assert isinstance(store, DynamoDbCatalog)
    await store.create_tenant("acme")
    yield store
    await store.close()


async def _topic_and_nodes(catalog: DynamoDbCatalog) -> tuple[str, Session, Session]:
    """Topic ``orders`` (its incarnation) and two live nodes, ``a`` and ``b``."""
    topic, _ = await catalog.create_topic("acme", "orders", {})
    return topic.incarnation, await _session(catalog, "a"), await _session(catalog, "b")


async def _owned(
    catalog: DynamoDbCatalog, inc: str, pid: int, owner: Session
) -> tuple[Lease, LeaseFence]:
    """A first grant of partition ``pid`` to ``owner``, and the fence it writes with."""
    lease = await grant(
        catalog.dynamo,
        PartitionRef("acme", inc, pid),
        node_id=owner.node_id,
        session_id=owner.session_id,
        expect=None,
    )
    return lease, LeaseFence(lease.session_id, lease.epoch)


async def _moved(catalog: DynamoDbCatalog, lease: Lease, to: Session) -> tuple[Lease, LeaseFence]:
    """The owner hands ``lease`` over to ``to`` (its epoch goes up by one)."""
    moved = await hand_over(catalog.dynamo, lease, node_id=to.node_id, session_id=to.session_id)
    assert moved.epoch == lease.epoch + 1
    return moved, LeaseFence(moved.session_id, moved.epoch)


def _lost(raised: pytest.ExceptionInfo[LeaseLostError], *sessions: Session) -> None:
    """A refusal is final, a 409, and says nothing of sessions or epochs."""
    error = raised.value
    assert (error.code, error.status, error.retriable) == ("lease_lost", 409, False)
    assert all(s.session_id not in error.message for s in sessions)
    assert "epoch" not in error.message


async def test_fenced_remote_segment_writes_need_the_current_lease(
    dynamodb_catalog: DynamoDbCatalog,
) -> None:
    catalog = dynamodb_catalog
    inc, a, b = await _topic_and_nodes(catalog)
    lease, old = await _owned(catalog, inc, 0, a)
    started, finished, deleting = (
        RemoteSegmentState.COPY_STARTED,
        RemoteSegmentState.COPY_FINISHED,
        RemoteSegmentState.DELETE_STARTED,
    )
    await catalog.add_remote_segment(_segment(inc, 0, started), fence=old)
    await catalog.set_remote_segment_state(
        "acme", inc, 0, 0, from_state=started, to_state=finished, fence=old
    )
    _, new = await _moved(catalog, lease, b)
    before = await catalog.list_remote_segments("acme", inc, 0)
    # The old owner (a zombie) and a fence of the right session at the wrong epoch: refused,
    # and nothing changes.
    for stale in (old, LeaseFence(b.session_id, old.epoch)):
        with pytest.raises(LeaseLostError) as raised:
            await catalog.add_remote_segment(_segment(inc, 10, started), fence=stale)
        _lost(raised, a, b)
        with pytest.raises(LeaseLostError) as raised:
            await catalog.set_remote_segment_state(
                "acme", inc, 0, 0, from_state=finished, to_state=deleting, fence=stale
            )
        _lost(raised, a, b)
        assert await catalog.list_remote_segments("acme", inc, 0) == before
    assert await catalog.list_remote_segments_in_state(started) == []
    # The new owner's writes, with its fence, are made.
    await catalog.add_remote_segment(_segment(inc, 10, started), fence=new)
    await catalog.set_remote_segment_state(
        "acme", inc, 0, 0, from_state=finished, to_state=deleting, fence=new
    )
    with pytest.raises(LeaseLostError):
        await catalog.remove_remote_segment("acme", inc, 0, 0, fence=old)
    listed = await catalog.list_remote_segments("acme", inc, 0)
    assert [(s.base_offset, s.state) for s in listed] == [(0, deleting), (10, started)]
    await catalog.remove_remote_segment("acme", inc, 0, 0, fence=new)
    assert [s.base_offset for s in await catalog.list_remote_segments("acme", inc, 0)] == [10]
    # A fenced write that is refused for its own reason still says that reason.
    with pytest.raises(RemoteSegmentExistsError):
        await catalog.add_remote_segment(_segment(inc, 10, started), fence=new)
    with pytest.raises(RemoteSegmentStateError):
        await catalog.set_remote_segment_state(
            "acme", inc, 0, 10, from_state=finished, to_state=deleting, fence=new
        )
    with pytest.raises(RemoteSegmentNotFoundError):
        await catalog.remove_remote_segment("acme", inc, 0, 0, fence=new)


async def test_fenced_start_offsets_and_seals_need_the_current_lease(
    dynamodb_catalog: DynamoDbCatalog,
) -> None:
    catalog = dynamodb_catalog
    inc, a, b = await _topic_and_nodes(catalog)
    lease, old = await _owned(catalog, inc, 0, a)
    assert (await catalog.advance_start_offset("acme", "orders", 0, 5, fence=old)).start_offset == 5
    _, new = await _moved(catalog, lease, b)
    with pytest.raises(LeaseLostError) as raised:
        await catalog.advance_start_offset("acme", "orders", 0, 7, fence=old)
    _lost(raised, a, b)
    with pytest.raises(LeaseLostError):
        await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=9, fence=old)
    (only,) = await catalog.list_partitions("acme", "orders")
    assert (only.start_offset, only.state, only.version) == (5, PartitionState.ACTIVE, 2)
    assert (await catalog.advance_start_offset("acme", "orders", 0, 7, fence=new)).start_offset == 7
    change = await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=9, fence=new)
    assert [c.partition_id for c in change.created] == [1, 2]  # the refusal spent no ids
    # A merge checks each parent's owner: here 1 is a's and 2 was b's, then a's.
    _, one = await _owned(catalog, inc, 1, a)
    two_lease, two_old = await _owned(catalog, inc, 2, b)
    _, two_new = await _moved(catalog, two_lease, a)
    with pytest.raises(LeaseLostError) as raised:
        await catalog.merge_partitions(
            "acme", "orders", [1, 2], end_offsets=[0, 0], fences=[one, two_old]
        )
    _lost(raised, a, b)
    assert raised.value.details == {"partition": 2}
    assert [p.partition_id for p in await catalog.list_partitions("acme", "orders")] == [0, 1, 2]
    with pytest.raises(InvalidMergeError):
        await catalog.merge_partitions("acme", "orders", [1, 2], end_offsets=[0, 0], fences=[one])
    change = await catalog.merge_partitions(
        "acme", "orders", [1, 2], end_offsets=[0, 0], fences=[one, two_new]
    )
    assert [c.partition_id for c in change.created] == [3]
    assert_lineage_invariants(await catalog.list_partitions("acme", "orders"))


# --- SQLite specifics ----------------------------------------------------------------------


async def test_sqlite_accepts_lease_fences_and_ignores_them(tmp_path: Path) -> None:
    catalog = await _open_sqlite(tmp_path)
    try:
        await catalog.create_tenant("acme")
        topic, _ = await catalog.create_topic("acme", "orders", {})
        inc = topic.incarnation
        fence = LeaseFence("whoever", 7)
        started = RemoteSegmentState.COPY_STARTED
        await catalog.add_remote_segment(_segment(inc, 0, started), fence=fence)
        await catalog.set_remote_segment_state(
            "acme",
            inc,
            0,
            0,
            from_state=started,
            to_state=RemoteSegmentState.DELETE_STARTED,
            fence=fence,
        )
        await catalog.remove_remote_segment("acme", inc, 0, 0, fence=fence)
        await catalog.advance_start_offset("acme", "orders", 0, 3, fence=fence)
        await catalog.split_partition("acme", "orders", 0, at=MID, end_offset=4, fence=fence)
        change = await catalog.merge_partitions(
            "acme", "orders", [1, 2], end_offsets=[0, 0], fences=[fence, fence]
        )
        assert [c.partition_id for c in change.created] == [3]
    finally:
        await catalog.close()


async def test_a_catalog_from_before_epochs_opens_with_its_segments_at_epoch_0(
    tmp_path: Path,
) -> None:
    from partitions.catalog_sqlite.schema import MIGRATIONS

    path = tmp_path / "catalog.sqlite3"
    with sqlite3.connect(path) as conn:  # a file as the release before epochs left it
        for step in MIGRATIONS[:4]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO tenants VALUES ('acme', 1, '{}', '{}', 1)")
        conn.execute(
            "INSERT INTO remote_segments VALUES "
            "('acme', 'inc', 0, 0, 9, 1000, 1, 2, 'acme/inc/0/00000000000000000000.log', "
            "'copy-finished', 2)"
        )
    conn.close()
    store = await SqliteCatalog.open(path)
    try:
        (old,) = await store.list_remote_segments("acme", "inc", 0)
        assert (old.base_offset, old.state, old.version, old.epoch) == (
            0,
            RemoteSegmentState.COPY_FINISHED,
            2,
            0,
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


async def test_two_handles_race_correctly(two_handles: tuple[Catalog, Catalog]) -> None:
    one, two = two_handles
    await one.create_tenant("acme")
    await one.create_topic("acme", "orders", {})
    wins, losses = await _race(
        one.split_partition("acme", "orders", 0, at=MID, end_offset=1),
        two.split_partition("acme", "orders", 0, at=MID - 1, end_offset=2),
    )
    assert len(wins) == 1 and isinstance(losses[0], PartitionNotActiveError)
    low, high = (p.partition_id for p in wins[0].created)  # type: ignore[attr-defined]
    await one.split_partition("acme", "orders", high, at=MID + MID // 2, end_offset=0)
    right = max(p.partition_id for p in await one.list_partitions("acme", "orders"))
    # Two merges over one shared partition, from two handles: exactly one is made.
    wins, losses = await _race(
        one.merge_partitions("acme", "orders", [low, right - 1], end_offsets=[0, 0]),
        two.merge_partitions("acme", "orders", [right - 1, right], end_offsets=[0, 0]),
    )
    assert len(wins) == 1 and isinstance(losses[0], PartitionNotActiveError), losses
    assert_lineage_invariants(await two.list_partitions("acme", "orders"))
    group = await one.commit_offsets("acme", "orders", "g", {low: 1})
    wins, losses = await _race(
        one.commit_offsets("acme", "orders", "g", {low: 5}, expected_version=group.version),
        two.commit_offsets("acme", "orders", "g", {low: 6}, expected_version=group.version),
    )
    assert len(wins) == 1 and isinstance(losses[0], VersionConflictError)
    assert_lineage_invariants(await two.list_partitions("acme", "orders"))
    # Two handles creating topics under one limit: the count and the insert are atomic.
    wins, losses = await _race(
        one.create_topic("acme", "x", {}, max_topics=2),
        two.create_topic("acme", "y", {}, max_topics=2),
    )
    assert len(wins) == 1 and isinstance(losses[0], TopicLimitError)
    # Two processes flushing usage into one row: additions, never lost updates.
    await asyncio.gather(
        *(
            (one, two)[i % 2].add_usage([_use("acme", 0, requests=1, bytes_out=i)])
            for i in range(30)
        )
    )
    (row,) = await one.list_usage(H0, H0 + HOUR_MS)
    assert row.counters == UsageCounters(requests=30, bytes_out=sum(range(30)))


async def test_an_older_schema_is_migrated_at_open(tmp_path: Path) -> None:
    from partitions.catalog_sqlite.schema import MIGRATIONS

    path = tmp_path / "catalog.sqlite3"
    with sqlite3.connect(path) as conn:  # a file as the first release left it
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO tenants VALUES ('acme', 1, '{}', '{}', 1)")
    conn.close()
    store = await SqliteCatalog.open(path)
    assert (await store.get_tenant("acme")).created_ms == 1
    await store.put_setting("x", "y")
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_schema_is_versioned_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    store = await SqliteCatalog.open(path)
    await store.create_tenant("acme")
    await store.create_topic("acme", "orders", {"x": 1})
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    reopened = await SqliteCatalog.open(path)
    assert (await reopened.get_topic("acme", "orders")).config == {"x": 1}
    await reopened.close()
    # A file from a newer build is refused rather than misread.
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        await SqliteCatalog.open(path)


# --- SQLite on a full disk -----------------------------------------------------------------


async def test_a_full_disk_refuses_writes_as_disk_full_and_keeps_reads(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small-fs", "2m") as disk:
        path, filler = disk / "catalog.sqlite3", disk / "filler"
        store = await SqliteCatalog.open(path)
        try:
            await store.create_tenant("globex")
            await store.create_topic("globex", "orders", {})
            fill(filler)
            with pytest.raises(DiskFullError) as refused:
                await store.create_topic("globex", "payments", {})
            assert refused.value.retriable and refused.value.status == 503
            cause = refused.value.__cause__
            assert isinstance(cause, sqlite3.OperationalError)
            assert cause.sqlite_errorcode == sqlite3.SQLITE_FULL  # "database or disk is full"
            with pytest.raises(DiskFullError):
                await store.add_usage([_use("globex", 0, requests=1)])
            assert [t.name for t in await store.list_topics("globex")] == ["orders"]
            assert await store.list_usage(H0, H0 + HOUR_MS) == []
        finally:
            await store.close()
        # Opened again on the still full disk, as by a server restarted there: it reads, and
        # takes writes again as soon as there is room, with no reopening.
        fill(filler)
        reopened = await SqliteCatalog.open(path)
        try:
            assert [t.name for t in await reopened.list_topics("globex")] == ["orders"]
            with pytest.raises(DiskFullError):
                await reopened.create_topic("globex", "payments", {})
            filler.unlink()
            await reopened.create_topic("globex", "payments", {})
            names = [t.name for t in await reopened.list_topics("globex")]
            assert names == ["orders", "payments"]
        finally:
            await reopened.close()


async def test_a_catalog_closed_cleanly_opens_and_reads_on_a_full_disk(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small-fs", "2m") as disk:
        path, filler = disk / "catalog.sqlite3", disk / "filler"
        store = await SqliteCatalog.open(path)
        await store.create_tenant("globex")
        await store.close()
        # SQLite removed its shared-memory index at the clean close; the store put back one
        # of the size the next open needs.
        index = path.with_name(path.name + SHARED_INDEX_SUFFIX)
        assert index.stat().st_size == SHARED_INDEX_BYTES
        fill(filler)
        reopened = await SqliteCatalog.open(path)
        try:
            assert [t.name for t in await reopened.list_tenants()] == ["globex"]
            with pytest.raises(DiskFullError):
                await reopened.create_tenant("initech")
        finally:
            await reopened.close()
        # Without that file, opening needs room for it: SQLite says "disk I/O error", and the
        # store tells it for what it is.
        index.unlink()
        fill(filler)
        with pytest.raises(DiskFullError) as refused:
            await SqliteCatalog.open(path)
        cause = refused.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert cause.sqlite_errorcode & 0xFF == sqlite3.SQLITE_IOERR
        filler.unlink()
        roomy = await SqliteCatalog.open(path)
        assert [t.name for t in await roomy.list_tenants()] == ["globex"]
        await roomy.close()


def test_only_sqlite_failures_for_room_count_as_a_full_disk(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (x BLOB)")
        # The file may not grow past its size now: SQLite refuses as on a full disk.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError) as full:
            conn.execute("INSERT INTO t VALUES (randomblob(100000))")
        assert out_of_space(full.value, tmp_path)
        with pytest.raises(sqlite3.OperationalError) as other:
            conn.execute("SELECT * FROM missing")
        assert not out_of_space(other.value, tmp_path)
        # An I/O error with room to spare is no full disk (nor an error SQLite did not make).
        assert not out_of_space(sqlite3.OperationalError("disk I/O error"), tmp_path)
    finally:
        conn.close()
