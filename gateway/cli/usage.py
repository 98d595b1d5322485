"""``eventbus usage``: a tenant's metered usage and bill as a table of line items.

With a tenant key: that tenant's (``GET /v1/usage``). With ``--all`` or ``--tenant``: every
tenant's, or one's, with the admin key (``GET /v1/admin/usage``). ``--from`` and ``--to``
are whole UTC hours in RFC 3339 (``2026-11-05T13:00:00Z``) or days (``2026-11-05``, its
midnight); left out, the server's defaults (this month so far).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from gateway.cli.commands import ADMIN_KEY, API_KEY, connection_options
from gateway.cli.output import show, size, table
from gateway.client import Client

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HEADER = ["ITEM", "UNIT", "QUANTITY", "UNIT PRICE USD", "AMOUNT USD"]


def _hour(text: str) -> str:
    """An hour as the API takes it; a bare day is its midnight, UTC."""
    return f"{text}T00:00:00Z" if _DAY.fullmatch(text) else text


def add_usage_parser(commands: Any) -> None:
    usage = commands.add_parser(
        "usage",
        parents=[connection_options(API_KEY, ADMIN_KEY)],
        help="metered usage and the bill, as line items and a total",
        description="The tenant's usage and bill over a period of whole UTC hours (tenant "
        "key); with --all or --tenant, every tenant's or one's (admin key).",
    )
    usage.add_argument(
        "--from",
        dest="start",
        type=_hour,
        metavar="TIME",
        help="first hour, e.g. 2026-11-05T13:00:00Z or 2026-11-05 (default: start of month)",
    )
    usage.add_argument(
        "--to",
        dest="end",
        type=_hour,
        metavar="TIME",
        help="the hour after the last (excluded; default: after the current hour)",
    )
    whose = usage.add_mutually_exclusive_group()
    whose.add_argument(
        "--all", action="store_true", help="every tenant's usage (admin key), deleted ones too"
    )
    whose.add_argument("--tenant", help="this tenant's usage (admin key)")


def needs_admin_key(args: argparse.Namespace) -> bool:
    return bool(args.all or args.tenant)


def _bill_table(bill: Any) -> str:
    rows: list[list[object]] = [
        [i["item"], i["unit"], i["quantity"], i["unit_price_usd"], i["amount_usd"]]
        for i in bill["line_items"]
    ]
    rows.append(["total", "", "", "", bill["total_usd"]])
    counters = bill.get("usage", {})
    measured = (
        f"requests {counters.get('requests', 0):,}, "
        f"records in {counters.get('records_in', 0):,} ({size(counters.get('bytes_in'))}), "
        f"records out {counters.get('records_out', 0):,} ({size(counters.get('bytes_out'))}), "
        f"partition-hours {counters.get('partition_hours', '0')}"
    )
    return f"{measured}\n{table(_HEADER, rows)}"


def _period(answer: Any) -> str:
    return f"from {answer['from']} to {answer['to']}"


def _tenant_bill(answer: Any) -> str:
    return f"usage {_period(answer)}\n{_bill_table(answer)}"


def _all_bills(answer: Any) -> str:
    parts = [f"usage of every tenant {_period(answer)}"]
    for bill in answer["tenants"]:
        deleted = " (deleted)" if bill.get("deleted") else ""
        parts.append(f"tenant {bill['tenant']}{deleted}\n{_bill_table(bill)}")
    summary = [[b["tenant"], b["total_usd"]] for b in answer["tenants"]]
    summary.append(["total", answer["total_usd"]])
    parts.append(table(["TENANT", "TOTAL USD"], summary))
    return "\n\n".join(parts)


def usage(args: argparse.Namespace, client: Client) -> int:
    if needs_admin_key(args):
        answer = client.all_usage(args.start, args.end, tenant=args.tenant)
        print_view = _all_bills
    else:
        answer = client.usage(args.start, args.end)
        print_view = _tenant_bill
    show(args, answer, print_view)
    return 0
