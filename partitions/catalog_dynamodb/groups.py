"""Consumer groups of a topic incarnation: generation, metadata and committed offsets.

A group is one item (``G#tenant#inc``, ``group#``: ``generation``, ``metadata`` as JSON
text, ``version``) and one item per committed partition (``group#O``\\ pid:
``next_offset``), all in one item collection, so that one strongly consistent query reads a
group whole. Every write to the group item bumps its version and sets ``write_id``, a fresh
id that tells whether a write whose answer was lost took effect.

Writes that must not reach a deleted incarnation carry :func:`still_live` in the same
transaction, so a group is never written after the topic's deletion forgot its groups.

Where DynamoDB differs from one SQL transaction (both are documented on the functions):

- A commit of more than :data:`COMMIT_CHUNK` partitions is several transactions.
- Deleting a group of more than 99 committed partitions is several transactions.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from uuid import uuid4

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import GroupRecord
from partitions.catalog_dynamodb.client import Dynamo, TransactionRefused, item, values
from partitions.catalog_dynamodb.incarnations import live_incarnation, missing, still_live
from partitions.errors import (
    GroupNotFoundError,
    InvalidOffsetError,
    PartitionNotFoundError,
    StaleGenerationError,
    VersionConflictError,
)

# Offsets a commit writes in one transaction: with the group item's update and the check
# that the incarnation is live, 100 actions, DynamoDB's most.
COMMIT_CHUNK = 98

# How often a write refused by a state that is gone when it is read again (another writer
# changed the group and changed it back) is sent again before it is refused for good.
ROUNDS = 8


def json_text(value: Any) -> str:
    """One document, one text: sorted keys, no spaces (as the SQLite store writes it)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- reading -------------------------------------------------------------------------------


def _offset_pid(sort_key: str, group: str) -> int | None:
    """The partition of an offset item of ``group`` by its sort key; ``None`` for the
    group's own item."""
    rest = sort_key[len(keys.group_prefix(group)) :]
    if not rest:
        return None
    return int(rest[len(keys.OFFSET) :])


def _record(
    tenant: str, topic: str, group: str, items: Sequence[Mapping[str, Any]]
) -> GroupRecord | None:
    """The group from its items; ``None`` without the group item (offsets left behind by
    a deletion interrupted half-way do not make a group)."""
    head: Mapping[str, Any] | None = None
    offsets: dict[int, int] = {}
    for found in items:
        pid = _offset_pid(str(found["sk"]), group)
        if pid is None:
            head = found
        else:
            offsets[pid] = int(found["next_offset"])
    if head is None:
        return None
    return GroupRecord(
        tenant=tenant,
        topic=topic,
        group=group,
        generation=int(head["generation"]),
        metadata=json.loads(str(head["metadata"])),
        offsets=dict(sorted(offsets.items())),
        version=int(head["version"]),
    )


async def _group_items(db: Dynamo, tenant: str, inc: str, group: str) -> list[dict[str, Any]]:
    return await db.query(
        "read group",
        "catalog",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues=values(
            pk=keys.groups_pk(tenant, inc), prefix=keys.group_prefix(group)
        ),
    )


async def _head(db: Dynamo, tenant: str, inc: str, group: str) -> dict[str, Any] | None:
    return await db.get("read group", "catalog", keys.group(tenant, inc, group))


def _not_found(topic: str, group: str) -> GroupNotFoundError:
    return GroupNotFoundError(f"no group {group!r} on topic {topic!r}", group=group)


def _version_conflict(
    group: str, current: int | None, expected: int | None
) -> VersionConflictError:
    return VersionConflictError(
        f"group {group!r} is at version {current}, not {expected}", version=current
    )


async def _read_group(db: Dynamo, tenant: str, inc: str, topic: str, group: str) -> GroupRecord:
    found = _record(tenant, topic, group, await _group_items(db, tenant, inc, group))
    if found is None:
        raise _not_found(topic, group)
    return found


async def get_group(db: Dynamo, tenant: str, topic: str, group: str) -> GroupRecord:
    inc = await live_incarnation(db, tenant, topic)
    return await _read_group(db, tenant, inc, topic, group)


