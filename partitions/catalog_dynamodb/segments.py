"""Remote segments: the tiered copies of sealed segments, in KIP-405's states.

One item per segment (``S#tenant#inc#pid``, base offset), in its partition's item
collection, so a partition's segments are one query in base-offset order. An item is added
as copy-started before the upload, moves to copy-finished after it, to delete-started before
the objects are deleted, and is removed only from delete-started. Every change is
conditioned on the state it expects to leave, so a change made from a stale read is refused.
A change given the writer's :class:`~partitions.catalog.LeaseFence` is one transaction with
the check of the partition's lease (:func:`.leases.fence_check`), so a stale owner's change
is refused as :class:`~partitions.errors.LeaseLostError` and changes nothing.

While copy-started or delete-started, an item is also in the sparse index ``gsi1``
(``gsi1pk`` = ``SEG#``\\ state, ``gsi1sk`` = tenant, incarnation, partition, base): the
lists tiered storage walks at start and when cleaning up. Copy-finished items, nearly all of
them, stay out of it, so the index holds only the segments in flight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import uuid4

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import LeaseFence, RemoteSegmentRecord, RemoteSegmentState
from partitions.catalog_dynamodb.client import (
    ConditionFailed,
    Dynamo,
    TransactionRefused,
    item,
    plain,
    values,
)
from partitions.catalog_dynamodb.incarnations import still_live
from partitions.catalog_dynamodb.leases import fence_check, lease_lost
from partitions.errors import (
    InvalidOffsetError,
    RemoteSegmentExistsError,
    RemoteSegmentNotFoundError,
    RemoteSegmentStateError,
    TopicNotFoundError,
)

# The states whose segments are listed by the index.
INDEXED = frozenset({RemoteSegmentState.COPY_STARTED, RemoteSegmentState.DELETE_STARTED})

# ``state`` is one of DynamoDB's reserved words: expressions name it through this.
STATE = {"#state": "state"}


def _record(found: Mapping[str, Any]) -> RemoteSegmentRecord:
    return RemoteSegmentRecord(
        tenant=str(found["tenant"]),
        incarnation=str(found["incarnation"]),
        partition_id=int(found["pid"]),
        base_offset=int(found["base_offset"]),
        last_offset=int(found["last_offset"]),
        size_bytes=int(found["size_bytes"]),
        first_timestamp_ms=int(found["first_timestamp_ms"]),
        max_timestamp_ms=int(found["max_timestamp_ms"]),
        object_key=str(found["object_key"]),
        state=RemoteSegmentState(found["state"]),
        version=int(found["version"]),
        epoch=int(found.get("epoch", 0)),  # items written before epochs have none
    )


def _order(record: RemoteSegmentRecord) -> tuple[str, str, int, int]:
    return (record.tenant, record.incarnation, record.partition_id, record.base_offset)


def _not_found(pid: int, base: int) -> RemoteSegmentNotFoundError:
    return RemoteSegmentNotFoundError(
        f"no remote segment {base} of partition {pid}", partition=pid, base_offset=base
    )


async def _read(
    db: Dynamo, tenant: str, inc: str, pid: int, base: int
) -> RemoteSegmentRecord | None:
    found = await db.get("read remote segment", "catalog", keys.segment(tenant, inc, pid, base))
    return None if found is None else _record(found)


def _written(db: Dynamo, key: Mapping[str, Any], write_id: str) -> Callable[[], Awaitable[bool]]:
    async def landed() -> bool:
        found = await db.get("check remote segment", "catalog", key)
        return found is not None and found.get("write_id") == write_id

    return landed


def _gone(db: Dynamo, key: Mapping[str, Any]) -> Callable[[], Awaitable[bool]]:
    async def landed() -> bool:
        return await db.get("check remote segment", "catalog", key) is None

    return landed


async def _fenced(
    db: Dynamo,
    what: str,
    record: tuple[str, str, int],
    fence: LeaseFence,
    action: dict[str, Any],
    landed: Callable[[], Awaitable[bool]],
) -> None:
    """``action`` (a transaction's ``Update`` or ``Delete``) in one transaction with the
    check of ``fence`` on the partition ``record`` (tenant, incarnation, partition id):
    a failed check raises :class:`LeaseLostError`, a failed ``action``
    :class:`ConditionFailed`, as the same write unfenced would."""
    tenant, incarnation, partition_id = record
    try:
        await db.transact(
            what, [fence_check(db, tenant, incarnation, partition_id, fence), action], landed=landed
        )
    except TransactionRefused as refused:
        if refused.failed(0):
            raise lease_lost(partition_id) from None
        if refused.failed(1):
            raise ConditionFailed(what) from None
        raise


async def add_remote_segment(
    db: Dynamo, record: RemoteSegmentRecord, *, fence: LeaseFence | None = None
) -> RemoteSegmentRecord:
    """Record a segment whose copy is starting (its state must be copy-started), in one
    transaction with the check that its incarnation is live: a copy racing the topic's
    deletion cannot leave an item behind the purge (and, with ``fence``, the check of the
    writer's lease)."""
    if record.state is not RemoteSegmentState.COPY_STARTED:
        raise RemoteSegmentStateError("a remote segment starts as copy-started")
    if record.last_offset < record.base_offset:
        raise InvalidOffsetError("a remote segment's last offset is below its base")
    stored = dataclasses.replace(record, version=1)
    key = keys.segment(record.tenant, record.incarnation, record.partition_id, record.base_offset)
    write_id = uuid4().hex
    put = {
        "Put": {
            "TableName": db.table("catalog"),
            "Item": key
            | item(
                tenant=stored.tenant,
                incarnation=stored.incarnation,
                pid=stored.partition_id,
                base_offset=stored.base_offset,
                last_offset=stored.last_offset,
                size_bytes=stored.size_bytes,
                first_timestamp_ms=stored.first_timestamp_ms,
                max_timestamp_ms=stored.max_timestamp_ms,
                object_key=stored.object_key,
                state=stored.state.value,
                version=stored.version,
                epoch=stored.epoch,
                write_id=write_id,
                gsi1pk=keys.segment_state_pk(stored.state.value),
                gsi1sk=keys.segment_order(*_order(stored)),
            ),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }
    actions = [still_live(db, record.tenant, record.incarnation), put]
    if fence is not None:
        actions.append(
            fence_check(db, record.tenant, record.incarnation, record.partition_id, fence)
        )
    try:
        await db.transact("add remote segment", actions, landed=_written(db, key, write_id))
    except TransactionRefused as refused:
        if refused.failed(2):  # first: a stale owner learns nothing else
            raise lease_lost(record.partition_id) from None
        if refused.failed(0):
            raise TopicNotFoundError(
                f"no live topic incarnation {record.incarnation}",
                incarnation=record.incarnation,
            ) from None
        if not refused.failed(1):
            raise
        if await _written(db, key, write_id)():
            return stored  # sent again after it landed unseen
        raise RemoteSegmentExistsError(
            f"remote segment {record.base_offset} of partition {record.partition_id} "
            "is already recorded",
            base_offset=record.base_offset,
        ) from None
    return stored


def _state_error(
    current: RemoteSegmentRecord, expected: RemoteSegmentState
) -> RemoteSegmentStateError:
    return RemoteSegmentStateError(
        f"remote segment {current.base_offset} is {current.state.value}, not {expected.value}",
        state=current.state.value,
    )


async def set_remote_segment_state(
    db: Dynamo,
    tenant: str,
    incarnation: str,
    partition_id: int,
    base_offset: int,
    *,
    from_state: RemoteSegmentState,
    to_state: RemoteSegmentState,
    fence: LeaseFence | None = None,
) -> RemoteSegmentRecord:
    """Move a segment from ``from_state`` to ``to_state`` (one conditional update, or a
    transaction of it and the check of ``fence``), in or out of the index as ``to_state``
    says."""
    key = keys.segment(tenant, incarnation, partition_id, base_offset)
    write_id = uuid4().hex
    names: dict[str, Any] = {"from": from_state.value, "to": to_state.value, "one": 1}
    expression = "SET #state = :to, version = version + :one, write_id = :wid"
    if to_state in INDEXED:
        expression += ", gsi1pk = :gpk, gsi1sk = :gsk"
        names["gpk"] = keys.segment_state_pk(to_state.value)
        names["gsk"] = keys.segment_order(tenant, incarnation, partition_id, base_offset)
    else:
        expression += " REMOVE gsi1pk, gsi1sk"
    update = {
        "TableName": db.table("catalog"),
        "Key": key,
        "UpdateExpression": expression,
        "ConditionExpression": "attribute_exists(pk) AND #state = :from",
        "ExpressionAttributeNames": STATE,
        "ExpressionAttributeValues": values(wid=write_id, **names),
    }
    what, landed = "set remote segment state", _written(db, key, write_id)
    try:
        if fence is None:
            answer = await db.write(
                what, "update_item", landed=landed, ReturnValues="ALL_NEW", **update
            )
        else:
            where = (tenant, incarnation, partition_id)
            await _fenced(db, what, where, fence, {"Update": update}, landed)
            answer = {}  # a transaction answers no item: read it below
    except ConditionFailed:
        found = await db.get("read remote segment", "catalog", key)
        if found is None:
            raise _not_found(partition_id, base_offset) from None
        if found.get("write_id") == write_id:
            return _record(found)  # sent again after it landed unseen
        raise _state_error(_record(found), from_state) from None
    if "Attributes" in answer:
        return _record(plain(answer["Attributes"]))
    # Fenced, or the answer was lost and the write found to have landed: read what it wrote.
    written = await _read(db, tenant, incarnation, partition_id, base_offset)
    if written is None:
        raise _not_found(partition_id, base_offset)
    return written


async def list_remote_segments(
    db: Dynamo, tenant: str, incarnation: str, partition_id: int
) -> list[RemoteSegmentRecord]:
    """A partition's segments by base offset: one query of its item collection."""
    found = await db.query(
        "list remote segments",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.segments_pk(tenant, incarnation, partition_id)),
    )
    return [_record(one) for one in found]


async def remove_remote_segment(
    db: Dynamo,
    tenant: str,
    incarnation: str,
    partition_id: int,
    base_offset: int,
    *,
    fence: LeaseFence | None = None,
) -> None:
    """Forget a segment whose objects are deleted; it must be delete-started."""
    key = keys.segment(tenant, incarnation, partition_id, base_offset)
    delete = {
        "TableName": db.table("catalog"),
        "Key": key,
        "ConditionExpression": "attribute_exists(pk) AND #state = :deleting",
        "ExpressionAttributeNames": STATE,
        "ExpressionAttributeValues": values(deleting=RemoteSegmentState.DELETE_STARTED.value),
    }
    what = "remove remote segment"
    try:
        if fence is None:
            await db.write(what, "delete_item", landed=_gone(db, key), **delete)
        else:
            where = (tenant, incarnation, partition_id)
            await _fenced(db, what, where, fence, {"Delete": delete}, _gone(db, key))
    except ConditionFailed:
        current = await _read(db, tenant, incarnation, partition_id, base_offset)
        if current is None:
            raise _not_found(partition_id, base_offset) from None
        raise RemoteSegmentStateError(
            f"remote segment {base_offset} is {current.state.value}; only a "
            "delete-started segment can be forgotten",
            state=current.state.value,
        ) from None


async def list_remote_segments_in_state(
    db: Dynamo,
    state: RemoteSegmentState,
    *,
    after: tuple[str, str, int, int] | None = None,
    limit: int = 1000,
) -> list[RemoteSegmentRecord]:
    """One page of the segments in ``state`` across every tenant, topic and partition,
    ordered by (tenant, incarnation, partition id, base offset), after ``after``.

    Copy-started and delete-started ones are a query of the index, which is eventually
    consistent: a segment that just entered the state may be missing from a page, and one
    that just left it may still be listed there. So each listed item is read again
    (strongly consistent) and kept only if it is still in ``state``: what a page answers is
    true when it is read, though it may miss the newest.

    Copy-finished ones are not in the index (they are nearly all segments): they are found
    by a Scan of the catalog table with a filter, sorted here, and cut to the page. Each
    page reads the whole table; nothing in the event bus lists them (tiered storage's
    cleanup walks the other two states), so this serves the Protocol, not a hot path.
    """
    if limit <= 0:
        return []
    if state not in INDEXED:
        return await _scan_state(db, state, after, limit)
    out: list[RemoteSegmentRecord] = []
    bound = None if after is None else keys.segment_order_after(*after)
    while len(out) < limit:
        want = limit - len(out)
        condition = "gsi1pk = :pk"
        names: dict[str, Any] = {"pk": keys.segment_state_pk(state.value)}
        if bound is not None:
            condition += " AND gsi1sk > :after"
            names["after"] = bound
        listed = await db.query(
            "list remote segments by state",
            "catalog",
            index="gsi1",
            limit=want,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values(**names),
        )
        if not listed:
            break
        current = await db.batch_get(
            "read remote segments by state",
            "catalog",
            [keys.key(str(one["pk"]), str(one["sk"])) for one in listed],
        )
        still = {
            (str(one["pk"]), str(one["sk"])): one
            for one in current
            if one.get("state") == state.value
        }
        for one in listed:
            now = still.get((str(one["pk"]), str(one["sk"])))
            if now is not None:
                out.append(_record(now))
        if len(listed) < want:
            break
        bound = str(listed[-1]["gsi1sk"])
    return out


async def _scan_state(
    db: Dynamo,
    state: RemoteSegmentState,
    after: tuple[str, str, int, int] | None,
    limit: int,
) -> list[RemoteSegmentRecord]:
    found = await db.scan(
        "scan remote segments by state",
        "catalog",
        FilterExpression="begins_with(pk, :segments) AND #state = :state",
        ExpressionAttributeNames=STATE,
        ExpressionAttributeValues=values(segments=f"S{keys.SEP}", state=state.value),
    )
    records = sorted((_record(one) for one in found), key=_order)
    if after is not None:
        records = [r for r in records if _order(r) > after]
    return records[:limit]


async def forget_segments(db: Dynamo, tenant: str, inc: str) -> None:
    """Delete every remote segment item of an incarnation, whatever its state (the
    incarnation is being purged, its objects gone). Safe to repeat.

    Segments live in one item collection per partition: the partitions to empty are those
    whose items exist and those below the incarnation's ``next_pid``, so call this before
    both the partition items and the incarnation item are deleted.
    """
    pids = {
        int(one["sk"])
        for one in await db.query(
            "read partition ids",
            "catalog",
            KeyConditionExpression="pk = :pk",
            ProjectionExpression="sk",
            ExpressionAttributeValues=values(pk=keys.partitions_pk(tenant, inc)),
        )
    }
    incarnation = await db.get("read incarnation", "catalog", keys.incarnation(tenant, inc))
    if incarnation is not None and incarnation.get("next_pid") is not None:
        pids.update(range(int(incarnation["next_pid"])))
    for pid in sorted(pids):
        found = await db.query(
            "forget remote segments",
            "catalog",
            KeyConditionExpression="pk = :pk",
            ProjectionExpression="pk, sk",
            ExpressionAttributeValues=values(pk=keys.segments_pk(tenant, inc, pid)),
        )
        await db.delete_all(
            "forget remote segments",
            "catalog",
            [keys.key(str(s["pk"]), str(s["sk"])) for s in found],
        )
