"""The DynamoDB catalog's groups, answers, remote segments and usage, against moto.

Two kinds of tests: the conformance suite's cases for those four entities, run unchanged
against the functions through :class:`_Entities` (until the DynamoDB store joins
``tests/test_catalog.py``'s ``catalog`` fixture), and what only DynamoDB has: chunked
transactions, writes whose answer was lost, eventually consistent indexes, TTL attributes.

Topics are made by the small helpers below, which write the name, incarnation and
partition items as the topics module does (only the attributes read here).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import aiohttp
import pytest

import partitions.catalog_dynamodb.answers as answers
import partitions.catalog_dynamodb.groups as groups
import partitions.catalog_dynamodb.keys as keys
import partitions.catalog_dynamodb.segments as segments
import partitions.catalog_dynamodb.usage as usage
import tests.test_catalog as conformance
from partitions.catalog import (
    HOUR_MS,
    IdempotencyRecord,
    RemoteSegmentRecord,
    RemoteSegmentState,
    TopicRecord,
    UsageCounters,
    UsageRecord,
)
from partitions.catalog_dynamodb.client import Dynamo, item, plain
from partitions.catalog_dynamodb.tables import TTL_ATTRIBUTE, create_tables
from partitions.errors import (
    GroupNotFoundError,
    PartitionNotFoundError,
    RemoteSegmentStateError,
    StaleGenerationError,
    TopicNotFoundError,
    UsagePartlyAddedError,
    VersionConflictError,
)
from tests.dynamodb import new_table_names

STARTED = RemoteSegmentState.COPY_STARTED
FINISHED = RemoteSegmentState.COPY_FINISHED
DELETING = RemoteSegmentState.DELETE_STARTED


@pytest.fixture
async def db(dynamodb_endpoint: str) -> AsyncIterator[Dynamo]:
    names = new_table_names()
    dynamo = await Dynamo.open(names, endpoint_url=dynamodb_endpoint)
    await create_tables(dynamo.client, names)
    yield dynamo
    await dynamo.close()


# --- topics, as the topics module writes them ------------------------------------------------


async def _put_all(db: Dynamo, kind: str, items: Iterable[dict[str, Any]]) -> None:
    pending = list(items)
    while pending:
        chunk, pending = pending[:25], pending[25:]
        ask = {db.table(kind): [{"PutRequest": {"Item": one}} for one in chunk]}
        while ask:
            ask = (await db.client.batch_write_item(RequestItems=ask)).get("UnprocessedItems")


def _partition(tenant: str, inc: str, pid: int) -> dict[str, Any]:
    return keys.partition(tenant, inc, pid) | item(pid=pid, state="active", version=1)


async def make_topic(db: Dynamo, tenant: str, topic: str, partitions: int = 1) -> str:
    """A live topic with partitions ``0..partitions-1``; answers its incarnation."""
    inc = uuid.uuid4().hex
    await _put_all(
        db,
        "catalog",
        [
            keys.topic_name(tenant, topic) | item(incarnation=inc),
            keys.incarnation(tenant, inc)
            | item(name=topic, config="{}", created_ms=0, version=1, next_pid=partitions),
            *(_partition(tenant, inc, pid) for pid in range(partitions)),
        ],
    )
    return inc


async def add_partitions(db: Dynamo, tenant: str, inc: str, count: int) -> None:
    found = await db.get("test", "catalog", keys.incarnation(tenant, inc))
    assert found is not None
    first = int(found["next_pid"])
    await _put_all(db, "catalog", [_partition(tenant, inc, first + i) for i in range(count)])
    await db.client.update_item(
        TableName=db.table("catalog"),
        Key=keys.incarnation(tenant, inc),
        UpdateExpression="SET next_pid = :n",
        ExpressionAttributeValues={":n": {"N": str(first + count)}},
    )


async def drop_topic(db: Dynamo, tenant: str, topic: str) -> str:
    """Mark the topic's incarnation deleted and forget its groups and answers."""
    found = await db.get("test", "catalog", keys.topic_name(tenant, topic))
    assert found is not None
    inc = str(found["incarnation"])
    await db.client.update_item(
        TableName=db.table("catalog"),
        Key=keys.incarnation(tenant, inc),
        UpdateExpression="SET deleted_ms = :now",
        ExpressionAttributeValues={":now": {"N": "1"}},
    )
    await db.client.delete_item(TableName=db.table("catalog"), Key=keys.topic_name(tenant, topic))
    await groups.forget_groups(db, tenant, inc)
    await answers.forget_answers(db, tenant, inc)
    return inc


