"""Settings, tenants and their API keys, and the live counters behind a tenant's limits.

A tenant item (``TENANTS``, name) holds ``n_topics`` and ``n_active``: the live topics and
their active partitions. Every create, split, merge and delete changes them in its own
transaction, with the limit as the transaction's condition, so racing changes cannot pass
a limit and no operation counts rows. All tenants are one partition key, read in one query;
their items change only when topics are made, reshaped or deleted.

An API key is two items written together: by its hash (what authentication reads, one
``GetItem``) and under its tenant (what listing and revoking find).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import ApiKeyRecord, TenantCounts, TenantRecord
from partitions.catalog_dynamodb.client import (
    ConditionFailed,
    Dynamo,
    TransactionRefused,
    item,
    values,
)
from partitions.catalog_dynamodb.records import api_key_record, json_text, tenant_record
from partitions.errors import (
    ApiKeyNotFoundError,
    TenantExistsError,
    TenantNotFoundError,
    VersionConflictError,
)

# --- settings --------------------------------------------------------------------------------


async def get_setting(db: Dynamo, name: str) -> str | None:
    found = await db.get("get setting", "catalog", keys.setting(name))
    return None if found is None else str(found["value"])


async def put_setting(db: Dynamo, name: str, value: str) -> None:
    await db.write(
        "put setting",
        "put_item",
        landed=None,  # the same value twice is the same item
        TableName=db.table("catalog"),
        Item={**keys.setting(name), **item(value=value)},
    )


# --- tenants ---------------------------------------------------------------------------------


def no_tenant(name: str) -> TenantNotFoundError:
    return TenantNotFoundError(f"no tenant {name!r}", tenant=name)


async def read_tenant(db: Dynamo, name: str) -> dict[str, Any]:
    found = await db.get("get tenant", "catalog", keys.tenant(name))
    if found is None:
        raise no_tenant(name)
    return found


def _landed_with(db: Dynamo, key: Mapping[str, Any], op: str) -> Callable[[], Any]:
    async def landed() -> bool:
        found = await db.get("read back", "catalog", key)
        return found is not None and found.get("op") == op

    return landed


async def create_tenant(
    db: Dynamo,
    name: str,
    *,
    quotas: Mapping[str, Any] | None,
    plan: Mapping[str, Any] | None,
    clock_ms: Callable[[], int],
) -> TenantRecord:
    op = uuid.uuid4().hex
    fields: dict[str, Any] = {
        "created_ms": clock_ms(),
        "quotas": json_text(quotas or {}),
        "plan": json_text(plan or {}),
        "version": 1,
        "n_topics": 0,
        "n_active": 0,
    }
    try:
        await db.write(
            "create tenant",
            "put_item",
            landed=_landed_with(db, keys.tenant(name), op),
            TableName=db.table("catalog"),
            Item={**keys.tenant(name), **item(op=op, **fields)},
            ConditionExpression="attribute_not_exists(pk)",
        )
    except ConditionFailed:
        raise TenantExistsError(f"tenant {name!r} exists", tenant=name) from None
    return tenant_record({"sk": name, **fields})


async def get_tenant(db: Dynamo, name: str) -> TenantRecord:
    return tenant_record(await read_tenant(db, name))


async def list_tenants(db: Dynamo) -> list[TenantRecord]:
    found = await db.query(
        "list tenants",
        "catalog",
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues=values(pk=keys.TENANTS),
    )
    return [tenant_record(f) for f in found]


async def update_tenant(
    db: Dynamo,
    name: str,
    *,
    expected_version: int,
    quotas: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
) -> TenantRecord:
    current = await read_tenant(db, name)
    if current["version"] != expected_version:
        raise _version_conflict(name, current["version"], expected_version)
    op = uuid.uuid4().hex
    changed = {
        "quotas": json_text(quotas) if quotas is not None else current["quotas"],
        "plan": json_text(plan) if plan is not None else current["plan"],
    }
    try:
        await db.write(
            "update tenant",
            "update_item",
            landed=_landed_with(db, keys.tenant(name), op),
            TableName=db.table("catalog"),
            Key=keys.tenant(name),
            UpdateExpression="SET quotas = :q, #plan = :p, version = version + :one, op = :op",
            ConditionExpression="version = :v",
            ExpressionAttributeNames={"#plan": "plan"},  # a reserved word
            ExpressionAttributeValues=values(
                q=changed["quotas"], p=changed["plan"], one=1, op=op, v=expected_version
            ),
        )
    except ConditionFailed:
        now = await read_tenant(db, name)
        raise _version_conflict(name, now["version"], expected_version) from None
    return tenant_record({**current, **changed, "version": expected_version + 1})


def _version_conflict(name: str, version: int, expected: int) -> VersionConflictError:
    return VersionConflictError(
        f"tenant {name!r} is at version {version}, not {expected}", version=version
    )


async def tenant_counts(db: Dynamo, tenant: str) -> TenantCounts:
    found = await read_tenant(db, tenant)
    return counts_of(found)


def counts_of(found: Mapping[str, Any]) -> TenantCounts:
    return TenantCounts(topics=found["n_topics"], active_partitions=found["n_active"])


def count_change(
    db: Dynamo,
    tenant: str,
    *,
    topics: int = 0,
    active: int = 0,
    max_topics: int | None = None,
    max_partitions: int | None = None,
) -> dict[str, Any]:
    """A transaction's update of the tenant's counters, conditioned on the tenant existing
    and, when given, on the limits the change must stay within."""
    conditions = ["attribute_exists(pk)"]
    names: dict[str, Any] = {"dt": topics, "da": active}
    if max_topics is not None and topics > 0:
        conditions.append("n_topics <= :mt")
        names["mt"] = max_topics - topics
    if max_partitions is not None and active > 0:
        conditions.append("n_active <= :mp")
        names["mp"] = max_partitions - active
    return {
        "Update": {
            "TableName": db.table("catalog"),
            "Key": keys.tenant(tenant),
            "UpdateExpression": "ADD n_topics :dt, n_active :da",
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeValues": values(**names),
        }
    }


# --- API keys --------------------------------------------------------------------------------


async def add_api_key(
    db: Dynamo,
    tenant: str,
    key_id: str,
    key_hash: str,
    scope: Mapping[str, Any],
    *,
    clock_ms: Callable[[], int],
) -> ApiKeyRecord:
    op = uuid.uuid4().hex
    fields = {
        "tenant": tenant,
        "key_id": key_id,
        "key_hash": key_hash,
        "scope": json_text(scope),
        "created_ms": clock_ms(),
    }
    actions = [
        {
            "ConditionCheck": {
                "TableName": db.table("catalog"),
                "Key": keys.tenant(tenant),
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
        {
            "Put": {
                "TableName": db.table("catalog"),
                "Item": {**keys.api_key(key_hash), **item(op=op, **fields)},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        {
            "Put": {
                "TableName": db.table("catalog"),
                "Item": {**keys.tenant_key(tenant, key_id), **item(op=op, **fields)},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
    ]
    try:
        await db.transact(
            "add API key", actions, landed=_landed_with(db, keys.api_key(key_hash), op)
        )
    except TransactionRefused as refused:
        if refused.failed(0):
            raise no_tenant(tenant) from None
        raise VersionConflictError(
            f"an API key with id {key_id!r} or this hash exists already"
        ) from None
    return api_key_record(fields)


async def find_api_key(db: Dynamo, key_hash: str) -> ApiKeyRecord | None:
    found = await db.get("find API key", "catalog", keys.api_key(key_hash))
    return None if found is None else api_key_record(found)


async def list_api_keys(db: Dynamo, tenant: str) -> list[ApiKeyRecord]:
    await read_tenant(db, tenant)
    sides = await db.query(
        "list API keys",
        "catalog",
        KeyConditionExpression="pk = :pk AND begins_with(sk, :keyid)",
        ExpressionAttributeValues=values(pk=keys.tenant_pk(tenant), keyid="KEYID#"),
    )
    # last_used_ms is kept on the item authentication reads: fetch those.
    found = await db.batch_get(
        "list API keys", "catalog", [keys.api_key(s["key_hash"]) for s in sides]
    )
    records = [api_key_record(f) for f in found if f.get("tenant") == tenant]
    return sorted(records, key=lambda k: (k.created_ms, k.key_id))


async def revoke_api_key(db: Dynamo, tenant: str, key_id: str) -> None:
    side = await db.get("find API key", "catalog", keys.tenant_key(tenant, key_id))
    if side is None:
        raise ApiKeyNotFoundError(f"no key {key_id!r} for tenant {tenant!r}")
    actions = [
        {
            "Delete": {
                "TableName": db.table("catalog"),
                "Key": keys.tenant_key(tenant, key_id),
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
        {"Delete": {"TableName": db.table("catalog"), "Key": keys.api_key(side["key_hash"])}},
    ]

    async def landed() -> bool:
        return await db.get("read back", "catalog", keys.tenant_key(tenant, key_id)) is None

    try:
        await db.transact("revoke API key", actions, landed=landed)
    except TransactionRefused:
        raise ApiKeyNotFoundError(f"no key {key_id!r} for tenant {tenant!r}") from None


async def touch_api_key(db: Dynamo, tenant: str, key_id: str, used_ms: int) -> None:
    """Record a use; an older use than the one recorded, or a key gone, changes nothing."""
    side = await db.get("find API key", "catalog", keys.tenant_key(tenant, key_id))
    if side is None:
        return
    try:
        await db.write(
            "touch API key",
            "update_item",
            landed=None,  # setting the same time twice is the same
            TableName=db.table("catalog"),
            Key=keys.api_key(side["key_hash"]),
            UpdateExpression="SET last_used_ms = :t",
            ConditionExpression=(
                "attribute_exists(pk) AND (attribute_not_exists(last_used_ms) OR last_used_ms < :t)"
            ),
            ExpressionAttributeValues=values(t=used_ms),
        )
    except ConditionFailed:
        pass
