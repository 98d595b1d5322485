"""Price plans and bills: what a tenant's metered usage costs.

A plan has five unit prices in USD, each a decimal of at most ten decimal places from 0 to
1,000,000, and an optional ``name`` (a label for people and billing pipelines):

==============================  =============================================================
``usd_per_gb_in``               per GB of record bytes produced (GB = 10^9 bytes)
``usd_per_gb_out``              per GB of record bytes returned by reads and group fetches
``usd_per_gb_month_stored``     per GB-month stored (a month is :data:`HOURS_PER_MONTH` hours)
``usd_per_million_requests``    per million billable requests
``usd_per_partition_hour``      per hour of one active partition
==============================  =============================================================

A tenant's plan is the server's default plan (``eventbus serve --default-usd-per-...`` flags
or ``--price-plan FILE``) with the prices the tenant's own ``plan`` names on top
(``PATCH /v1/admin/tenants/{tenant}``). There is no floor: an idle tenant pays for what it
stores and nothing else.

Arithmetic is in :class:`~decimal.Decimal`. Each line item's amount is the exact count
times the unit price divided by the unit's size, computed with 60 significant digits (the
product is exact; the one division rounds far below a cent), then rounded **once**, half
up, to the cent. The total is the sum of the rounded line items, so it needs no rounding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from gateway.settings import setting
from partitions.catalog import UsageCounters
from partitions.errors import InvalidInputError
from partitions.shapes import Nullable, Number, Object, OneOf, Text

GB = 10**9
HOURS_PER_MONTH = 730
SECONDS_PER_HOUR = 3600
MAX_PRICE = Decimal(1_000_000)
PRICE_DECIMALS = 10
MAX_PLAN_NAME = 64
CENT = Decimal("0.01")
# Quantities are shown to this many decimal places (exact for GB and million requests);
# amounts are computed from the exact counts, never from the rounded quantities.
QUANTITY = Decimal("0.000000001")
# Hours of the time-integrated counters, as shown in the usage object.
HOURS_SHOWN = Decimal("0.000001")

PRICE_FIELDS = (
    "usd_per_gb_in",
    "usd_per_gb_out",
    "usd_per_gb_month_stored",
    "usd_per_million_requests",
    "usd_per_partition_hour",
)
PLAN_FIELDS = ("name", *PRICE_FIELDS)


class InvalidPlanError(InvalidInputError):
    code = "invalid_plan"


def parse_price(name: str, value: Any) -> Decimal:
    """A unit price from JSON: a decimal string (``"0.08"``, exact) or a number."""
    text: str | None = None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float) and math.isfinite(value):
        text = repr(value)  # the shortest text that reads back as this float
    price: Decimal | None = None
    if text:
        try:
            price = Decimal(text)
        except InvalidOperation:
            price = None
    if (
        price is None
        or not price.is_finite()
        or not 0 <= price <= MAX_PRICE
        or -int(price.as_tuple().exponent) > PRICE_DECIMALS
    ):
        raise InvalidPlanError(
            f"{name} is a price in USD from 0 to {MAX_PRICE} with at most {PRICE_DECIMALS} "
            f'decimal places, best given as a string such as "0.08"',
            field=name,
        )
    return price


def price_text(price: Decimal) -> str:
    """The canonical text of a price: no exponent, no trailing zeros (``"0.1"``, ``"100"``)."""
    text = format(price.normalize(), "f")
    return text if text != "-0" else "0"


# A price as JSON: exact decimal text, or a number (read as its shortest decimal text and
# rounded to PRICE_DECIMALS places).
PRICE_SHAPE = OneOf(
    shapes=(
        Text(
            pattern=r"0*(?:[0-9]{1,6}(?:\.[0-9]{1,DECIMALS})?|1000000(?:\.0{1,DECIMALS})?)".replace(
                "DECIMALS", str(PRICE_DECIMALS)
            )
        ),
        Number(low=0, high=float(MAX_PRICE)),
    ),
    meaning=f"a price in USD from 0 to {MAX_PRICE} with at most {PRICE_DECIMALS} decimal "
    'places, best given as a string such as "0.08"',
)
# A ``plan`` of the admin API: a JSON merge patch, where ``null`` drops a price so that
# the server's default applies again.
PLAN_SHAPE = Object(
    fields={"name": Nullable(shape=Text(min_length=1, max_length=MAX_PLAN_NAME))}
    | {name: Nullable(shape=PRICE_SHAPE) for name in PRICE_FIELDS},
    description="The tenant's own prices (null drops one: the default applies again) and a name",
    error=InvalidPlanError,
)


def parse_plan_patch(given: Any) -> dict[str, str | None]:
    """Validate a ``plan`` of the admin API. Answers it with prices in canonical text."""
    checked = PLAN_SHAPE.parse(given, InvalidPlanError, where="plan", detail="field")
    out: dict[str, str | None] = {}
    for name, value in checked.items():
        if value is None or name == "name":
            out[name] = value
        elif isinstance(value, float):
            rounded = Decimal(repr(value)).quantize(Decimal(1).scaleb(-PRICE_DECIMALS))
            out[name] = price_text(rounded)
        else:
            out[name] = price_text(parse_price(name, value))
    return out


def _price_flag(name: str) -> Callable[[str], Decimal]:
    def parse(text: str) -> Decimal:
        try:
            return parse_price(name, text)
        except InvalidPlanError as exc:
            raise ValueError(exc.message) from None

    return parse


def _price_setting(name: str, default: str, unit: str) -> Any:
    return setting(
        Decimal(default),
        f"USD per {unit}, for tenants whose plan has no price of its own for it",
        parse=_price_flag(name),
        metavar="USD",
    )


@dataclass(frozen=True, slots=True)
class PricePlan:
    """Unit prices in USD (see the module's docstring for the units)."""

    usd_per_gb_in: Decimal = _price_setting("usd_per_gb_in", "0.10", "GB produced")
    usd_per_gb_out: Decimal = _price_setting("usd_per_gb_out", "0.05", "GB read")
    usd_per_gb_month_stored: Decimal = _price_setting(
        "usd_per_gb_month_stored", "0.10", "GB stored for a month"
    )
    usd_per_million_requests: Decimal = _price_setting(
        "usd_per_million_requests", "0.20", "million requests"
    )
    usd_per_partition_hour: Decimal = _price_setting(
        "usd_per_partition_hour", "0.0015", "hour of an active partition"
    )
    name: str | None = None

    @classmethod
    def from_json(cls, given: Any, base: PricePlan | None = None) -> PricePlan:
        """A whole plan (a config file's), validated, over ``base`` (default: built in)."""
        patch = parse_plan_patch(given)
        return (base or cls()).overlay({k: v for k, v in patch.items() if v is not None})

    def overlay(self, stored: Mapping[str, Any]) -> PricePlan:
        """This plan with a tenant's stored plan on top. Fields it does not know, or values
        it cannot read (a plan stored before plans were validated), leave the default."""
        changes: dict[str, Any] = {}
        for name in PLAN_FIELDS:
            value = stored.get(name)
            if value is None:
                continue
            if name == "name":
                if isinstance(value, str):
                    changes[name] = value
                continue
            try:
                changes[name] = parse_price(name, value)
            except InvalidPlanError:
                continue
        return replace(self, **changes)

    def to_json(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {"name": self.name}
        for f in fields(self):
            if f.name != "name":
                out[f.name] = price_text(getattr(self, f.name))
        return out


@dataclass(frozen=True, slots=True)
class LineItem:
    item: str
    unit: str
    # The exact quantity is count / per_unit units.
    count: int
    per_unit: int
    unit_price_usd: Decimal
    amount_usd: Decimal

    @property
    def quantity(self) -> Decimal:
        with localcontext() as ctx:
            ctx.prec = 60
            exact = Decimal(self.count) / Decimal(self.per_unit)
            # In the wide context too: the default one fails past 28 digits.
            return exact.quantize(QUANTITY, rounding=ROUND_HALF_EVEN)

    def to_json(self) -> dict[str, str]:
        return {
            "item": self.item,
            "unit": self.unit,
            "quantity": format(self.quantity, "f"),
            "unit_price_usd": price_text(self.unit_price_usd),
            "amount_usd": format(self.amount_usd, "f"),
        }


# (item, unit, counter, counter units per billed unit, price field)
ITEMS: tuple[tuple[str, str, str, int, str], ...] = (
    ("data_in", "GB", "bytes_in", GB, "usd_per_gb_in"),
    ("data_out", "GB", "bytes_out", GB, "usd_per_gb_out"),
    (
        "storage",
        "GB-month",
        "stored_byte_seconds",
        GB * SECONDS_PER_HOUR * HOURS_PER_MONTH,
        "usd_per_gb_month_stored",
    ),
    ("requests", "million requests", "requests", 10**6, "usd_per_million_requests"),
    (
        "partitions",
        "partition-hour",
        "partition_seconds",
        SECONDS_PER_HOUR,
        "usd_per_partition_hour",
    ),
)


def amount(count: int, per_unit: int, unit_price: Decimal) -> Decimal:
    """``count / per_unit`` units at ``unit_price``, rounded once, half up, to the cent."""
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(count) * unit_price / Decimal(per_unit)
        return exact.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Bill:
    usage: UsageCounters
    plan: PricePlan
    line_items: tuple[LineItem, ...]

    @property
    def total_usd(self) -> Decimal:
        with localcontext() as ctx:
            ctx.prec = 60  # a sum past 28 digits would be rounded in the default context
            return sum((item.amount_usd for item in self.line_items), Decimal("0.00"))


def price(usage: UsageCounters, plan: PricePlan) -> Bill:
    items = []
    for item, unit, counter, per_unit, price_field in ITEMS:
        count = getattr(usage, counter)
        unit_price = getattr(plan, price_field)
        items.append(
            LineItem(item, unit, count, per_unit, unit_price, amount(count, per_unit, unit_price))
        )
    return Bill(usage, plan, tuple(items))


def hours_text(seconds: int) -> str:
    with localcontext() as ctx:
        ctx.prec = 60
        hours = Decimal(seconds) / SECONDS_PER_HOUR
        return format(hours.quantize(HOURS_SHOWN, rounding=ROUND_HALF_EVEN), "f")


def usage_json(usage: UsageCounters) -> dict[str, int | str]:
    """The usage object of the API: the counters, with the two time integrals also in
    hours (decimal strings, to six places; the seconds are exact)."""
    return {
        "requests": usage.requests,
        "records_in": usage.records_in,
        "records_out": usage.records_out,
        "bytes_in": usage.bytes_in,
        "bytes_out": usage.bytes_out,
        "stored_byte_hours": hours_text(usage.stored_byte_seconds),
        "partition_hours": hours_text(usage.partition_seconds),
        "stored_byte_seconds": usage.stored_byte_seconds,
        "partition_seconds": usage.partition_seconds,
    }


def bill_json(bill: Bill) -> dict[str, Any]:
    return {
        "usage": usage_json(bill.usage),
        "plan": bill.plan.to_json(),
        "line_items": [item.to_json() for item in bill.line_items],
        "total_usd": format(bill.total_usd, "f"),
    }


def read_plan_file(path: str) -> PricePlan:
    """The default price plan from a JSON file (``--price-plan``): prices it leaves out
    keep the built-in ones."""
    try:
        given = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return PricePlan.from_json(given)
    except InvalidPlanError as exc:
        raise ValueError(f"{path}: {exc.message}") from None