async def list_groups(db: Dynamo, tenant: str, topic: str) -> list[GroupRecord]:
    """The topic's groups by name: one query of the incarnation's group items."""
    inc = await live_incarnation(db, tenant, topic)
    found = await db.query(
        "list groups",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.groups_pk(tenant, inc)),
    )
    by_group: dict[str, list[dict[str, Any]]] = {}
    for one in found:
        name = str(one["sk"]).partition(keys.SEP)[0]
        by_group.setdefault(name, []).append(one)
    groups = (_record(tenant, topic, name, items) for name, items in sorted(by_group.items()))
    return [g for g in groups if g is not None]


# --- writing -------------------------------------------------------------------------------


def _head_written(
    db: Dynamo, tenant: str, inc: str, group: str, write_id: str, offset_pids: Sequence[int] = ()
) -> Callable[[], Awaitable[bool]]:
    """Whether the transaction that wrote ``write_id`` took effect: the group item or one of
    the offset items it wrote still carries the id (it is all or nothing, so one is proof)."""

    async def landed() -> bool:
        head = await _head(db, tenant, inc, group)
        if head is not None and head.get("write_id") == write_id:
            return True
        if not offset_pids:
            return False
        written = await db.batch_get(
            "check commit",
            "catalog",
            [keys.group_offset(tenant, inc, group, pid) for pid in offset_pids],
        )
        return any(one.get("write_id") == write_id for one in written)

    return landed


async def put_group(
    db: Dynamo,
    tenant: str,
    topic: str,
    group: str,
    *,
    generation: int,
    metadata: Mapping[str, Any],
    expected_version: int | None,
) -> GroupRecord:
    """Create (``expected_version=None``: the group must not exist) or replace a group's
    generation and metadata, checked against the version, in one transaction with the
    check that the incarnation is live. Its offsets stay."""
    inc = await live_incarnation(db, tenant, topic)
    condition = "attribute_not_exists(pk)" if expected_version is None else "version = :ev"
    for _ in range(ROUNDS):
        write_id = uuid4().hex
        names = {"gen": generation, "meta": json_text(metadata), "zero": 0, "one": 1}
        if expected_version is not None:
            names["ev"] = expected_version
        update = {
            "Update": {
                "TableName": db.table("catalog"),
                "Key": keys.group(tenant, inc, group),
                "UpdateExpression": "SET generation = :gen, metadata = :meta, "
                "version = if_not_exists(version, :zero) + :one, write_id = :wid",
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values(wid=write_id, **names),
            }
        }
        try:
            await db.transact(
                "put group",
                [update, still_live(db, tenant, inc)],
                landed=_head_written(db, tenant, inc, group, write_id),
            )
        except TransactionRefused as refused:
            if refused.failed(1):
                raise missing(topic) from None
            if not refused.failed(0):
                raise
            head = await _head(db, tenant, inc, group)
            if head is not None and head.get("write_id") == write_id:
                return await _read_group(db, tenant, inc, topic, group)  # landed unseen
            current = None if head is None else int(head["version"])
            if current != expected_version:
                raise _version_conflict(group, current, expected_version) from None
            continue  # changed and changed back since: the condition holds now
        return await _read_group(db, tenant, inc, topic, group)
    raise _version_conflict(group, None, expected_version)


async def _partition_ids(db: Dynamo, tenant: str, inc: str) -> set[int]:
    found = await db.query(
        "read partition ids",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ProjectionExpression="sk",
        ExpressionAttributeValues=values(pk=keys.partitions_pk(tenant, inc)),
    )
    return {int(one["sk"]) for one in found}


def _refusal(
    head: Mapping[str, Any] | None,
    group: str,
    generation: int | None,
    expected_version: int | None,
) -> VersionConflictError | StaleGenerationError | None:
    """What the SQLite store refuses a commit with, given the group item as it is (the
    version is compared first); ``None`` if it would not refuse."""
    if expected_version is not None:
        current = None if head is None else int(head["version"])
        if current != expected_version:
            return _version_conflict(group, current, expected_version)
    if generation is not None:
        current_generation = None if head is None else int(head["generation"])
        if current_generation != generation:
            return StaleGenerationError(
                f"group {group!r} is at generation {current_generation}, not {generation}",
                generation=current_generation,
            )
    return None


