"""Price plans and the bill's arithmetic, against values computed by hand.

The worked example is the one in docs/tenancy.md ("Pricing"): the same numbers, so the
page and the code cannot drift apart.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gateway.tenancy.billing import (
    InvalidPlanError,
    PricePlan,
    bill_json,
    parse_plan_patch,
    price,
)
from partitions.catalog import UsageCounters

GB = 10**9
HOUR = 3600

# docs/tenancy.md, "A worked example": a 30-day month (720 hours) of tenant acme.
WORKED_USAGE = UsageCounters(
    requests=12_345_678,
    records_in=250_000_000,
    records_out=600_000_000,
    bytes_in=250 * GB,
    bytes_out=600 * GB,
    stored_byte_seconds=50 * GB * 720 * HOUR,  # 50 GB held all month
    partition_seconds=4 * 720 * HOUR,  # 4 active partitions all month
)
WORKED_PLAN = PricePlan(
    usd_per_gb_in=Decimal("0.10"),
    usd_per_gb_out=Decimal("0.05"),
    usd_per_gb_month_stored=Decimal("0.10"),
    usd_per_million_requests=Decimal("0.20"),
    usd_per_partition_hour=Decimal("0.0015"),
)
# By hand:
#   data in     250 GB x 0.10                         = 25.00
#   data out    600 GB x 0.05                         = 30.00
#   storage     50 GB x 720/730 month x 0.10          = 4.9315...  -> 4.93
#   requests    12.345678 million x 0.20              = 2.4691356  -> 2.47
#   partitions  4 x 720 = 2880 partition-hours x 0.0015 = 4.32
#   total                                             = 66.72
WORKED_AMOUNTS = {
    "data_in": "25.00",
    "data_out": "30.00",
    "storage": "4.93",
    "requests": "2.47",
    "partitions": "4.32",
}


def test_the_worked_example_of_the_docs() -> None:
    answer = bill_json(price(WORKED_USAGE, WORKED_PLAN))
    assert {i["item"]: i["amount_usd"] for i in answer["line_items"]} == WORKED_AMOUNTS
    assert answer["total_usd"] == "66.72"
    quantities = {i["item"]: (i["quantity"], i["unit"]) for i in answer["line_items"]}
    assert quantities == {
        "data_in": ("250.000000000", "GB"),
        "data_out": ("600.000000000", "GB"),
        "storage": ("49.315068493", "GB-month"),
        "requests": ("12.345678000", "million requests"),
        "partitions": ("2880.000000000", "partition-hour"),
    }
    assert answer["usage"]["stored_byte_hours"] == "36000000000000.000000"
    assert answer["usage"]["partition_hours"] == "2880.000000"
    # The same month idle: only the 50 GB and the 4 partitions, 4.93 + 4.32.
    idle = UsageCounters(
        stored_byte_seconds=WORKED_USAGE.stored_byte_seconds,
        partition_seconds=WORKED_USAGE.partition_seconds,
    )
    assert bill_json(price(idle, WORKED_PLAN))["total_usd"] == "9.25"
    assert bill_json(price(UsageCounters(), WORKED_PLAN))["total_usd"] == "0.00"


def test_an_idle_tenant_pays_only_for_what_it_stores() -> None:
    # 1 GB for one hour, nothing else: 1/730 GB-month at 0.10 is 0.000137 USD -> 0.00;
    # 10 TB for a 730-hour month is exactly 10 000 GB-months -> 1000.00.
    hour = bill_json(price(UsageCounters(stored_byte_seconds=GB * HOUR), WORKED_PLAN))
    assert hour["total_usd"] == "0.00"
    month = price(UsageCounters(stored_byte_seconds=10_000 * GB * 730 * HOUR), WORKED_PLAN)
    assert [str(i.amount_usd) for i in month.line_items] == [
        "0.00",
        "0.00",
        "1000.00",
        "0.00",
        "0.00",
    ]
    assert str(month.total_usd) == "1000.00"


def test_each_line_item_is_rounded_once_half_up_to_the_cent() -> None:
    plan = PricePlan(usd_per_million_requests=Decimal("0.20"))
    # 25 000 requests cost exactly 0.005: half up gives 0.01 (half even would give 0.00).
    assert str(price(UsageCounters(requests=25_000), plan).line_items[3].amount_usd) == "0.01"
    assert str(price(UsageCounters(requests=24_999), plan).line_items[3].amount_usd) == "0.00"
    # Two hours of 0.004 each, billed together: rounded once (0.008 -> 0.01), not per hour
    # (0.00 + 0.00).
    one_hour = UsageCounters(requests=20_000)
    assert str(price(one_hour, plan).total_usd) == "0.00"
    assert str(price(one_hour + one_hour, plan).total_usd) == "0.01"


def test_prices_with_ten_decimal_places_are_exact() -> None:
    # 3 bytes at 0.0000000001 USD/GB is far below a cent; 7 * 10^18 bytes at 0.3333333333
    # per GB is 2 333 333 333.1 USD, with no binary float anywhere to blur it.
    plan = PricePlan(usd_per_gb_in=Decimal("0.3333333333"))
    assert str(price(UsageCounters(bytes_in=7 * 10**18), plan).total_usd) == "2333333333.10"
    tiny = PricePlan(usd_per_gb_in=Decimal("0.0000000001"))
    assert str(price(UsageCounters(bytes_in=3), tiny).total_usd) == "0.00"


def test_quantities_and_hours_past_28_digits_are_exact() -> None:
    """Decimal's default context keeps 28 digits; rounding there would fail (or blur) a
    quantity that has more, so every step uses the wide context."""
    usage = UsageCounters(partition_seconds=HOUR * 10**23, requests=10**33 + 1)
    plan = PricePlan(
        usd_per_partition_hour=Decimal("0.0015"), usd_per_million_requests=Decimal("0.20")
    )
    answer = bill_json(price(usage, plan))
    assert answer["usage"]["partition_hours"] == "1" + "0" * 23 + ".000000"
    items = {item["item"]: item for item in answer["line_items"]}
    assert items["partitions"]["quantity"] == "1" + "0" * 23 + ".000000000"
    assert items["partitions"]["amount_usd"] == "15" + "0" * 19 + ".00"
    assert items["requests"]["quantity"] == "1" + "0" * 27 + ".000001000"
    assert items["requests"]["amount_usd"] == "2" + "0" * 26 + ".00"
    assert answer["total_usd"] == "2000001" + "5" + "0" * 19 + ".00"


def test_plans_are_validated_and_stored_as_exact_text() -> None:
    assert parse_plan_patch(
        {
            "name": "pro",
            "usd_per_gb_in": "0.080",
            "usd_per_gb_out": 0.04,
            "usd_per_gb_month_stored": 2,
        }
    ) == {
        "name": "pro",
        "usd_per_gb_in": "0.08",
        "usd_per_gb_out": "0.04",
        "usd_per_gb_month_stored": "2",
    }
    assert parse_plan_patch({"usd_per_gb_in": None}) == {"usd_per_gb_in": None}
    assert parse_plan_patch({"usd_per_partition_hour": "1000000"}) == {
        "usd_per_partition_hour": "1000000"
    }
    bad: list[Any] = [
        [],
        {"tier": "pro"},
        {"usd_per_gb_in": "-0.01"},
        {"usd_per_gb_in": "1000000.01"},
        {"usd_per_gb_in": "0.00000000001"},  # eleven decimal places
        {"usd_per_gb_in": "NaN"},
        {"usd_per_gb_in": "Infinity"},
        {"usd_per_gb_in": "ten"},
        {"usd_per_gb_in": ""},
        {"usd_per_gb_in": True},
        {"usd_per_gb_in": [1]},
        {"usd_per_gb_in": float("inf")},
        {"name": ""},
        {"name": 5},
        {"name": "x" * 65},
    ]
    for given in bad:
        with pytest.raises(InvalidPlanError):
            parse_plan_patch(given)


def test_a_tenant_plan_overlays_the_default_plan() -> None:
    default = PricePlan.from_json({"usd_per_gb_in": "0.09", "name": "standard"})
    assert default.usd_per_gb_in == Decimal("0.09") and default.usd_per_gb_out == Decimal("0.05")
    tenant = default.overlay({"usd_per_gb_out": "0.01", "name": "pro"})
    assert tenant.to_json() == {
        "name": "pro",
        "usd_per_gb_in": "0.09",
        "usd_per_gb_out": "0.01",
        "usd_per_gb_month_stored": "0.1",
        "usd_per_million_requests": "0.2",
        "usd_per_partition_hour": "0.0015",
    }
    # A plan stored before plans were validated keeps the defaults for what it cannot say.
    assert default.overlay({"tier": "gold", "usd_per_gb_in": "cheap"}) == default
    with pytest.raises(InvalidPlanError):
        PricePlan.from_json({"usd_per_gb_in": "-1"})
