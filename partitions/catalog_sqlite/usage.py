"""Metered usage: one row of counters per tenant and UTC hour, written only by adding.

Adding deltas (``counter = counter + excluded.counter``) rather than writing totals lets
several processes flush their counts into one row without reading it first. Rows are kept
after their tenant is deleted, for its last bill.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from partitions.catalog import HOUR_MS, USAGE_COUNTERS, UsageCounters, UsageRecord

_UPDATES = ", ".join(f"{name} = {name} + excluded.{name}" for name in USAGE_COUNTERS)
_ADD_USAGE = (
    f"INSERT INTO usage (hour_ms, tenant, {', '.join(USAGE_COUNTERS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * (2 + len(USAGE_COUNTERS)))}) "
    f"ON CONFLICT (hour_ms, tenant) DO UPDATE SET {_UPDATES}"
)


def usage_rows(deltas: Sequence[UsageRecord]) -> list[tuple[int | str, ...]]:
    """The deltas summed into one row per hour and tenant; refuses any that is not a delta.

    Runs before the transaction, so that a bad delta is refused without taking the lock.
    """
    summed: dict[tuple[int, str], UsageCounters] = {}
    for delta in deltas:
        if delta.hour_ms < 0 or delta.hour_ms % HOUR_MS:
            raise ValueError(f"not the start of a UTC hour: {delta.hour_ms}")
        if any(value < 0 for value in delta.counters.to_json().values()):
            raise ValueError(f"usage only grows: {delta.counters}")
        key = (delta.hour_ms, delta.tenant)
        summed[key] = summed.get(key, UsageCounters()) + delta.counters
    return [
        (hour, tenant, *counters.to_json().values()) for (hour, tenant), counters in summed.items()
    ]


def add_usage(conn: sqlite3.Connection, rows: Sequence[tuple[int | str, ...]]) -> None:
    conn.executemany(_ADD_USAGE, rows)


def list_usage(
    conn: sqlite3.Connection, start_ms: int, end_ms: int, *, tenant: str | None = None
) -> list[UsageRecord]:
    if tenant is None:
        rows = conn.execute(
            "SELECT * FROM usage WHERE hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, tenant",
            (start_ms, end_ms),
        )
    else:
        rows = conn.execute(
            "SELECT * FROM usage WHERE tenant = ? AND hour_ms >= ? AND hour_ms < ? "
            "ORDER BY hour_ms",
            (tenant, start_ms, end_ms),
        )
    return [
        UsageRecord(
            tenant=row["tenant"],
            hour_ms=row["hour_ms"],
            counters=UsageCounters(*(row[name] for name in USAGE_COUNTERS)),
        )
        for row in rows
    ]