async def _commit_chunk(
    db: Dynamo,
    tenant: str,
    inc: str,
    topic: str,
    group: str,
    offsets: Mapping[int, int],
    *,
    generation: int | None,
    expected_version: int | None,
) -> None:
    """One transaction: the group item's update (made if new: generation 0, metadata
    ``{}``, version 1; else version + 1) under the generation and version conditions, the
    incarnation's liveness check, and one put per offset."""
    conditions = []
    if expected_version is not None:
        conditions.append("version = :ev")
    if generation is not None:
        conditions.append("generation = :gen")
    pids = sorted(offsets)
    for _ in range(ROUNDS):
        write_id = uuid4().hex
        names: dict[str, Any] = {"zero": 0, "one": 1, "empty": "{}", "wid": write_id}
        if expected_version is not None:
            names["ev"] = expected_version
        if generation is not None:
            names["gen"] = generation
        update: dict[str, Any] = {
            "TableName": db.table("catalog"),
            "Key": keys.group(tenant, inc, group),
            "UpdateExpression": "SET generation = if_not_exists(generation, :zero), "
            "metadata = if_not_exists(metadata, :empty), "
            "version = if_not_exists(version, :zero) + :one, write_id = :wid",
            "ExpressionAttributeValues": values(**names),
        }
        if conditions:
            update["ConditionExpression"] = " AND ".join(conditions)
        puts = [
            {
                "Put": {
                    "TableName": db.table("catalog"),
                    "Item": keys.group_offset(tenant, inc, group, pid)
                    | item(next_offset=offsets[pid], write_id=write_id),
                }
            }
            for pid in pids
        ]
        try:
            await db.transact(
                "commit offsets",
                [{"Update": update}, still_live(db, tenant, inc), *puts],
                landed=_head_written(db, tenant, inc, group, write_id, pids),
            )
        except TransactionRefused as refused:
            if refused.failed(1):
                raise missing(topic) from None
            if not refused.failed(0):
                raise
            head = await _head(db, tenant, inc, group)
            if head is not None and head.get("write_id") == write_id:
                return  # sent again after it landed unseen
            refusal = _refusal(head, group, generation, expected_version)
            if refusal is not None:
                raise refusal from None
            continue  # changed and changed back since: the conditions hold now
        return
    head = await _head(db, tenant, inc, group)
    raise _refusal(head, group, generation, expected_version) or _version_conflict(
        group, None if head is None else int(head["version"]), expected_version
    )


async def commit_offsets(
    db: Dynamo,
    tenant: str,
    topic: str,
    group: str,
    offsets: Mapping[int, int],
    *,
    generation: int | None = None,
    expected_version: int | None = None,
) -> GroupRecord:
    """Store next-to-read offsets, creating the group if it is new; answers the group as
    read right after.

    A negative offset (:class:`InvalidOffsetError`) or a partition the incarnation never
    had (:class:`PartitionNotFoundError`) is refused before anything is sent. The rest is
    one transaction when it fits: the group item's update, which bumps its version and
    refuses a commit from another generation (:class:`StaleGenerationError`) or, with
    ``expected_version``, one racing another write (:class:`VersionConflictError`); the
    check that the incarnation is live; one put per offset.

    A commit of more than :data:`COMMIT_CHUNK` partitions cannot be one transaction: it is
    sent in chunks by partition id, each its own transaction, each bumping the version.

    - ``generation`` fences every chunk: a rebalance between two chunks refuses the rest
      with :class:`StaleGenerationError`, and the chunks before it stay committed (offsets
      committed while their generation was current).
    - ``expected_version`` is compared by the first chunk only. A
      :class:`VersionConflictError` therefore always means that nothing was committed;
      once the first chunk is in, the commit goes on to its end, and a write made between
      its chunks is not detected by it (its version is expected + the chunks before).

    The group answered is read after the last transaction: a deletion of the group in
    between makes it :class:`GroupNotFoundError` though the offsets were committed.
    """
    for pid, offset in offsets.items():
        if offset < 0:
            raise InvalidOffsetError(
                f"a committed offset cannot be negative: {offset} for partition {pid}"
            )
    inc = await live_incarnation(db, tenant, topic)
    known = await _partition_ids(db, tenant, inc)
    for pid in offsets:
        if pid not in known:
            raise PartitionNotFoundError(
                f"topic {topic!r} has no partition {pid}", topic=topic, partition=pid
            )
    pids = sorted(offsets)
    chunks = [pids[i : i + COMMIT_CHUNK] for i in range(0, len(pids), COMMIT_CHUNK)] or [[]]
    for number, chunk in enumerate(chunks):
        await _commit_chunk(
            db,
            tenant,
            inc,
            topic,
            group,
            {pid: offsets[pid] for pid in chunk},
            generation=generation,
            expected_version=expected_version if number == 0 else None,
        )
    return await _read_group(db, tenant, inc, topic, group)


