"""Usage routes: a tenant's metered usage and its bill, and every tenant's (admin key).

``from`` and ``to`` are RFC 3339 times in UTC on whole hours; the period is ``[from, to)``
and spans at most :data:`MAX_RANGE_HOURS` hours (a month of 31 days). Without ``to``, the
period ends with the current hour (which is included as used so far); without ``from``,
it starts at the beginning of the UTC month holding the period's last hour.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.http.inputs import Query, QueryParams
from gateway.http.keys import METERING, PRINCIPAL, tenant_of
from gateway.http.params import InvalidParameterError, json_response
from gateway.tenancy.auth import TENANT_NAME
from gateway.tenancy.billing import bill_json, price
from gateway.tenancy.metering import hour_of, hour_text
from gateway.tenancy.scopes import OutOfScopeError
from partitions.catalog import HOUR_MS, UsageCounters
from partitions.errors import TenantNotFoundError
from partitions.shapes import Text

MAX_RANGE_HOURS = 31 * 24
_RFC3339 = re.compile(
    r"(?P<time>\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)
_EXAMPLE = "2026-01-05T13:00:00Z"


def parse_hour(name: str, text: str) -> int:
    """An RFC 3339 time in UTC on a whole hour, as ms since the epoch."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidParameterError(
            f"{name} must be an RFC 3339 time in UTC on a whole hour, like {_EXAMPLE}",
            parameter=name,
        )
    try:
        when = datetime.fromisoformat((match["time"] + match["zone"]).upper())
    except ValueError:
        raise InvalidParameterError(
            f"{name} is not a valid date and time: {text!r}", parameter=name
        ) from None
    if when.utcoffset() != timedelta(0):
        raise InvalidParameterError(
            f"{name} must be in UTC (end it with Z), like {_EXAMPLE}", parameter=name
        )
    if when.minute or when.second or (match["fraction"] or "").strip("0"):
        raise InvalidParameterError(
            f"{name} must be a whole hour (usage is kept per UTC hour), like {_EXAMPLE}",
            parameter=name,
        )
    ms = int(when.timestamp()) * 1000
    if ms < 0:
        raise InvalidParameterError(f"{name} may not be before 1970", parameter=name)
    return ms


def _month_start(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, UTC)
    return int(day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()) * 1000


# An hour as the query gives it: RFC 3339, in UTC, on a whole hour, from 1970.
_HOUR = Text(
    pattern=r"(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):00:00(?:\.0{1,9})?(?:[Zz]|[+-]00:00)",
    meaning=f"an RFC 3339 date and time in UTC on a whole hour from 1970 on, like {_EXAMPLE}",
    format="date-time",
)
_PERIOD = (
    Query("from", _HOUR, "The period's first hour (left out: the start of the UTC month)"),
    Query(
        "to",
        _HOUR,
        "The hour after the period's last (left out: after the current hour). After from, "
        f"and at most {MAX_RANGE_HOURS} hours (31 days) after it",
    ),
)
TENANT_USAGE_QUERY = QueryParams(_PERIOD)
ALL_USAGE_QUERY = QueryParams(
    (
        *_PERIOD,
        Query(
            "tenant",
            Text(pattern=TENANT_NAME.pattern, meaning="a tenant's name"),
            "Only this tenant's usage",
        ),
    )
)


def usage_period(query: dict[str, Any], now_ms: int) -> tuple[int, int]:
    """``[from, to)`` of the request, validated."""
    raw_to, raw_from = query["to"], query["from"]
    end = parse_hour("to", raw_to) if raw_to else hour_of(now_ms) + HOUR_MS
    start = parse_hour("from", raw_from) if raw_from else _month_start(end - HOUR_MS)
    if start >= end:
        raise InvalidParameterError("from must be before to", parameter="from")
    if end - start > MAX_RANGE_HOURS * HOUR_MS:
        raise InvalidParameterError(
            f"a period spans at most {MAX_RANGE_HOURS} hours (31 days); ask month by month",
            parameter="to",
        )
    return start, end


async def tenant_usage(request: web.Request) -> web.Response:
    """The calling tenant's usage and bill. Usage is tenant-wide, so a key limited to some
    topics may not read it (403 ``out_of_scope``); produce and consume keys neither (the
    scope table names the route ``manage``)."""
    tenant = tenant_of(request)
    if request[PRINCIPAL].scope.topics is not None:
        raise OutOfScopeError(
            "usage is tenant-wide: a key limited to some topics may not read it",
            route="/v1/usage",
        )
    metering = request.app[METERING]
    start, end = usage_period(TENANT_USAGE_QUERY.read(request), metering.meter.clock_ms())
    record = await metering.catalog.get_tenant(tenant)
    # A tenant created again under an old name sees nothing of the old one's hours.
    counted_from = max(start, hour_of(record.created_ms))
    found = await metering.meter.usage(counted_from, end, tenant=tenant)
    bill = price(found.get(tenant, UsageCounters()), metering.default_plan.overlay(record.plan))
    return json_response({"from": hour_text(start), "to": hour_text(end), **bill_json(bill)})


async def all_usage(request: web.Request) -> web.Response:
    """Every tenant's usage and bill (admin key), or one tenant's with ``?tenant=``.

    Tenants are listed by name: every tenant that exists, and deleted tenants that used
    something in the period (``"deleted": true``, priced with the default plan)."""
    metering = request.app[METERING]
    query = ALL_USAGE_QUERY.read(request)
    start, end = usage_period(query, metering.meter.clock_ms())
    only = query["tenant"]
    plans = {t.name: t.plan for t in await metering.catalog.list_tenants()}
    found = await metering.meter.usage(start, end, tenant=only)
    names = sorted(set(plans) | set(found))
    if only is not None:
        if only not in names:
            raise TenantNotFoundError(f"no tenant {only!r}", tenant=only)
        names = [only]
    tenants: list[dict[str, Any]] = []
    total = Decimal("0.00")
    for name in names:
        plan = metering.default_plan.overlay(plans.get(name, {}))
        bill = price(found.get(name, UsageCounters()), plan)
        total += bill.total_usd
        tenants.append({"tenant": name, "deleted": name not in plans, **bill_json(bill)})
    return json_response(
        {
            "from": hour_text(start),
            "to": hour_text(end),
            "tenants": tenants,
            "total_usd": format(total, "f"),
        }
    )
