"""Topics: each name's incarnations, their config, deletion and, once the data is gone,
purge; and the deletion of a whole tenant.

Creating a topic is one transaction: the tenant's counters (with the limits as conditions),
the name item (``attribute_not_exists``: names are unique), the incarnation and its
partition 0. Deleting one is another: the incarnation marked deleted (and listed in the
index of deleted incarnations) at the version read, the name item removed, the counters
lowered by what the incarnation held. Its groups and idempotency answers go right after;
they are unreachable already, since every write to them checks that the incarnation lives.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import HASH_SPACE_END, WHOLE_SPACE, PartitionRecord, TopicRecord
from partitions.catalog_dynamodb import answers, groups, segments
from partitions.catalog_dynamodb.client import (
    ConditionFailed,
    Dynamo,
    TransactionRefused,
    item,
    values,
)
from partitions.catalog_dynamodb.incarnations import live_topic, missing
from partitions.catalog_dynamodb.records import json_text, partition_record, topic_record
from partitions.catalog_dynamodb.tenants import count_change, counts_of, no_tenant
from partitions.catalog_rules import check_partition_limit, check_topic_limit
from partitions.errors import TopicExistsError, TopicNotFoundError, VersionConflictError

# How often an operation that lost a race it can redo (a split meanwhile moved the
# incarnation's version) reads again and retries before it gives up.
RACE_ATTEMPTS = 20


def new_partition_item(
    tenant: str,
    incarnation: str,
    pid: int,
    start: int,
    end: int,
    parents: Sequence[int],
    now: int,
    worker: int | None,
    op: str,
) -> dict[str, Any]:
    return {
        **keys.partition(tenant, incarnation, pid),
        **item(
            pid=pid,
            hash_start=start,
            hash_end=end,
            state="active",
            parents=list(parents),
            children=[],
            start_offset=0,
            created_ms=now,
            version=1,
            worker=worker,
            op=op,
        ),
    }


async def create_topic(
    db: Dynamo,
    tenant: str,
    name: str,
    config: Mapping[str, Any],
    *,
    max_topics: int | None,
    max_partitions: int | None,
    placement: Sequence[int] | None,
    clock_ms: Callable[[], int],
) -> tuple[TopicRecord, PartitionRecord]:
    incarnation = str(uuid.uuid4())
    now = clock_ms()
    worker = None if placement is None else placement[0]
    topic_fields = {
        "name": name,
        "incarnation": incarnation,
        "config": json_text(config),
        "created_ms": now,
        "version": 1,
        "next_pid": 1,
        "n_active": 1,
    }
    actions = [
        count_change(
            db, tenant, topics=1, active=1, max_topics=max_topics, max_partitions=max_partitions
        ),
        {
            "Put": {
                "TableName": db.table("catalog"),
                "Item": {**keys.topic_name(tenant, name), **item(incarnation=incarnation)},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        {
            "Put": {
                "TableName": db.table("catalog"),
                "Item": {**keys.incarnation(tenant, incarnation), **item(**topic_fields)},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        {
            "Put": {
                "TableName": db.table("catalog"),
                "Item": new_partition_item(
                    tenant, incarnation, 0, 0, HASH_SPACE_END, (), now, worker, incarnation
                ),
            }
        },
    ]

    async def landed() -> bool:
        found = await db.get("read back", "catalog", keys.incarnation(tenant, incarnation))
        return found is not None

    try:
        await db.transact("create topic", actions, landed=landed)
    except TransactionRefused as refused:
        owner = await db.get("create topic", "catalog", keys.tenant(tenant))
        if owner is None:
            raise no_tenant(tenant) from None
        if refused.failed(1):
            existing = await db.get("create topic", "catalog", keys.topic_name(tenant, name))
            raise TopicExistsError(
                f"topic {name!r} exists",
                topic=name,
                incarnation=None if existing is None else existing["incarnation"],
            ) from None
        counts = counts_of(owner)
        check_topic_limit(counts, tenant, max_topics)
        check_partition_limit(counts, tenant, 1, max_partitions)
        raise  # not a refusal any check explains: a bug, not a user's error
    partition = partition_record(
        tenant,
        name,
        incarnation,
        {
            "pid": 0,
            "hash_start": WHOLE_SPACE.start,
            "hash_end": WHOLE_SPACE.end,
            "state": "active",
            "parents": [],
            "children": [],
            "start_offset": 0,
            "created_ms": now,
            "version": 1,
        },
    )
    return topic_record(tenant, topic_fields), partition


async def get_topic(db: Dynamo, tenant: str, name: str) -> TopicRecord:
    return topic_record(tenant, await live_topic(db, tenant, name))


async def list_topics(
    db: Dynamo, tenant: str, *, after: str | None = None, limit: int = 100
) -> list[TopicRecord]:
    # Names sort after "NAME#" and before "NAME$"; the one named ``after`` is skipped.
    low = f"NAME{keys.SEP}{after or ''}"
    names = await db.query(
        "list topics",
        "catalog",
        limit=limit + 1,
        KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
        ExpressionAttributeValues=values(pk=keys.tenant_pk(tenant), low=low, high="NAME$"),
    )
    names = [n for n in names if after is None or n["sk"] != low][:limit]
    found = await db.batch_get(
        "list topics",
        "catalog",
        [keys.incarnation(tenant, n["incarnation"]) for n in names],
    )
    live = [f for f in found if f.get("deleted_ms") is None]
    return sorted((topic_record(tenant, f) for f in live), key=lambda t: t.name)


async def update_topic_config(
    db: Dynamo, tenant: str, name: str, config: Mapping[str, Any], *, expected_version: int
) -> TopicRecord:
    current = await live_topic(db, tenant, name)
    incarnation = current["incarnation"]
    if current["version"] != expected_version:
        raise _topic_version(name, current["version"], expected_version)
    op = uuid.uuid4().hex

    async def landed() -> bool:
        found = await db.get("read back", "catalog", keys.incarnation(tenant, incarnation))
        return found is not None and found.get("op") == op

    try:
        await db.write(
            "update topic",
            "update_item",
            landed=landed,
            TableName=db.table("catalog"),
            Key=keys.incarnation(tenant, incarnation),
            UpdateExpression="SET config = :c, version = version + :one, op = :op",
            ConditionExpression="version = :v AND attribute_not_exists(deleted_ms)",
            ExpressionAttributeValues=values(c=json_text(config), one=1, op=op, v=expected_version),
        )
    except ConditionFailed:
        now = await live_topic(db, tenant, name)  # gone: TopicNotFoundError
        raise _topic_version(name, now["version"], expected_version) from None
    return topic_record(
        tenant, {**current, "config": json_text(config), "version": expected_version + 1}
    )


def _topic_version(name: str, version: int, expected: int) -> VersionConflictError:
    return VersionConflictError(
        f"topic {name!r} is at version {version}, not {expected}", version=version
    )


async def delete_topic(
    db: Dynamo, tenant: str, name: str, *, clock_ms: Callable[[], int]
) -> TopicRecord:
    for _ in range(RACE_ATTEMPTS):
        current = await live_topic(db, tenant, name)
        try:
            record = await _mark_deleted(db, tenant, current, clock_ms(), count=True)
        except VersionConflictError:
            continue  # a split or merge meanwhile: read the counts again
        await _forget_live_state(db, tenant, record.incarnation)
        return record
    raise VersionConflictError(f"topic {name!r} kept changing while it was being deleted")


async def _mark_deleted(
    db: Dynamo, tenant: str, current: dict[str, Any], now: int, *, count: bool
) -> TopicRecord:
    """Mark the incarnation ``current`` deleted at the version read and remove its name,
    lowering the tenant's counters by what it held (``count``)."""
    incarnation, name = current["incarnation"], current["name"]
    op = uuid.uuid4().hex
    actions: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": db.table("catalog"),
                "Key": keys.incarnation(tenant, incarnation),
                "UpdateExpression": (
                    "SET deleted_ms = :now, version = version + :one, op = :op, "
                    "gsi1pk = :deleted, gsi1sk = :order"
                ),
                # The active count read is what the tenant's counter loses: a split or
                # merge meanwhile makes this fail, and the deletion reads again.
                "ConditionExpression": (
                    "version = :v AND n_active = :n AND attribute_not_exists(deleted_ms)"
                ),
                "ExpressionAttributeValues": values(
                    n=current["n_active"],
                    now=now,
                    one=1,
                    op=op,
                    deleted=keys.DELETED,
                    order=f"{keys.pad(now)}{keys.SEP}{tenant}{keys.SEP}{incarnation}",
                    v=current["version"],
                ),
            }
        },
        {
            "Delete": {
                "TableName": db.table("catalog"),
                "Key": keys.topic_name(tenant, name),
                "ConditionExpression": "incarnation = :inc",
                "ExpressionAttributeValues": values(inc=incarnation),
            }
        },
    ]
    if count:
        actions.append(count_change(db, tenant, topics=-1, active=-current["n_active"]))

    async def landed() -> bool:
        found = await db.get("read back", "catalog", keys.incarnation(tenant, incarnation))
        return found is not None and found.get("op") == op

    try:
        await db.transact("delete topic", actions, landed=landed)
    except TransactionRefused as refused:
        if refused.failed(1):
            raise missing(name) from None
        if refused.failed(0):
            raise VersionConflictError(f"topic {name!r} changed meanwhile") from None
        raise no_tenant(tenant) from None
    return topic_record(tenant, {**current, "deleted_ms": now, "version": current["version"] + 1})