# --- deleting ------------------------------------------------------------------------------

# Deletes in one transaction: DynamoDB's most.
DELETE_CHUNK = 100


async def delete_group(
    db: Dynamo,
    tenant: str,
    topic: str,
    group: str,
    *,
    expected_version: int | None = None,
) -> None:
    """Remove the group and its offsets: :class:`GroupNotFoundError` if it does not exist;
    with ``expected_version``, :class:`VersionConflictError` unless it is at that version.

    A group of up to 99 committed partitions goes in one transaction, conditioned on the
    group item being as read (its ``write_id``), so an offset committed after the read is
    never left behind: if one was, the group is read again and the deletion done again.

    More offsets than that take several transactions of up to 100 deletes: the offsets
    first, and the group item last together with the last of them (conditioned as above),
    so offsets never outlive their group item. The first transaction checks
    ``expected_version`` (a conflict then means nothing was deleted); once it is in, the
    deletion goes on to its end. Meanwhile readers see the group with fewer offsets.
    """
    inc = await live_incarnation(db, tenant, topic)
    catalog = db.table("catalog")
    compare = expected_version
    started = False  # whether a transaction of this deletion took effect
    for _ in range(ROUNDS):
        found = await _group_items(db, tenant, inc, group)
        head = next((one for one in found if _offset_pid(str(one["sk"]), group) is None), None)
        offset_keys = [
            keys.key(str(one["pk"]), str(one["sk"]))
            for one in found
            if _offset_pid(str(one["sk"]), group) is not None
        ]
        if head is None:
            if not started:
                raise _not_found(topic, group)
            # Another deletion finished this one: drop what it may have left.
            await db.delete_all("delete group", "catalog", offset_keys)
            return
        if compare is not None and int(head["version"]) != compare:
            raise _version_conflict(group, int(head["version"]), compare)
        try:
            while len(offset_keys) >= DELETE_CHUNK:
                actions: list[dict[str, Any]] = []
                if compare is not None:
                    actions.append(
                        {
                            "ConditionCheck": {
                                "TableName": catalog,
                                "Key": keys.group(tenant, inc, group),
                                "ConditionExpression": "version = :ev",
                                "ExpressionAttributeValues": values(ev=compare),
                            }
                        }
                    )
                batch = offset_keys[: DELETE_CHUNK - len(actions)]
                actions.extend({"Delete": {"TableName": catalog, "Key": k}} for k in batch)
                await db.transact("delete group", actions, landed=_all_gone(db, batch))
                offset_keys = offset_keys[len(batch) :]
                started, compare = True, None
            condition = "version = :v"
            names: dict[str, Any] = {"v": int(head["version"])}
            if head.get("write_id") is not None:
                condition += " AND write_id = :wid"
                names["wid"] = head["write_id"]
            last = [
                {
                    "Delete": {
                        "TableName": catalog,
                        "Key": keys.group(tenant, inc, group),
                        "ConditionExpression": condition,
                        "ExpressionAttributeValues": values(**names),
                    }
                },
                *({"Delete": {"TableName": catalog, "Key": k}} for k in offset_keys),
            ]
            await db.transact(
                "delete group", last, landed=_all_gone(db, [keys.group(tenant, inc, group)])
            )
        except TransactionRefused:
            continue  # the group changed since it was read: read it again
        return
    head = await _head(db, tenant, inc, group)
    raise _version_conflict(group, None if head is None else int(head["version"]), compare)


def _all_gone(db: Dynamo, deleted: Sequence[Mapping[str, Any]]) -> Callable[[], Awaitable[bool]]:
    """Whether deletions took effect: none of the items is there any more."""

    async def landed() -> bool:
        return not await db.batch_get("check deletion", "catalog", deleted)

    return landed


async def forget_groups(db: Dynamo, tenant: str, inc: str) -> None:
    """Delete every group of an incarnation, offsets and all (its topic or tenant is being
    deleted). Safe to repeat."""
    found = await db.query(
        "forget groups",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ProjectionExpression="pk, sk",
        ExpressionAttributeValues=values(pk=keys.groups_pk(tenant, inc)),
    )
    await db.delete_all(
        "forget groups", "catalog", [keys.key(str(one["pk"]), str(one["sk"])) for one in found]
    )
