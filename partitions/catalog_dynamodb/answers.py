"""Idempotency records in the ``answers`` table: the answer given to a keyed request, kept
until it expires.

An item per key (pk tenant#incarnation, sk the idempotency key) with ``request_hash``,
``answer``, ``expires_ms``, and ``expires_at``: the same moment in whole seconds, rounded up,
by which DynamoDB's TTL deletes it (lazily, within days; the TTL runs on DynamoDB's clock, so
``expires_ms`` must be on the wall clock). Until then every read compares ``expires_ms``
itself, so an answer past its expiry is never returned however late it is deleted.

Answers are kept per incarnation: a topic deleted and created again starts with none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import uuid4

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import IdempotencyRecord
from partitions.catalog_dynamodb.client import ConditionFailed, Dynamo, item, values
from partitions.catalog_dynamodb.incarnations import live_incarnation
from partitions.catalog_dynamodb.tables import TTL_ATTRIBUTE
from partitions.errors import CatalogUnavailableError

# How often a remembered answer that vanished between a refused put and the read after it
# (deleted as it expired) is tried again.
ROUNDS = 8


def _ttl_seconds(expires_ms: int) -> int:
    return -(-expires_ms // 1000)


def _record(tenant: str, topic: str, key: str, found: Mapping[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant=tenant,
        topic=topic,
        key=key,
        request_hash=str(found["request_hash"]),
        answer=str(found["answer"]),
        expires_ms=int(found["expires_ms"]),
    )


async def remember_answer(
    db: Dynamo, record: IdempotencyRecord, *, now_ms: int
) -> IdempotencyRecord:
    """Keep ``record`` unless a live answer for its key exists; answers the one kept.

    One conditional put (only if no item, or an expired one, is there); refused, the stored
    answer is read and answered. The put is not in a transaction with the incarnation's
    liveness: an answer remembered as its topic is deleted may outlive
    :func:`forget_answers` under the dead incarnation, where nothing reads it and the TTL
    deletes it.
    """
    inc = await live_incarnation(db, record.tenant, record.topic)
    key = keys.answer(record.tenant, inc, record.key)
    for _ in range(ROUNDS):
        write_id = uuid4().hex

        async def landed(write_id: str = write_id) -> bool:
            found = await db.get("check answer", "answers", key)
            return found is not None and found.get("write_id") == write_id

        try:
            await db.write(
                "remember answer",
                "put_item",
                landed=landed,
                TableName=db.table("answers"),
                Item=key
                | item(
                    request_hash=record.request_hash,
                    answer=record.answer,
                    expires_ms=record.expires_ms,
                    write_id=write_id,
                    **{TTL_ATTRIBUTE: _ttl_seconds(record.expires_ms)},
                ),
                ConditionExpression="attribute_not_exists(pk) OR expires_ms <= :now",
                ExpressionAttributeValues=values(now=now_ms),
            )
        except ConditionFailed:
            found = await db.get("read answer", "answers", key)
            if found is not None and found.get("write_id") == write_id:
                return record  # sent again after it landed unseen
            if found is not None and int(found["expires_ms"]) > now_ms:
                return _record(record.tenant, record.topic, record.key, found)
            continue  # deleted (or expired) since the put was refused: try again
        return record
    raise CatalogUnavailableError(
        f"the answer remembered under key {record.key!r} kept changing; try again"
    )


async def find_answer(
    db: Dynamo, tenant: str, topic: str, key: str, *, now_ms: int
) -> IdempotencyRecord | None:
    inc = await live_incarnation(db, tenant, topic)
    found = await db.get("find answer", "answers", keys.answer(tenant, inc, key))
    if found is None or int(found["expires_ms"]) <= now_ms:
        return None
    return _record(tenant, topic, key, found)


def _gone(db: Dynamo, key: Mapping[str, Any]) -> Callable[[], Awaitable[bool]]:
    async def landed() -> bool:
        return await db.get("check answer deleted", "answers", key) is None

    return landed


async def forget_expired_answers(db: Dynamo, *, now_ms: int) -> int:
    """Delete the answers expired at ``now_ms``; answers how many this call deleted.

    A Scan of the whole table with a filter: it runs rarely, off the request path, and the
    TTL does the same work anyway (those it deleted first are not counted here). Each
    expired answer is deleted on the condition that it is still expired, so an answer
    remembered again under its key since the Scan stays.
    """
    expired = await db.scan(
        "find expired answers",
        "answers",
        FilterExpression="expires_ms <= :now",
        ProjectionExpression="pk, sk",
        ExpressionAttributeValues=values(now=now_ms),
    )
    removed = 0
    for found in expired:
        key = keys.key(str(found["pk"]), str(found["sk"]))
        try:
            await db.write(
                "forget expired answer",
                "delete_item",
                landed=_gone(db, key),
                TableName=db.table("answers"),
                Key=key,
                ConditionExpression="expires_ms <= :now",
                ExpressionAttributeValues=values(now=now_ms),
            )
        except ConditionFailed:
            continue  # remembered again, or deleted by someone else, since the Scan
        removed += 1
    return removed


async def forget_answers(db: Dynamo, tenant: str, inc: str) -> None:
    """Delete every answer of an incarnation (its topic or tenant is being deleted). Safe
    to repeat."""
    found = await db.query(
        "forget answers",
        "answers",
        KeyConditionExpression="pk = :pk",
        ProjectionExpression="pk, sk",
        ExpressionAttributeValues=values(pk=keys.answers_pk(tenant, inc)),
    )
    await db.delete_all(
        "forget answers", "answers", [keys.key(str(one["pk"]), str(one["sk"])) for one in found]
    )