async def _forget_live_state(db: Dynamo, tenant: str, incarnation: str) -> None:
    """What a deleted incarnation's consumers and producers left: its groups and answers
    (its partitions and segments stay until :func:`purge_topic`)."""
    await groups.forget_groups(db, tenant, incarnation)
    await answers.forget_answers(db, tenant, incarnation)


async def list_deleted_topics(db: Dynamo) -> list[TopicRecord]:
    listed = await db.query(
        "list deleted topics",
        "catalog",
        index="gsi1",
        KeyConditionExpression="gsi1pk = :deleted",
        ExpressionAttributeValues=values(deleted=keys.DELETED),
    )
    # The index is eventually consistent: what it lists is read again, and a purged one
    # (gone) or one not yet shown is as the items say.
    found = await db.batch_get(
        "list deleted topics",
        "catalog",
        [{"pk": {"S": f["pk"]}, "sk": {"S": f["sk"]}} for f in listed],
    )
    records = [
        topic_record(f["pk"].removeprefix(f"T{keys.SEP}"), f)
        for f in found
        if f.get("deleted_ms") is not None
    ]
    return sorted(records, key=lambda t: (t.deleted_ms or 0, t.tenant, t.incarnation))


async def purge_topic(db: Dynamo, tenant: str, incarnation: str) -> None:
    found = await db.get("purge topic", "catalog", keys.incarnation(tenant, incarnation))
    if found is None:
        raise TopicNotFoundError(f"no topic incarnation {incarnation}")
    if found.get("deleted_ms") is None:
        raise TopicExistsError(
            f"incarnation {incarnation} is live; delete the topic first",
            incarnation=incarnation,
        )
    parts = await db.query(
        "purge topic",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.partitions_pk(tenant, incarnation)),
        ProjectionExpression="pk, sk",
    )
    await db.delete_all(
        "purge topic", "catalog", [{"pk": {"S": p["pk"]}, "sk": {"S": p["sk"]}} for p in parts]
    )
    await segments.forget_segments(db, tenant, incarnation)
    await _forget_live_state(db, tenant, incarnation)  # again: a deletion cut short
    # Last, so that a purge cut short is found again and finished.
    await db.delete_all("purge topic", "catalog", [keys.incarnation(tenant, incarnation)])