class _Entities:
    """The Catalog methods that the conformance cases of groups, answers, remote segments
    and usage call: the functions under test, and topics by the helpers above."""

    def __init__(self, db: Dynamo) -> None:
        self.db = db
        for module, names in (
            (groups, ("get_group", "list_groups", "put_group", "commit_offsets", "delete_group")),
            (answers, ("remember_answer", "find_answer", "forget_expired_answers")),
            (
                segments,
                (
                    "add_remote_segment",
                    "set_remote_segment_state",
                    "list_remote_segments",
                    "remove_remote_segment",
                    "list_remote_segments_in_state",
                ),
            ),
            (usage, ("add_usage", "list_usage")),
        ):
            for name in names:
                setattr(self, name, partial(getattr(module, name), db))

    async def create_tenant(self, name: str) -> None:
        pass  # nothing here reads tenants

    async def delete_tenant(self, name: str) -> None:
        pass  # usage outlives its tenant: nothing of it to delete

    async def create_topic(
        self, tenant: str, name: str, config: dict[str, Any]
    ) -> tuple[TopicRecord, None]:
        inc = await make_topic(self.db, tenant, name)
        return TopicRecord(tenant, name, inc, config, 0), None

    async def split_partition(self, tenant: str, topic: str, pid: int, **_: Any) -> None:
        found = await self.db.get("test", "catalog", keys.topic_name(tenant, topic))
        assert found is not None
        await add_partitions(self.db, tenant, str(found["incarnation"]), 2)

    async def delete_topic(self, tenant: str, name: str) -> None:
        await drop_topic(self.db, tenant, name)

    async def purge_topic(self, tenant: str, inc: str) -> None:
        await segments.forget_segments(self.db, tenant, inc)


@pytest.mark.parametrize(
    "case",
    [
        "test_commits_create_the_group_and_are_read_back",
        "test_generation_fencing_and_group_compare_and_set",
        "test_racing_commits_with_one_expected_version",
        "test_idempotency_records",
        "test_remote_segments_follow_kip_405_states",
        "test_no_copy_starts_for_a_deleted_or_unknown_topic",
        "test_remote_segments_listed_by_state_across_topics",
        "test_usage_deltas_add_up_per_tenant_and_hour",
        "test_usage_refusals_add_nothing",
        "test_usage_outlives_its_tenant",
        "test_concurrent_usage_deltas_are_each_added_once",
    ],
)
async def test_conformance_cases(db: Dynamo, case: str) -> None:
    await getattr(conformance, case)(_Entities(db))


# --- a client whose calls can be made to fail ------------------------------------------------


class _Client:
    """``db.client`` with a hook around one operation: ``hook(send)`` is awaited instead of
    the call, ``send()`` making the call itself."""

    def __init__(
        self,
        inner: Any,
        operation: str,
        hook: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ) -> None:
        self._inner = inner
        self._operation = operation
        self._hook = hook
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name != self._operation:
            return method

        async def hooked(**params: Any) -> Any:
            self.calls += 1
            return await self._hook(partial(method, **params))

        return hooked


def _hook(db: Dynamo, operation: str, hook: Any) -> _Client:
    client = _Client(db.client, operation, hook)
    db.client = client
    return client


def answer_lost_once() -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    """A hook that sends the first call and then loses its answer, as a connection broken
    after the request went out would; later calls go through."""
    lost = False

    async def hook(send: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal lost
        answer = await send()
        if not lost:
            lost = True
            raise aiohttp.ServerDisconnectedError()
        return answer

    return hook


async def _catalog_items(db: Dynamo, pk: str) -> list[dict[str, Any]]:
    return await db.query(
        "test",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}},
    )


# --- groups --------------------------------------------------------------------------------


