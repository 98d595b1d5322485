"""Metered usage in the ``usage`` table: one item of counters per tenant and UTC hour,
written only by adding.

An item (pk tenant, sk ``H#``\\ hour) holds one number per counter of
:data:`~partitions.catalog.USAGE_COUNTERS`, and ``tenant``, ``hour_ms``, ``day`` and
``hour_tenant`` for the index ``by_day``, which lists every tenant's hours of a day. Flushes
``ADD`` their deltas, so any number of processes flush into one item without reading it.

``ADD`` is not safe to send twice, so each flush transaction also creates a marker item
(``FLUSH#``\\ id) on the condition that it does not exist: a flush whose answer was lost is
resolved by reading its marker (there: it counted), and one sent again after it landed
unseen is refused by its own marker, so it never counts twice. Markers expire after a day
by DynamoDB's TTL. Items are kept after their tenant is deleted, for its last bill.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import uuid4

import partitions.catalog_dynamodb.keys as keys
from partitions.catalog import HOUR_MS, USAGE_COUNTERS, UsageCounters, UsageRecord
from partitions.catalog_dynamodb.client import Dynamo, TransactionRefused, item, values
from partitions.catalog_dynamodb.tables import TTL_ATTRIBUTE
from partitions.errors import UsagePartlyAddedError

# Rows one flush transaction adds to: with the marker, 100 actions, DynamoDB's most.
FLUSH_CHUNK = 99

# How long a flush marker is kept: far longer than any flush's retries last.
MARKER_TTL_S = 86_400

# Ranges of more days than this are read by one Scan of the table rather than a query of
# the index per day (reading "from the beginning", as the usage export does once, would
# otherwise be a query for each day since 1970).
MAX_DAYS_BY_INDEX = 400

# Counters are named through placeholders in expressions (``#c0``...), and so is ``day``,
# one of DynamoDB's reserved words.
_COUNTER_NAMES = {f"#c{i}": name for i, name in enumerate(USAGE_COUNTERS)}


def summed(deltas: Sequence[UsageRecord]) -> dict[tuple[str, int], UsageCounters]:
    """The deltas summed into one per tenant and hour, refusing (:class:`ValueError`) any
    that is not a delta, as the SQLite store does: an hour that is not the start of a UTC
    hour, a negative counter. Runs before anything is sent."""
    rows: dict[tuple[str, int], UsageCounters] = {}
    for delta in deltas:
        if delta.hour_ms < 0 or delta.hour_ms % HOUR_MS:
            raise ValueError(f"not the start of a UTC hour: {delta.hour_ms}")
        if any(value < 0 for value in delta.counters.to_json().values()):
            raise ValueError(f"usage only grows: {delta.counters}")
        key = (delta.tenant, delta.hour_ms)
        rows[key] = rows.get(key, UsageCounters()) + delta.counters
    return rows


def _add(db: Dynamo, tenant: str, hour_ms: int, counters: UsageCounters) -> dict[str, Any]:
    adds = ", ".join(f"#c{i} :c{i}" for i in range(len(USAGE_COUNTERS)))
    amounts = {f"c{i}": getattr(counters, name) for i, name in enumerate(USAGE_COUNTERS)}
    return {
        "Update": {
            "TableName": db.table("usage"),
            "Key": keys.usage(tenant, hour_ms),
            "UpdateExpression": f"ADD {adds} "
            "SET tenant = :tenant, hour_ms = :hour, #day = :day, hour_tenant = :ht",
            "ExpressionAttributeNames": {**_COUNTER_NAMES, "#day": "day"},
            "ExpressionAttributeValues": values(
                tenant=tenant,
                hour=hour_ms,
                day=keys.usage_day(hour_ms),
                ht=keys.usage_hour_tenant(tenant, hour_ms),
                **amounts,
            ),
        }
    }


def _marker(db: Dynamo, flush_id: str) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": db.table("usage"),
            "Item": keys.flush_marker(flush_id)
            | item(**{TTL_ATTRIBUTE: int(time.time()) + MARKER_TTL_S}),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def _marked(db: Dynamo, flush_id: str) -> Callable[[], Awaitable[bool]]:
    async def landed() -> bool:
        return await db.get("check usage flush", "usage", keys.flush_marker(flush_id)) is not None

    return landed


async def add_usage(db: Dynamo, deltas: Sequence[UsageRecord]) -> None:
    """Add each delta's counters to its (tenant, hour) item, creating missing items, each
    exactly once. Deltas of one item are summed first (a transaction may not touch an item
    twice); bad deltas raise :class:`ValueError` before anything is sent.

    Up to :data:`FLUSH_CHUNK` items are one transaction: all are added, or none. More are
    sent in chunks, each its own transaction with its own marker, so each chunk is atomic
    and counted exactly once. If a chunk fails after earlier ones were added,
    :class:`~partitions.errors.UsagePartlyAddedError` names the rows not added, so that
    the caller keeps only those for its next flush and nothing is counted twice.
    """
    rows = summed(deltas)
    order = sorted(rows, key=lambda row: (row[1], row[0]))
    for start in range(0, len(order), FLUSH_CHUNK):
        chunk = order[start : start + FLUSH_CHUNK]
        flush_id = uuid4().hex
        actions = [_add(db, tenant, hour, rows[tenant, hour]) for tenant, hour in chunk]
        actions.append(_marker(db, flush_id))
        try:
            await db.transact("add usage", actions, landed=_marked(db, flush_id))
        except TransactionRefused as refused:
            if refused.failed(len(actions) - 1):
                continue  # its own marker: sent again after it landed unseen
            if start == 0:
                raise
            raise _partly(order[start:], refused) from refused
        except Exception as exc:
            if start == 0:
                raise
            raise _partly(order[start:], exc) from exc


def _partly(left: list[tuple[str, int]], cause: BaseException) -> UsagePartlyAddedError:
    return UsagePartlyAddedError(
        f"usage of {len(left)} tenant-hours was not added ({cause}); the rest was",
        not_added=[[tenant, hour] for tenant, hour in left],
    )


def _row(found: dict[str, Any]) -> UsageRecord:
    return UsageRecord(
        tenant=str(found["tenant"]),
        hour_ms=int(found["hour_ms"]),
        counters=UsageCounters(*(int(found.get(name, 0)) for name in USAGE_COUNTERS)),
    )


async def list_usage(
    db: Dynamo, start_ms: int, end_ms: int, *, tenant: str | None = None
) -> list[UsageRecord]:
    """The items of hours in ``[start_ms, end_ms)``, of ``tenant`` or of every tenant
    (deleted ones too), by hour then tenant.

    One tenant's: a strongly consistent query of its items. Every tenant's: a query of the
    index ``by_day`` per day of the range, which is eventually consistent (a flush that
    just landed may be missing for a moment); ranges of more than
    :data:`MAX_DAYS_BY_INDEX` days are one Scan of the table instead (strongly consistent,
    but it reads every item).
    """
    start_ms = max(start_ms, 0)
    if end_ms <= start_ms:
        return []
    found: list[dict[str, Any]] = []
    if tenant is not None:
        found = await db.query(
            "list usage",
            "usage",
            KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :last",
            ExpressionAttributeValues=values(
                pk=tenant,
                first=keys.usage(tenant, start_ms)["sk"]["S"],
                last=keys.usage(tenant, end_ms - 1)["sk"]["S"],
            ),
        )
    elif (end_ms - 1) // keys.DAY_MS - start_ms // keys.DAY_MS >= MAX_DAYS_BY_INDEX:
        found = await db.scan(
            "scan usage",
            "usage",
            FilterExpression="hour_ms BETWEEN :first AND :last",
            ExpressionAttributeValues=values(first=start_ms, last=end_ms - 1),
        )
    else:
        for day in range(start_ms // keys.DAY_MS, (end_ms - 1) // keys.DAY_MS + 1):
            found += await db.query(
                "list usage of a day",
                "usage",
                index="by_day",
                KeyConditionExpression="#day = :day AND hour_tenant BETWEEN :first AND :last",
                ExpressionAttributeNames={"#day": "day"},
                ExpressionAttributeValues=values(
                    day=keys.pad(day),
                    # hour_tenant is the padded hour, "#", the tenant: from the first hour's
                    # to just before the end's, whatever the tenant.
                    first=keys.pad(max(start_ms, day * keys.DAY_MS)),
                    last=keys.pad(min(end_ms, (day + 1) * keys.DAY_MS)),
                ),
            )
    rows = [_row(one) for one in found if start_ms <= int(one["hour_ms"]) < end_ms]
    return sorted(rows, key=lambda row: (row.hour_ms, row.tenant))
