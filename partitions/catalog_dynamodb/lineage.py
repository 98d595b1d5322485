"""Partitions and their lineage: splits, merges, placements and start offsets.

A split or a merge is one ``TransactWriteItems`` of at most seven actions: the incarnation
(its id counter moved on from the value read, its active count, and a check that it lives),
each parent sealed at the version read while still active, the children created, the
tenant's active count (with its limit as the condition) and, when the caller gives the
parent owners' leases, a check of each (first; a failed one raises
:class:`~partitions.errors.LeaseLostError` before any other explanation). An advance of the
log start carries the same check when given a lease. Of two racing changes one wins;
the other is cancelled whole and, read again, finds its parent sealed (or, if only the
id counter moved, tries again). A refusal spends no ids. The children carry the
operation's id, which is how a change whose answer was lost is found to have happened.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import (
    HashRange,
    LeaseFence,
    LineageChange,
    PartitionRecord,
    PartitionState,
)
from partitions.catalog_dynamodb.client import Dynamo, TransactionRefused, values
from partitions.catalog_dynamodb.incarnations import (
    live_incarnation,
    live_topic,
    missing,
    name_points_at,
)
from partitions.catalog_dynamodb.leases import fence_check, lease_lost
from partitions.catalog_dynamodb.records import partition_record
from partitions.catalog_dynamodb.tenants import count_change, counts_of, no_tenant
from partitions.catalog_dynamodb.topics import RACE_ATTEMPTS, new_partition_item
from partitions.catalog_rules import (
    check_active,
    check_end,
    check_merge_request,
    check_new_start,
    check_partition_limit,
    merge_order,
)
from partitions.errors import (
    InvalidSplitPointError,
    PartitionNotActiveError,
    PartitionNotFoundError,
    VersionConflictError,
)


def _no_partition(topic: str, pid: int) -> PartitionNotFoundError:
    return PartitionNotFoundError(
        f"topic {topic!r} has no partition {pid}", topic=topic, partition=pid
    )


async def _partition(
    db: Dynamo, tenant: str, topic: str, incarnation: str, pid: int
) -> PartitionRecord:
    found = await db.get("get partition", "catalog", keys.partition(tenant, incarnation, pid))
    if found is None:
        raise _no_partition(topic, pid)
    return partition_record(tenant, topic, incarnation, found)


async def _all_partitions(db: Dynamo, tenant: str, incarnation: str) -> list[dict[str, Any]]:
    return await db.query(
        "list partitions",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.partitions_pk(tenant, incarnation)),
    )


async def list_partitions(
    db: Dynamo, tenant: str, topic: str, *, incarnation: str | None = None
) -> list[PartitionRecord]:
    live = await live_incarnation(db, tenant, topic, incarnation)
    found = await _all_partitions(db, tenant, live)
    return [partition_record(tenant, topic, live, f) for f in found]  # by id: the sort key


async def get_partition(db: Dynamo, tenant: str, topic: str, partition_id: int) -> PartitionRecord:
    live = await live_incarnation(db, tenant, topic)
    return await _partition(db, tenant, topic, live, partition_id)


async def list_placements(db: Dynamo, tenant: str, incarnation: str) -> dict[int, int]:
    found = await _all_partitions(db, tenant, incarnation)
    return {f["pid"]: f["worker"] for f in found if f.get("worker") is not None}


def _take_ids(
    db: Dynamo, tenant: str, incarnation: str, first: int, count: int, active: int
) -> dict[str, Any]:
    """The incarnation's id counter moved past ``count`` ids from ``first`` (the value
    read) and its active count changed by ``active``; only while it lives."""
    return {
        "Update": {
            "TableName": db.table("catalog"),
            "Key": keys.incarnation(tenant, incarnation),
            "UpdateExpression": "SET next_pid = :next ADD n_active :da",
            "ConditionExpression": "next_pid = :first AND attribute_not_exists(deleted_ms)",
            "ExpressionAttributeValues": values(next=first + count, first=first, da=active),
        }
    }


def _seal(
    db: Dynamo, parent: PartitionRecord, end_offset: int, children: list[int], now: int
) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": db.table("catalog"),
            "Key": keys.partition(parent.tenant, parent.incarnation, parent.partition_id),
            "UpdateExpression": (
                "SET #state = :sealed, end_offset = :end, children = :children, "
                "sealed_ms = :now, version = version + :one"
            ),
            "ConditionExpression": "version = :v AND #state = :active",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": values(
                sealed="sealed",
                end=end_offset,
                children=children,
                now=now,
                one=1,
                v=parent.version,
                active="active",
            ),
        }
    }


def _sealed(
    parent: PartitionRecord, end_offset: int, children: list[int], now: int
) -> PartitionRecord:
    return PartitionRecord(
        tenant=parent.tenant,
        topic=parent.topic,
        incarnation=parent.incarnation,
        partition_id=parent.partition_id,
        hash_range=parent.hash_range,
        state=PartitionState.SEALED,
        parents=parent.parents,
        children=tuple(children),
        start_offset=parent.start_offset,
        end_offset=end_offset,
        created_ms=parent.created_ms,
        sealed_ms=now,
        version=parent.version + 1,
    )


def _child(
    tenant: str,
    topic: str,
    incarnation: str,
    pid: int,
    hash_range: HashRange,
    parents: tuple[int, ...],
    now: int,
) -> PartitionRecord:
    return PartitionRecord(
        tenant=tenant,
        topic=topic,
        incarnation=incarnation,
        partition_id=pid,
        hash_range=hash_range,
        state=PartitionState.ACTIVE,
        parents=parents,
        children=(),
        start_offset=0,
        end_offset=None,
        created_ms=now,
    )


async def _apply(
    db: Dynamo,
    what: str,
    tenant: str,
    topic: str,
    incarnation: str,
    actions: list[dict[str, Any]],
    first_child: int,
    op: str,
) -> None:
    async def landed() -> bool:
        found = await db.get(
            "read back", "catalog", keys.partition(tenant, incarnation, first_child)
        )
        return found is not None and found.get("op") == op

    await db.transact(what, actions, landed=landed)


async def split_partition(
    db: Dynamo,
    tenant: str,
    topic: str,
    partition_id: int,
    *,
    at: int,
    end_offset: int,
    max_partitions: int | None,
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
    fence: LeaseFence | None = None,
) -> LineageChange:
    fenced = {} if fence is None else {partition_id: fence}
    for _ in range(RACE_ATTEMPTS):
        current = await live_topic(db, tenant, topic)
        incarnation = current["incarnation"]
        parent = await _partition(db, tenant, topic, incarnation, partition_id)
        if not parent.active:
            raise PartitionNotActiveError(
                f"partition {partition_id} is sealed", partition=partition_id
            )
        if not parent.hash_range.start < at < parent.hash_range.end:
            raise InvalidSplitPointError(
                f"split point {at} is not strictly inside partition {partition_id}'s range "
                f"[{parent.hash_range.start}, {parent.hash_range.end})",
                partition=partition_id,
            )
        check_end(parent, end_offset)
        now = clock_ms()
        op = uuid.uuid4().hex
        left, right = current["next_pid"], current["next_pid"] + 1
        ranges = (HashRange(parent.hash_range.start, at), HashRange(at, parent.hash_range.end))
        workers = [None, None] if placement is None else list(placement)
        actions = [
            *_fence_checks(db, tenant, incarnation, fenced),
            _take_ids(db, tenant, incarnation, left, 2, 1),
            _seal(db, parent, end_offset, [left, right], now),
            *(
                {
                    "Put": {
                        "TableName": db.table("catalog"),
                        "Item": new_partition_item(
                            tenant, incarnation, pid, r.start, r.end, (partition_id,), now, w, op
                        ),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
                for pid, r, w in zip((left, right), ranges, workers, strict=True)
            ),
            count_change(db, tenant, active=1, max_partitions=max_partitions),
        ]
        try:
            await _apply(db, "split partition", tenant, topic, incarnation, actions, left, op)
        except TransactionRefused as refused:
            _lease_refused(refused, fenced)
            await _explain(db, tenant, topic, incarnation, [partition_id], refused, max_partitions)
            continue
        return LineageChange(
            sealed=(_sealed(parent, end_offset, [left, right], now),),
            created=tuple(
                _child(tenant, topic, incarnation, pid, r, (partition_id,), now)
                for pid, r in zip((left, right), ranges, strict=True)
            ),
        )
    raise VersionConflictError(f"topic {topic!r} kept changing; split of {partition_id} not made")


async def merge_partitions(
    db: Dynamo,
    tenant: str,
    topic: str,
    partition_ids: Sequence[int],
    *,
    end_offsets: Sequence[int],
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
    fences: Sequence[LeaseFence] | None = None,
) -> LineageChange:
    check_merge_request(partition_ids, end_offsets, fences)
    ends = dict(zip(partition_ids, end_offsets, strict=True))
    fenced = {} if fences is None else dict(zip(partition_ids, fences, strict=True))
    for _ in range(RACE_ATTEMPTS):
        current = await live_topic(db, tenant, topic)
        incarnation = current["incarnation"]
        parents = [await _partition(db, tenant, topic, incarnation, pid) for pid in partition_ids]
        low, high = merge_order(parents)
        for parent in (low, high):
            check_end(parent, ends[parent.partition_id])
        now = clock_ms()
        op = uuid.uuid4().hex
        child = current["next_pid"]
        joined = HashRange(low.hash_range.start, high.hash_range.end)
        lineage = (low.partition_id, high.partition_id)
        worker = None if placement is None else placement[0]
        actions = [
            *_fence_checks(db, tenant, incarnation, fenced),
            _take_ids(db, tenant, incarnation, child, 1, -1),
            _seal(db, low, ends[low.partition_id], [child], now),
            _seal(db, high, ends[high.partition_id], [child], now),
            {
                "Put": {
                    "TableName": db.table("catalog"),
                    "Item": new_partition_item(
                        tenant,
                        incarnation,
                        child,
                        joined.start,
                        joined.end,
                        lineage,
                        now,
                        worker,
                        op,
                    ),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            count_change(db, tenant, active=-1),
        ]
        try:
            await _apply(db, "merge partitions", tenant, topic, incarnation, actions, child, op)
        except TransactionRefused as refused:
            _lease_refused(refused, fenced)
            await _explain(db, tenant, topic, incarnation, list(lineage), refused, None)
            continue
        return LineageChange(
            sealed=tuple(_sealed(p, ends[p.partition_id], [child], now) for p in (low, high)),
            created=(_child(tenant, topic, incarnation, child, joined, lineage, now),),
        )
    raise VersionConflictError(
        f"topic {topic!r} kept changing; merge of {list(partition_ids)} not made"
    )


def _fence_checks(
    db: Dynamo, tenant: str, incarnation: str, fenced: Mapping[int, LeaseFence]
) -> list[dict[str, Any]]:
    """The checks of the parents' leases, by partition id: the first actions (so the
    tenant's counter stays the last, where :func:`_explain` finds it)."""
    return [fence_check(db, tenant, incarnation, pid, fence) for pid, fence in fenced.items()]