# --- a whole tenant ----------------------------------------------------------------------------


async def delete_tenant(db: Dynamo, name: str, *, clock_ms: Callable[[], int]) -> list[TopicRecord]:
    """Its keys first (so that nothing authenticates as it meanwhile), then its live topics
    marked deleted, their groups and answers, and the tenant item last: a deletion cut
    short is finished by deleting again."""
    owner = await db.get("delete tenant", "catalog", keys.tenant(name))
    if owner is None:
        raise no_tenant(name)
    mine = await db.query(
        "delete tenant",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.tenant_pk(name)),
    )
    sides = [m for m in mine if m["sk"].startswith("KEYID#")]
    await db.delete_all(
        "delete tenant",
        "catalog",
        [keys.api_key(s["key_hash"]) for s in sides]
        + [keys.tenant_key(name, s["key_id"]) for s in sides],
    )
    now = clock_ms()
    marked = []
    for pointer in (m for m in mine if m["sk"].startswith("NAME#")):
        for _ in range(RACE_ATTEMPTS):
            current = await db.get(
                "delete tenant", "catalog", keys.incarnation(name, pointer["incarnation"])
            )
            if current is None or current.get("deleted_ms") is not None:
                break
            try:
                marked.append(await _mark_deleted(db, name, current, now, count=False))
            except TopicNotFoundError:
                break  # deleted meanwhile
            except VersionConflictError:
                continue  # reshaped meanwhile: read it again
            break
    for inc in (m for m in mine if m["sk"].startswith("INC#")):
        await _forget_live_state(db, name, inc["incarnation"])
    for record in marked:
        await _forget_live_state(db, name, record.incarnation)
    await db.write(
        "delete tenant",
        "delete_item",
        landed=None,  # deleting twice is deleting
        TableName=db.table("catalog"),
        Key=keys.tenant(name),
    )
    return sorted(marked, key=lambda t: t.name)
