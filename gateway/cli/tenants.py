"""``eventbus tenants``: tenants, their keys, quotas and price plans, with the admin key.

Every subcommand is one call of the admin API (``/v1/admin/tenants...``, see docs/api.md);
``--json`` prints its answer as the server gave it. Secrets (a new tenant's first key, a new
key) are printed once, as the server shows them once.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.commands import ADMIN_KEY, connection_options
from gateway.cli.output import fields, show, size, table, when
from gateway.client import Client
from gateway.tenancy.billing import PLAN_FIELDS
from gateway.tenancy.quotas import QUOTA_NAMES
from gateway.tenancy.scopes import Role

# What a tenant uses now (``in_use`` of describe), beside the quota that bounds it.
_IN_USE = {"max_topics": "topics", "max_partitions": "active_partitions"}
_QUOTA_WORDS = {"unlimited": None, "default": "default"}


def _quota_item(text: str) -> tuple[str, int | str | None]:
    name, found, raw = text.partition("=")
    if not found or name not in QUOTA_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(QUOTA_NAMES)}, got {text!r}"
        )
    if raw in _QUOTA_WORDS:
        return name, _QUOTA_WORDS[raw]
    try:
        return name, int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name}: expected a whole number, 'unlimited' or 'default', got {raw!r}"
        ) from None


def _plan_item(text: str) -> tuple[str, str | None]:
    name, found, raw = text.partition("=")
    if not found or name not in PLAN_FIELDS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {', '.join(PLAN_FIELDS)}, got {text!r}"
        )
    # Prices are decimal strings, as the API takes them; "none" drops the tenant's own.
    return name, None if raw == "none" else raw


def add_tenants_parser(commands: Any) -> None:
    admin = connection_options(ADMIN_KEY)
    quota_help = (
        "a quota, NAME=N, NAME=unlimited or NAME=default (repeatable); names: "
        + ", ".join(QUOTA_NAMES)
    )
    plan_help = (
        "a price plan entry, KEY=VALUE, prices in USD as decimals, KEY=none drops the "
        "tenant's own (repeatable); keys: " + ", ".join(PLAN_FIELDS)
    )
    tenants = commands.add_parser(
        "tenants",
        help="create and manage tenants, their keys, quotas and plans (admin key)",
        description="Tenants and their keys, quotas and price plans, through the admin API. "
        "The admin key comes from --admin-key, EVENTBUS_ADMIN_KEY, or the credentials file "
        "the server's first start wrote to its data dir.",
    )
    sub = tenants.add_subparsers(dest="tenants_command", required=True)
    create = sub.add_parser(
        "create", parents=[admin], help="create a tenant and its first key (shown once)"
    )
    create.add_argument("tenant")
    create.add_argument("--quota", type=_quota_item, action="append", default=[], help=quota_help)
    create.add_argument("--plan", type=_plan_item, action="append", default=[], help=plan_help)
    sub.add_parser("list", parents=[admin], help="every tenant")
    describe = sub.add_parser(
        "describe", parents=[admin], help="a tenant's quotas, plan and what it uses"
    )
    describe.add_argument("tenant")
    delete = sub.add_parser(
        "delete", parents=[admin], help="delete a tenant with its keys, topics and data"
    )
    delete.add_argument("tenant")

    keys = sub.add_parser("keys", help="a tenant's API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    key_create = key_commands.add_parser(
        "create", parents=[admin], help="add a key to a tenant (its secret is shown once)"
    )
    key_create.add_argument("tenant")
    key_create.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.FULL.value,
        help="what the key may do (default full)",
    )
    key_create.add_argument(
        "--topic",
        dest="topics",
        action="append",
        default=None,
        metavar="TOPIC",
        help="the only topics the key may use (repeatable; default: all)",
    )
    key_list = key_commands.add_parser("list", parents=[admin], help="a tenant's keys")
    key_list.add_argument("tenant")
    revoke = key_commands.add_parser("revoke", parents=[admin], help="revoke a key")
    revoke.add_argument("tenant")
    revoke.add_argument("key_id")

    quotas = sub.add_parser("quotas", help="a tenant's quota overrides")
    quota_commands = quotas.add_subparsers(dest="quotas_command", required=True)
    quota_set = quota_commands.add_parser(
        "set", parents=[admin], help="set quotas, e.g. requests_per_s=200 max_topics=default"
    )
    quota_set.add_argument("tenant")
    quota_set.add_argument("quotas", type=_quota_item, nargs="+", metavar="NAME=VALUE")

    plan = sub.add_parser("plan", help="a tenant's price plan")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True)
    plan_set = plan_commands.add_parser(
        "set", parents=[admin], help="change a tenant's prices, e.g. usd_per_gb_in=0.08 name=pro"
    )
    plan_set.add_argument("tenant")
    plan_set.add_argument("entries", type=_plan_item, nargs="+", metavar="KEY=VALUE")


def tenant_view(tenant: Any) -> str:
    head = fields(
        [
            ("tenant", tenant["name"]),
            ("created", when(tenant.get("created_ms"))),
            ("version", tenant.get("version")),
            ("plan", tenant.get("plan") or "the server's default prices"),
        ]
    )
    overrides = tenant.get("quota_overrides", {})
    in_use = tenant.get("in_use")
    header = ["QUOTA", "LIMIT", "SOURCE"] + (["IN USE"] if in_use is not None else [])
    rows: list[list[object]] = []
    for name, limit in tenant.get("quotas", {}).items():
        row: list[object] = [name, limit, "tenant" if name in overrides else "default"]
        if in_use is not None:
            if name == "max_stored_bytes":
                row.append(size(in_use.get("stored_bytes")))
            else:
                row.append(in_use.get(_IN_USE.get(name, ""), ""))
        rows.append(row)
    lines = [head, "", table(header, rows), "(a limit of - is unlimited)"]
    if "api_key" in tenant:
        lines += ["", _secret_view(tenant)]
    return "\n".join(lines)


def _secret_view(answer: Any) -> str:
    return fields([("key id", answer["key_id"]), ("api key", answer["api_key"])]) + (
        "\n(the secret is shown this once: keep it now)"
    )


def _tenants_table(tenants: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["name"],
            when(t.get("created_ms")),
            (t.get("plan") or {}).get("name") or ("custom" if t.get("plan") else "default"),
            ", ".join(f"{k}={v}" for k, v in sorted(t.get("quota_overrides", {}).items())) or "-",
        ]
        for t in tenants
    ]
    return table(["TENANT", "CREATED", "PLAN", "QUOTA OVERRIDES"], rows)


def _key_row(key: dict[str, Any]) -> list[object]:
    scope = key.get("scope") or {}
    return [
        key["key_id"],
        scope.get("role"),
        scope.get("topics") or "all",
        when(key.get("created_ms")),
        when(key.get("last_used_ms")),
    ]


_KEY_HEADER = ["KEY ID", "ROLE", "TOPICS", "CREATED", "LAST USED"]


def _keys(args: argparse.Namespace, client: Client) -> None:
    if args.keys_command == "create":
        scope: str | dict[str, Any] = args.role
        if args.topics:
            scope = {"role": args.role, "topics": args.topics}
        show(
            args,
            client.create_key(args.tenant, scope),
            lambda key: table(_KEY_HEADER, [_key_row(key)]) + "\n\n" + _secret_view(key),
        )
    elif args.keys_command == "list":
        show(
            args,
            client.list_keys(args.tenant),
            lambda k: table(_KEY_HEADER, [_key_row(key) for key in k]),
        )
    else:
        client.revoke_key(args.tenant, args.key_id)
        show(
            args,
            {"tenant": args.tenant, "revoked": args.key_id},
            lambda _: f"revoked key {args.key_id} of tenant {args.tenant}",
        )


def tenants(args: argparse.Namespace, client: Client) -> int:
    command = args.tenants_command
    if command == "create":
        created = client.create_tenant(args.tenant, quotas=dict(args.quota), plan=dict(args.plan))
        show(args, created, tenant_view)
    elif command == "list":
        show(args, client.list_tenants(), _tenants_table)
    elif command == "describe":
        show(args, client.describe_tenant(args.tenant), tenant_view)
    elif command == "delete":
        deleted = client.delete_tenant(args.tenant)
        show(
            args,
            deleted,
            lambda d: (
                f"deleted tenant {d['name']} and its topics: "
                + (", ".join(d["deleted_topics"]) or "none")
            ),
        )
    elif command == "keys":
        _keys(args, client)
    elif command == "quotas":
        show(args, client.update_tenant(args.tenant, quotas=dict(args.quotas)), tenant_view)
    else:
        show(args, client.update_tenant(args.tenant, plan=dict(args.entries)), tenant_view)
    return 0
