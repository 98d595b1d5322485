"""``eventbus tenants`` and ``eventbus usage`` against a real server, with the admin key the
server's first start wrote to its data dir."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.cli_tools import api, eventbus, ok, text
from tests.servers import ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.client_side("the operator commands' arguments and output"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("cli-admin") / "data").start()
    yield process
    assert process.stop() == 0


def as_tenant(server: ServerProcess, key: str) -> list[str]:
    return ["--url", server.url, "--api-key", key]


def test_tenants_create_list_describe_and_delete(server: ServerProcess) -> None:
    created = api(
        server, "tenants", "create", "acme", "--quota", "max_topics=5", "--plan", "name=pro"
    )
    assert created["name"] == "acme" and created["quota_overrides"] == {"max_topics": 5}
    assert created["plan"] == {"name": "pro"} and created["api_key"].startswith("ebk_")
    # The first key is a full key of the new tenant.
    ok(
        eventbus(
            server, "topics", "create", "orders", connect=as_tenant(server, created["api_key"])
        )
    )

    listed = api(server, "tenants", "list")
    assert [t["name"] for t in listed] == ["acme", "default"]
    rows = text(server, "tenants", "list").splitlines()
    assert rows[0].split() == ["TENANT", "CREATED", "PLAN", "QUOTA", "OVERRIDES"]
    acme = rows[1].split()
    assert acme[0] == "acme" and acme[-2:] == ["pro", "max_topics=5"]

    described = api(server, "tenants", "describe", "acme")
    assert described["in_use"]["topics"] == 1 and described["quotas"]["max_topics"] == 5
    lines = text(server, "tenants", "describe", "acme").splitlines()
    assert next(line for line in lines if line.startswith("max_topics")).split() == [
        "max_topics",
        "5",
        "tenant",
        "1",
    ]

    human = text(server, "tenants", "create", "shortlived")
    assert "api key: ebk_" in human and "shown this once" in human
    assert api(server, "tenants", "delete", "acme") == {
        "name": "acme",
        "deleted_topics": ["orders"],
    }
    assert text(server, "tenants", "delete", "shortlived") == (
        "deleted tenant shortlived and its topics: none\n"
    )
    assert [t["name"] for t in api(server, "tenants", "list")] == ["default"]
    gone = eventbus(server, "tenants", "describe", "acme")
    assert gone.returncode == 1 and b"tenant_not_found" in gone.stderr


def test_keys_create_list_and_revoke(server: ServerProcess) -> None:
    ok(eventbus(server, "tenants", "create", "keyed"))
    full = api(server, "tenants", "keys", "create", "keyed")
    ok(eventbus(server, "topics", "create", "events", connect=as_tenant(server, full["api_key"])))
    reader = api(
        server, "tenants", "keys", "create", "keyed", "--role", "consume", "--topic", "events"
    )
    assert reader["scope"] == {"role": "consume", "topics": ["events"]}
    # A consume key may not produce.
    refused = eventbus(
        server, "produce", "events", stdin=b"x\n", connect=as_tenant(server, reader["api_key"])
    )
    assert refused.returncode == 1 and b"out_of_scope" in refused.stderr

    keys = api(server, "tenants", "keys", "list", "keyed")
    assert {k["key_id"] for k in keys} >= {full["key_id"], reader["key_id"]}
    assert all("api_key" not in k for k in keys)
    rows = text(server, "tenants", "keys", "list", "keyed").splitlines()
    assert rows[0].split() == ["KEY", "ID", "ROLE", "TOPICS", "CREATED", "LAST", "USED"]
    assert next(r for r in rows if r.startswith(reader["key_id"])).split()[1:3] == [
        "consume",
        "events",
    ]

    revoked = text(server, "tenants", "keys", "revoke", "keyed", reader["key_id"])
    assert revoked == f"revoked key {reader['key_id']} of tenant keyed\n"
    after = eventbus(server, "topics", "list", connect=as_tenant(server, reader["api_key"]))
    assert after.returncode == 1 and b"unauthorized" in after.stderr
    again = eventbus(server, "tenants", "keys", "revoke", "keyed", reader["key_id"])
    assert again.returncode == 1 and b"api_key_not_found" in again.stderr


def test_quotas_and_plan_set(server: ServerProcess) -> None:
    ok(eventbus(server, "tenants", "create", "priced", "--quota", "max_topics=3"))
    changed = api(
        server, "tenants", "quotas", "set", "priced", "requests_per_s=200", "max_topics=default"
    )
    assert changed["quota_overrides"] == {"requests_per_s": 200}
    assert changed["quotas"]["requests_per_s"] == 200
    unlimited = api(server, "tenants", "quotas", "set", "priced", "max_partitions=unlimited")
    assert unlimited["quota_overrides"] == {"requests_per_s": 200, "max_partitions": None}

    planned = api(server, "tenants", "plan", "set", "priced", "usd_per_gb_in=0.08", "name=pro")
    assert planned["plan"] == {"usd_per_gb_in": "0.08", "name": "pro"}
    dropped = text(server, "tenants", "plan", "set", "priced", "name=none")
    assert '{"usd_per_gb_in":"0.08"}' in dropped

    bad = eventbus(server, "tenants", "quotas", "set", "priced", "bogus=1")
    assert bad.returncode == 2 and b"expected NAME=VALUE" in bad.stderr
    refused = eventbus(server, "tenants", "plan", "set", "priced", "usd_per_gb_in=cheap")
    assert refused.returncode == 1 and b"invalid_plan" in refused.stderr


def test_the_admin_key_comes_from_flags_environment_or_the_data_dir(
    server: ServerProcess, tmp_path: Path
) -> None:
    admin = server.keys["EVENTBUS_ADMIN_KEY"]
    elsewhere = ["--url", server.url, "--data-dir", str(tmp_path)]
    assert (
        eventbus(server, "tenants", "list", connect=[*elsewhere, "--admin-key", admin]).returncode
        == 0
    )
    from_env = eventbus(
        server, "tenants", "list", connect=elsewhere, env={"EVENTBUS_ADMIN_KEY": admin}
    )
    assert from_env.returncode == 0
    none = eventbus(server, "tenants", "list", connect=elsewhere)
    assert none.returncode == 1 and b"no admin key" in none.stderr
    assert b"--admin-key" in none.stderr
    tenant_key = server.keys["EVENTBUS_API_KEY"]
    forbidden = eventbus(server, "tenants", "list", connect=[*elsewhere, "--admin-key", tenant_key])
    assert forbidden.returncode == 1 and b"forbidden" in forbidden.stderr


def test_usage_shows_line_items_and_totals(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "billed"))
    ok(eventbus(server, "produce", "billed", stdin=b"".join(b"r%d\n" % n for n in range(50))))
    bill = api(server, "usage")
    assert bill["usage"]["records_in"] >= 50
    items = [i["item"] for i in bill["line_items"]]
    assert items == ["data_in", "data_out", "storage", "requests", "partitions"]

    lines = text(server, "usage").splitlines()
    assert lines[0].startswith("usage from ")
    header = next(n for n, line in enumerate(lines) if line.startswith("ITEM"))
    shown = [line.split() for line in lines[header + 1 :]]
    assert [row[0] for row in shown] == [*items, "total"]
    assert shown[-1] == ["total", bill["total_usd"]]
    data_in = next(i for i in bill["line_items"] if i["item"] == "data_in")
    assert shown[0][-3:] == [data_in["quantity"], data_in["unit_price_usd"], data_in["amount_usd"]]

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    since_midnight = api(server, "usage", "--from", today)
    assert since_midnight["from"] == f"{today}T00:00:00Z"
    bad = eventbus(server, "usage", "--from", "yesterday")
    assert bad.returncode == 1 and b"invalid_parameter" in bad.stderr

    everyone = api(server, "usage", "--all")
    assert "default" in [t["tenant"] for t in everyone["tenants"]]
    summary = text(server, "usage", "--all").splitlines()
    assert summary[0].startswith("usage of every tenant from ")
    assert summary[-1].split() == ["total", everyone["total_usd"]]
    one = api(server, "usage", "--tenant", "default")
    assert [t["tenant"] for t in one["tenants"]] == ["default"]