async def test_a_commit_over_98_partitions_is_chunked_and_read_back(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders", partitions=250)
    offsets = {pid: pid * 10 for pid in range(250)}
    group = await groups.commit_offsets(db, "acme", "orders", "g", offsets)
    assert group.offsets == offsets and group.generation == 0
    assert group.version == 3  # three chunks (98, 98, 54), each bumps the version
    assert (await groups.get_group(db, "acme", "orders", "g")).offsets == offsets
    # With expected_version, the first chunk compares it; a conflict commits nothing.
    moved = {pid: pid * 10 + 1 for pid in range(250)}
    again = await groups.commit_offsets(db, "acme", "orders", "g", moved, expected_version=3)
    assert again.offsets == moved and again.version == 6
    with pytest.raises(VersionConflictError) as refused:
        await groups.commit_offsets(
            db, "acme", "orders", "g", dict.fromkeys(range(250), 0), expected_version=3
        )
    assert refused.value.details["version"] == 6
    assert (await groups.get_group(db, "acme", "orders", "g")).offsets == moved
    # Deleting it takes several transactions and leaves nothing behind.
    await groups.delete_group(db, "acme", "orders", "g", expected_version=6)
    assert await _catalog_items(db, keys.groups_pk("acme", inc)) == []
    with pytest.raises(GroupNotFoundError):
        await groups.get_group(db, "acme", "orders", "g")


async def test_generation_fences_every_chunk(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders", partitions=150)
    await groups.put_group(
        db, "acme", "orders", "g", generation=1, metadata={}, expected_version=None
    )
    # Stale at the first chunk: nothing is committed.
    with pytest.raises(StaleGenerationError) as refused:
        await groups.commit_offsets(
            db, "acme", "orders", "g", dict.fromkeys(range(150), 5), generation=0
        )
    assert refused.value.details["generation"] == 1
    assert (await groups.get_group(db, "acme", "orders", "g")).offsets == {}

    # A rebalance between the first chunk and the second refuses the rest.
    async def rebalance_after_first(send: Callable[[], Awaitable[Any]]) -> Any:
        answer = await send()
        if client.calls == 1:
            await client._inner.update_item(
                TableName=db.table("catalog"),
                Key=keys.group("acme", inc, "g"),
                UpdateExpression="SET generation = :g, version = version + :one",
                ExpressionAttributeValues={":g": {"N": "2"}, ":one": {"N": "1"}},
            )
        return answer

    client = _hook(db, "transact_write_items", rebalance_after_first)
    with pytest.raises(StaleGenerationError) as refused:
        await groups.commit_offsets(
            db, "acme", "orders", "g", dict.fromkeys(range(150), 5), generation=1
        )
    assert refused.value.details["generation"] == 2
    stored = await groups.get_group(db, "acme", "orders", "g")
    assert stored.offsets == dict.fromkeys(range(98), 5)  # the first chunk, by partition id
    assert stored.generation == 2


async def test_expected_version_is_compared_by_the_first_chunk_only(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders", partitions=100)
    group = await groups.commit_offsets(db, "acme", "orders", "g", {0: 1})

    async def write_between_chunks(send: Callable[[], Awaitable[Any]]) -> Any:
        answer = await send()
        if client.calls == 1:
            await client._inner.update_item(
                TableName=db.table("catalog"),
                Key=keys.group("acme", inc, "g"),
                UpdateExpression="SET version = version + :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        return answer

    client = _hook(db, "transact_write_items", write_between_chunks)
    done = await groups.commit_offsets(
        db, "acme", "orders", "g", dict.fromkeys(range(100), 7), expected_version=group.version
    )
    assert done.offsets == dict.fromkeys(range(100), 7)
    assert done.version == group.version + 3  # two chunks and the write between them


async def test_a_commit_whose_answer_was_lost_counts_once(db: Dynamo) -> None:
    await make_topic(db, "acme", "orders", partitions=2)
    group = await groups.commit_offsets(db, "acme", "orders", "g", {0: 1})
    client = _hook(db, "transact_write_items", answer_lost_once())
    # Sent again blindly, it would find version + 1 and call itself a conflict.
    done = await groups.commit_offsets(
        db, "acme", "orders", "g", {0: 2, 1: 3}, expected_version=group.version
    )
    assert client.calls == 1
    assert done.offsets == {0: 2, 1: 3} and done.version == group.version + 1
    put = await groups.put_group(
        db, "acme", "orders", "g2", generation=1, metadata={}, expected_version=None
    )
    assert put.version == 1


async def test_a_group_deleted_as_a_commit_lands_leaves_no_offset_behind(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders", partitions=3)
    await groups.commit_offsets(db, "acme", "orders", "g", {0: 1})

    async def commit_first(send: Callable[[], Awaitable[Any]]) -> Any:
        if client.calls == 1:  # a commit lands between the deletion's read and its write
            db.client = client._inner
            await groups.commit_offsets(db, "acme", "orders", "g", {1: 2, 2: 3})
            db.client = client
        return await send()

    client = _hook(db, "transact_write_items", commit_first)
    await groups.delete_group(db, "acme", "orders", "g")
    assert client.calls == 2  # refused once by the changed group, then done
    assert await _catalog_items(db, keys.groups_pk("acme", inc)) == []


async def test_a_refused_chunked_deletion_deletes_nothing(db: Dynamo) -> None:
    await make_topic(db, "acme", "orders", partitions=150)
    group = await groups.commit_offsets(db, "acme", "orders", "g", dict.fromkeys(range(150), 1))
    with pytest.raises(VersionConflictError):
        await groups.delete_group(db, "acme", "orders", "g", expected_version=group.version - 1)
    assert await groups.get_group(db, "acme", "orders", "g") == group


async def test_commit_refusals_change_nothing(db: Dynamo) -> None:
    await make_topic(db, "acme", "orders", partitions=2)
    with pytest.raises(PartitionNotFoundError):
        await groups.commit_offsets(db, "acme", "orders", "g", {0: 1, 2: 1})
    with pytest.raises(GroupNotFoundError):
        await groups.get_group(db, "acme", "orders", "g")
    with pytest.raises(StaleGenerationError) as stale:
        await groups.commit_offsets(db, "acme", "orders", "g", {0: 1}, generation=0)
    assert stale.value.details["generation"] is None
    with pytest.raises(VersionConflictError) as conflict:
        await groups.commit_offsets(db, "acme", "orders", "g", {0: 1}, expected_version=1)
    assert conflict.value.details["version"] is None
    assert await groups.list_groups(db, "acme", "orders") == []
    with pytest.raises(TopicNotFoundError):
        await groups.commit_offsets(db, "acme", "nope", "g", {0: 1})


async def test_groups_of_a_deleted_topic_are_gone_and_cannot_be_written(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders", partitions=2)
    for name in ("b", "a", "ab"):
        await groups.commit_offsets(db, "acme", "orders", name, {0: 1, 1: 2})
    listed = await groups.list_groups(db, "acme", "orders")
    assert [g.group for g in listed] == ["a", "ab", "b"]
    assert all(g.offsets == {0: 1, 1: 2} for g in listed)
    # A writer that read the incarnation before the deletion is refused by the
    # transaction's check of it, and leaves no group behind.
    name_item = await db.get("test", "catalog", keys.topic_name("acme", "orders"))
    await drop_topic(db, "acme", "orders")
    await db.client.put_item(
        TableName=db.table("catalog"), Item=keys.topic_name("acme", "orders") | item(**name_item)
    )
    with pytest.raises(TopicNotFoundError):
        await groups.commit_offsets(db, "acme", "orders", "late", {0: 1})
    with pytest.raises(TopicNotFoundError):
        await groups.put_group(
            db, "acme", "orders", "late", generation=1, metadata={}, expected_version=None
        )
    assert await _catalog_items(db, keys.groups_pk("acme", inc)) == []
    await groups.forget_groups(db, "acme", inc)  # again: nothing to do


# --- answers -------------------------------------------------------------------------------


async def test_answers_expire_and_carry_their_ttl(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "orders")
    first = IdempotencyRecord("acme", "orders", "k", "h1", '{"offsets":[1]}', 10_500)
    assert await answers.remember_answer(db, first, now_ms=0) == first
    raw = await db.get("test", "answers", keys.answer("acme", inc, "k"))
    assert raw is not None and raw[TTL_ATTRIBUTE] == 11  # seconds, rounded up
    other = dataclasses.replace(first, request_hash="h2", answer="{}", expires_ms=20_000)
    assert await answers.remember_answer(db, other, now_ms=10_499) == first
    assert await answers.find_answer(db, "acme", "orders", "k", now_ms=10_500) is None
    assert await answers.remember_answer(db, other, now_ms=10_500) == other
    assert await answers.find_answer(db, "acme", "orders", "k", now_ms=19_999) == other
    await answers.forget_answers(db, "acme", inc)
    assert await answers.find_answer(db, "acme", "orders", "k", now_ms=0) is None


async def test_a_lost_answer_to_remembering_is_resolved(db: Dynamo) -> None:
    await make_topic(db, "acme", "orders")
    record = IdempotencyRecord("acme", "orders", "k", "h1", "{}", 5_000)
    client = _hook(db, "put_item", answer_lost_once())
    # Sent again blindly, its condition would find it and answer it as another's.
    assert await answers.remember_answer(db, record, now_ms=0) == record
    assert client.calls == 1


async def test_forgetting_expired_answers_spares_one_remembered_since(db: Dynamo) -> None:
    await make_topic(db, "acme", "orders")
    for key in ("a", "b"):
        record = IdempotencyRecord("acme", "orders", key, "h", "{}", 1_000)
        await answers.remember_answer(db, record, now_ms=0)
    fresh = IdempotencyRecord("acme", "orders", "a", "h2", "{}", 9_000)

    async def remember_after_scan(send: Callable[[], Awaitable[Any]]) -> Any:
        answer = await send()
        db.client = client._inner
        await answers.remember_answer(db, fresh, now_ms=2_000)
        return answer

    client = _hook(db, "scan", remember_after_scan)
    assert await answers.forget_expired_answers(db, now_ms=2_000) == 1
    assert await answers.find_answer(db, "acme", "orders", "a", now_ms=2_000) == fresh
    assert await answers.forget_expired_answers(db, now_ms=2_000) == 0


# --- remote segments ------------------------------------------------------------------------


def _segment(tenant: str, inc: str, pid: int, base: int) -> RemoteSegmentRecord:
    return RemoteSegmentRecord(
        tenant=tenant,
        incarnation=inc,
        partition_id=pid,
        base_offset=base,
        last_offset=base + 9,
        size_bytes=100,
        first_timestamp_ms=1,
        max_timestamp_ms=2,
        object_key=f"{tenant}/{inc}/{pid}/{base}",
        state=STARTED,
    )


def _ident(record: RemoteSegmentRecord) -> tuple[str, str, int, int]:
    return (record.tenant, record.incarnation, record.partition_id, record.base_offset)


async def test_segments_by_state_paginate_and_drop_stale_index_entries(db: Dynamo) -> None:
    rows = []
    # Tenant names that are prefixes of each other, and ids that sort as numbers.
    for tenant in ("ab", "a", "b"):
        inc = await make_topic(db, tenant, "t", partitions=11)
        for pid in (10, 2):
            for base in (100, 9):
                rows.append(await segments.add_remote_segment(db, _segment(tenant, inc, pid, base)))
    expected = sorted(_ident(r) for r in rows)
    listed = await segments.list_remote_segments_in_state(db, STARTED)
    assert [_ident(r) for r in listed] == expected
    paged: list[tuple[str, str, int, int]] = []
    after = None
    while page := await segments.list_remote_segments_in_state(db, STARTED, after=after, limit=5):
        paged.extend(_ident(r) for r in page)
        after = paged[-1]
    assert paged == expected
    # "Before any" bounds: a negative partition or base.
    tenant, inc = expected[4][:2]
    tail = await segments.list_remote_segments_in_state(db, STARTED, after=(tenant, inc, -1, -1))
    assert [_ident(r) for r in tail] == [e for e in expected if e[:2] >= (tenant, inc)]
    tail = await segments.list_remote_segments_in_state(db, STARTED, after=(tenant, inc, 10, -1))
    assert [_ident(r) for r in tail] == [e for e in expected if e >= (tenant, inc, 10, 0)]

    # The index lags: an item whose state moved on but whose index entry still says
    # copy-started (as a lagging index would answer) is not listed.
    first = expected[0]
    await segments.set_remote_segment_state(db, *first, from_state=STARTED, to_state=FINISHED)
    await db.client.update_item(
        TableName=db.table("catalog"),
        Key=keys.segment(*first),
        UpdateExpression="SET gsi1pk = :pk, gsi1sk = :sk",
        ExpressionAttributeValues={
            ":pk": {"S": keys.segment_state_pk(STARTED.value)},
            ":sk": {"S": keys.segment_order(*first)},
        },
    )
    page = await segments.list_remote_segments_in_state(db, STARTED, limit=3)
    assert [_ident(r) for r in page] == expected[1:4]  # and still a full page
    finished = await segments.list_remote_segments_in_state(db, FINISHED)
    assert [_ident(r) for r in finished] == [first]

    # Copy-finished ones (by a Scan) page the same way.
    for ident in expected[1:]:
        await segments.set_remote_segment_state(db, *ident, from_state=STARTED, to_state=FINISHED)
    paged = []
    after = None
    while page := await segments.list_remote_segments_in_state(db, FINISHED, after=after, limit=4):
        paged.extend(_ident(r) for r in page)
        after = paged[-1]
    assert paged == expected
    assert await segments.list_remote_segments_in_state(db, STARTED) == []
    assert await segments.list_remote_segments_in_state(db, DELETING) == []


async def test_segment_state_changes_leave_and_enter_the_index(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "t")
    await segments.add_remote_segment(db, _segment("acme", inc, 0, 0))
    key = keys.segment("acme", inc, 0, 0)
    raw = await db.get("test", "catalog", key)
    assert raw is not None and raw["gsi1pk"] == keys.segment_state_pk(STARTED.value)
    await segments.set_remote_segment_state(
        db, "acme", inc, 0, 0, from_state=STARTED, to_state=FINISHED
    )
    raw = await db.get("test", "catalog", key)
    assert raw is not None and "gsi1pk" not in raw and "gsi1sk" not in raw
    client = _hook(db, "update_item", answer_lost_once())
    deleting = await segments.set_remote_segment_state(
        db, "acme", inc, 0, 0, from_state=FINISHED, to_state=DELETING
    )
    assert client.calls == 1 and deleting.state is DELETING and deleting.version == 3
    db.client = client._inner
    raw = await db.get("test", "catalog", key)
    assert raw is not None and raw["gsi1pk"] == keys.segment_state_pk(DELETING.value)
    with pytest.raises(RemoteSegmentStateError) as refused:
        await segments.set_remote_segment_state(
            db, "acme", inc, 0, 0, from_state=STARTED, to_state=FINISHED
        )
    assert refused.value.details["state"] == DELETING.value
    await segments.remove_remote_segment(db, "acme", inc, 0, 0)
    assert await segments.list_remote_segments_in_state(db, DELETING) == []


async def test_forgetting_segments_empties_every_partition(db: Dynamo) -> None:
    inc = await make_topic(db, "acme", "t", partitions=3)
    other = await make_topic(db, "acme", "u")
    for pid in range(3):
        await segments.add_remote_segment(db, _segment("acme", inc, pid, 0))
    await segments.add_remote_segment(db, _segment("acme", other, 0, 0))
    await segments.forget_segments(db, "acme", inc)
    for pid in range(3):
        assert await segments.list_remote_segments(db, "acme", inc, pid) == []
    assert len(await segments.list_remote_segments(db, "acme", other, 0)) == 1
    await segments.forget_segments(db, "acme", inc)  # again: nothing to do


# --- usage ---------------------------------------------------------------------------------

H0 = 490_000 * HOUR_MS


def _use(tenant: str, hour: int, **counters: int) -> UsageRecord:
    return UsageRecord(tenant, H0 + hour * HOUR_MS, UsageCounters(**counters))


async def test_usage_adds_once_when_the_answer_is_lost(db: Dynamo) -> None:
    client = _hook(db, "transact_write_items", answer_lost_once())
    await usage.add_usage(db, [_use("acme", 0, requests=3), _use("b", 1, bytes_in=5)])
    assert client.calls == 1  # the marker said it landed: not sent again
    assert await usage.list_usage(db, H0, H0 + 2 * HOUR_MS) == [
        _use("acme", 0, requests=3),
        _use("b", 1, bytes_in=5),
    ]


async def test_usage_sent_again_after_landing_unseen_is_refused_by_its_marker(
    db: Dynamo,
) -> None:
    # The answer is lost and the marker's read misses it (as if the first request were
    # still on its way): it is sent again, and its own marker refuses the second one.
    client = _hook(db, "transact_write_items", answer_lost_once())
    real_get = client._inner.get_item
    misses = 0

    async def get_item(**params: Any) -> Any:
        nonlocal misses
        if params["Key"]["pk"]["S"].startswith("FLUSH") and not misses:
            misses += 1
            return {}
        return await real_get(**params)

    client.get_item = get_item  # type: ignore[attr-defined]
    await usage.add_usage(db, [_use("acme", 0, requests=3)])
    assert client.calls == 2 and misses == 1
    assert await usage.list_usage(db, H0, H0 + HOUR_MS) == [_use("acme", 0, requests=3)]


async def test_usage_of_many_rows_is_chunked_and_each_counted_once(db: Dynamo) -> None:
    deltas = [_use(f"t{i:03d}", i % 3, requests=i + 1) for i in range(250)]
    await usage.add_usage(db, deltas + [_use("t000", 0, bytes_out=2)])
    rows = await usage.list_usage(db, H0, H0 + 3 * HOUR_MS)
    assert len(rows) == 250
    assert [(r.hour_ms, r.tenant) for r in rows] == sorted((d.hour_ms, d.tenant) for d in deltas)
    by_tenant = {r.tenant: r.counters for r in rows}
    assert by_tenant["t000"] == UsageCounters(requests=1, bytes_out=2)
    assert by_tenant["t249"] == UsageCounters(requests=250)
    # One marker per chunk, each expiring a day from now, none of them listed as usage.
    markers = [
        plain(one)
        for one in (await db.client.scan(TableName=db.table("usage")))["Items"]
        if one["pk"]["S"].startswith("FLUSH")
    ]
    assert len(markers) == 3
    now = time.time()
    assert all(now < m[TTL_ATTRIBUTE] <= now + 86_400 + 5 for m in markers)
    assert len(await usage.list_usage(db, 0, H0 * 2)) == 250  # the Scan of wide ranges


async def test_a_flush_cut_short_names_the_rows_it_did_not_add(db: Dynamo) -> None:
    # The first chunk lands; then DynamoDB cannot be reached until the deadline.
    sent = 0

    async def first_only(send: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal sent
        sent += 1
        if sent == 1:
            answer = await send()
            db.timeout_s = 0.5  # down from now on: give up soon
            return answer
        raise ConnectionRefusedError("down")

    _hook(db, "transact_write_items", first_only)
    deltas = [_use(f"t{i:03d}", 0, requests=1) for i in range(150)]
    with pytest.raises(UsagePartlyAddedError) as cut:
        await usage.add_usage(db, deltas)
    left = {(tenant, hour) for tenant, hour in cut.value.details["not_added"]}
    added = {(r.tenant, r.hour_ms) for r in await usage.list_usage(db, H0, H0 + HOUR_MS)}
    assert len(added) == usage.FLUSH_CHUNK and len(left) == 150 - usage.FLUSH_CHUNK
    assert added.isdisjoint(left) and added | left == {(d.tenant, d.hour_ms) for d in deltas}


async def test_usage_across_days_and_half_open_ranges(db: Dynamo) -> None:
    day = 24 * HOUR_MS
    start = (H0 // day) * day + 22 * HOUR_MS  # two hours before midnight
    await usage.add_usage(
        db,
        [
            UsageRecord(tenant, start + hour * HOUR_MS, UsageCounters(requests=1))
            for hour in range(5)
            for tenant in ("b", "a")
        ],
    )
    rows = await usage.list_usage(db, start + HOUR_MS, start + 4 * HOUR_MS)
    assert [(r.hour_ms - start, r.tenant) for r in rows] == [
        (h * HOUR_MS, t) for h in (1, 2, 3) for t in ("a", "b")
    ]
    mine = await usage.list_usage(db, start + 1, start + 3 * HOUR_MS, tenant="b")
    assert [r.hour_ms - start for r in mine] == [HOUR_MS, 2 * HOUR_MS]
    assert await usage.list_usage(db, start, start) == []