def _lease_refused(refused: TransactionRefused, fenced: Mapping[int, LeaseFence]) -> None:
    """Raise :class:`LeaseLostError` if a parent's lease check (the first actions) failed."""
    for index, pid in enumerate(fenced):
        if refused.failed(index):
            raise lease_lost(pid) from None


async def _explain(
    db: Dynamo,
    tenant: str,
    topic: str,
    incarnation: str,
    parents: list[int],
    refused: TransactionRefused,
    max_partitions: int | None,
) -> None:
    """Raise the typed error a cancelled split or merge means, or return to try again
    (only the id counter or a parent's version moved, and the parent is still active)."""
    last = len(refused.reasons) - 1
    if refused.failed(last):
        owner = await db.get("reshape", "catalog", keys.tenant(tenant))
        if owner is None:
            raise no_tenant(tenant)
        check_partition_limit(counts_of(owner), tenant, 1, max_partitions)
    await live_incarnation(db, tenant, topic, incarnation)  # deleted: TopicNotFoundError
    for pid in parents:
        check_active(await _partition(db, tenant, topic, incarnation, pid))


async def advance_start_offset(
    db: Dynamo,
    tenant: str,
    topic: str,
    partition_id: int,
    start_offset: int,
    *,
    incarnation: str | None = None,
    fence: LeaseFence | None = None,
) -> PartitionRecord:
    live = await live_incarnation(db, tenant, topic, incarnation)
    current = await _partition(db, tenant, topic, live, partition_id)
    check_new_start(current, start_offset)
    if start_offset <= current.start_offset:
        return current  # the start only rises: an older report changes nothing
    actions = [
        name_points_at(db, tenant, topic, live),
        {
            "Update": {
                "TableName": db.table("catalog"),
                "Key": keys.partition(tenant, live, partition_id),
                "UpdateExpression": "SET start_offset = :s, version = version + :one",
                "ConditionExpression": "start_offset < :s",
                "ExpressionAttributeValues": values(s=start_offset, one=1),
            }
        },
        *_fence_checks(db, tenant, live, {} if fence is None else {partition_id: fence}),
    ]

    async def landed() -> bool:
        found = await db.get("read back", "catalog", keys.partition(tenant, live, partition_id))
        return found is not None and found["start_offset"] >= start_offset

    try:
        await db.transact("advance start offset", actions, landed=landed)
    except TransactionRefused as refused:
        if refused.failed(2):
            raise lease_lost(partition_id) from None
        if refused.failed(0):
            raise missing(topic) from None
        # Another report moved it as far or further meanwhile.
    return await _partition(db, tenant, topic, live, partition_id)
