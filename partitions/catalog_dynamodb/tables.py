"""The four DynamoDB tables of the catalog, defined once: ``create-tables`` makes them from
here, and the SAM template is checked against the same definitions.

All are on-demand (``PAY_PER_REQUEST``), split by write rate and lifetime rather than by
entity (a transaction may span tables):

- ``catalog`` (``pk``, ``sk``; the sparse index ``gsi1`` on ``gsi1pk``, ``gsi1sk``): tenants
  with their live counters, API keys, topic names, incarnations, partitions, groups and
  their offsets, remote segments. What each item looks like is in :mod:`.keys`.
- ``leases`` (``pk``, ``sk``; the sparse index ``by_owner`` on ``owner``, ``session``):
  node sessions, partition leases and the coordinator row, for several nodes. Only
  partition leases carry ``owner``, so the index holds them alone: a node's leases, by
  session, without a scan (what the coordinator's takeover looks for).
- ``usage`` (``pk`` = tenant, ``sk`` = hour; the index ``by_day``): hourly counters, only
  ever added to, and the markers that make a retried flush count once (which expire).
- ``answers`` (``pk`` = tenant and incarnation, ``sk`` = idempotency key; TTL on
  ``expires_at``): remembered produce answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

TABLE_KINDS = ("catalog", "leases", "usage", "answers")

# The attribute DynamoDB's TTL deletes items by (seconds since the epoch): usage flush
# markers and remembered answers. It deletes lazily, so readers also compare it.
TTL_ATTRIBUTE = "expires_at"


# The sparse index of the leases table: partition leases by owner node and session.
LEASES_BY_OWNER = "by_owner"


def _string_keys(*names: str) -> list[dict[str, str]]:
    return [{"AttributeName": name, "AttributeType": "S"} for name in names]


def _key_schema(hash_key: str, range_key: str) -> list[dict[str, str]]:
    return [
        {"AttributeName": hash_key, "KeyType": "HASH"},
        {"AttributeName": range_key, "KeyType": "RANGE"},
    ]


# What CreateTable takes for each table, less its name. The SAM template's tables must say
# the same (tests compare them).
DEFINITIONS: Mapping[str, Mapping[str, Any]] = {
    "catalog": {
        "AttributeDefinitions": _string_keys("pk", "sk", "gsi1pk", "gsi1sk"),
        "KeySchema": _key_schema("pk", "sk"),
        "GlobalSecondaryIndexes": [
            {
                "IndexName": "gsi1",
                "KeySchema": _key_schema("gsi1pk", "gsi1sk"),
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    },
    "leases": {
        "AttributeDefinitions": _string_keys("pk", "sk", "owner", "session"),
        "KeySchema": _key_schema("pk", "sk"),
        "GlobalSecondaryIndexes": [
            {
                "IndexName": LEASES_BY_OWNER,
                "KeySchema": _key_schema("owner", "session"),
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    },
    "usage": {
        "AttributeDefinitions": _string_keys("pk", "sk", "day", "hour_tenant"),
        "KeySchema": _key_schema("pk", "sk"),
        "GlobalSecondaryIndexes": [
            {
                "IndexName": "by_day",
                "KeySchema": _key_schema("day", "hour_tenant"),
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    },
    "answers": {
        "AttributeDefinitions": _string_keys("pk", "sk"),
        "KeySchema": _key_schema("pk", "sk"),
        "BillingMode": "PAY_PER_REQUEST",
    },
}

# Tables whose items expire by TTL_ATTRIBUTE.
TTL_TABLES = ("usage", "answers")


@dataclass(frozen=True, slots=True)
class TableNames:
    """The names of one installation's four tables."""

    catalog: str
    leases: str
    usage: str
    answers: str

    @classmethod
    def from_prefix(cls, prefix: str, overrides: Mapping[str, str] | None = None) -> TableNames:
        """``PREFIX-catalog`` and so on, each replaceable by name (``overrides``: kind to
        table name, for tables made by someone else, such as a SAM stack)."""
        if not prefix and not overrides:
            raise ValueError("a DynamoDB catalog needs a table prefix: dynamodb://PREFIX")
        unknown = set(overrides or {}) - set(TABLE_KINDS)
        if unknown:
            raise ValueError(f"no such table kind: {sorted(unknown)}; kinds: {TABLE_KINDS}")
        names = {kind: f"{prefix}-{kind}" for kind in TABLE_KINDS}
        names.update(overrides or {})
        return cls(**names)

    def of(self, kind: str) -> str:
        return str(getattr(self, kind))

    def all(self) -> dict[str, str]:
        return {kind: self.of(kind) for kind in TABLE_KINDS}


async def create_tables(client: Any, names: TableNames) -> list[str]:
    """Create the tables that do not exist yet, add the indexes an existing table lacks
    (tables made by an older version), and wait until each is active; answers the names of
    the tables it created. Running it again creates nothing."""
    created = []
    for kind in TABLE_KINDS:
        name = names.of(kind)
        try:
            await client.create_table(TableName=name, **DEFINITIONS[kind])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        else:
            created.append(name)
    for kind in TABLE_KINDS:
        await _wait_active(client, names.of(kind))
        if names.of(kind) not in created:
            await _add_missing_indexes(client, names.of(kind), DEFINITIONS[kind])
    for kind in TTL_TABLES:
        name = names.of(kind)
        ttl = await client.describe_time_to_live(TableName=name)
        if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") not in (
            "ENABLED",
            "ENABLING",
        ):
            await client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
    return created


async def _add_missing_indexes(client: Any, name: str, definition: Mapping[str, Any]) -> None:
    """Create each index of ``definition`` the table lacks, one at a time (DynamoDB adds one
    per update), waiting for each to be active: items already there are indexed too."""
    for index in definition.get("GlobalSecondaryIndexes", []):
        table = (await client.describe_table(TableName=name))["Table"]
        have = {found["IndexName"] for found in table.get("GlobalSecondaryIndexes", [])}
        if index["IndexName"] in have:
            continue
        used = {part["AttributeName"] for part in index["KeySchema"]}
        await client.update_table(
            TableName=name,
            AttributeDefinitions=[
                a for a in definition["AttributeDefinitions"] if a["AttributeName"] in used
            ],
            GlobalSecondaryIndexUpdates=[{"Create": dict(index)}],
        )
        await _wait_active(client, name)


async def _wait_active(client: Any, name: str, *, timeout_s: float = 120.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            table = (await client.describe_table(TableName=name))["Table"]
            indexes = table.get("GlobalSecondaryIndexes", [])
            if table["TableStatus"] == "ACTIVE" and all(
                index.get("IndexStatus", "ACTIVE") == "ACTIVE" for index in indexes
            ):
                return
            await asyncio.sleep(1.0)
