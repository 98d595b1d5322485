"""A topic name's live incarnation: where every operation that names a topic starts.

The name item (``T#tenant``, ``NAME#topic``) points at the live incarnation and exists only
while the topic is live; creating it with ``attribute_not_exists`` is what makes names
unique. Deleting the topic removes it in the same transaction that marks the incarnation
deleted. A write that must not reach a deleted incarnation carries a condition on the
incarnation item (:func:`still_live`), so a deletion racing it makes it fail.
"""

from __future__ import annotations

from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog_dynamodb.client import Dynamo
from partitions.errors import TopicNotFoundError


def missing(topic: str) -> TopicNotFoundError:
    return TopicNotFoundError(f"no topic {topic!r}", topic=topic)


async def live_incarnation(db: Dynamo, tenant: str, topic: str, expected: str | None = None) -> str:
    """The live incarnation of ``topic``; with ``expected``, only if it is that one."""
    found = await db.get("find topic", "catalog", keys.topic_name(tenant, topic))
    if found is None:
        raise missing(topic)
    live = str(found["incarnation"])
    if expected is not None and live != expected:
        raise TopicNotFoundError(f"topic {topic!r} was deleted (and created again)", topic=topic)
    return live


async def live_topic(db: Dynamo, tenant: str, topic: str) -> dict[str, Any]:
    """The live incarnation's item (name, config, version, counters)."""
    incarnation = await live_incarnation(db, tenant, topic)
    found = await db.get("read topic", "catalog", keys.incarnation(tenant, incarnation))
    if found is None or found.get("deleted_ms") is not None:
        raise missing(topic)  # deleted between the two reads
    return found


def still_live(db: Dynamo, tenant: str, incarnation: str) -> dict[str, Any]:
    """A transaction's check that the incarnation exists and is not deleted."""
    return {
        "ConditionCheck": {
            "TableName": db.table("catalog"),
            "Key": keys.incarnation(tenant, incarnation),
            "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(deleted_ms)",
        }
    }


def name_points_at(db: Dynamo, tenant: str, topic: str, incarnation: str) -> dict[str, Any]:
    """A transaction's check that ``topic`` is live as ``incarnation``."""
    return {
        "ConditionCheck": {
            "TableName": db.table("catalog"),
            "Key": keys.topic_name(tenant, topic),
            "ConditionExpression": "incarnation = :inc",
            "ExpressionAttributeValues": {":inc": {"S": incarnation}},
        }
    }
