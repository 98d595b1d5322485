"""Choosing the catalog: its URL, ``eventbus catalog create-tables`` against moto's DynamoDB,
and what the commands say when DynamoDB cannot be reached (real processes throughout)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aioboto3
import aiohttp
import pytest

from partitions.catalog_dynamodb.tables import TTL_TABLES, TableNames
from partitions.catalog_sqlite import SqliteCatalog
from partitions.catalog_url import (
    DEFAULT_CATALOG_URL,
    DynamoDbUrl,
    SqliteUrl,
    parse_catalog_url,
)
from tests.dynamodb import new_table_names
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the URL -----------------------------------------------------------------------------------


def test_the_default_is_the_sqlite_file_in_the_data_dir() -> None:
    assert DEFAULT_CATALOG_URL == SqliteUrl("catalog.sqlite3")
    assert DEFAULT_CATALOG_URL.file(Path("/srv/data")) == Path("/srv/data/catalog.sqlite3")
    assert str(DEFAULT_CATALOG_URL) == "sqlite://catalog.sqlite3"


def test_sqlite_paths_are_relative_to_the_data_dir_unless_absolute() -> None:
    relative = parse_catalog_url("sqlite://meta/cat.db")
    absolute = parse_catalog_url("sqlite:///var/lib/eventbus/cat.db")
    assert isinstance(relative, SqliteUrl) and isinstance(absolute, SqliteUrl)
    assert relative.file(Path("/d")) == Path("/d/meta/cat.db")
    assert absolute.file(Path("/d")) == Path("/var/lib/eventbus/cat.db")


def test_dynamodb_tables_come_from_the_prefix_and_the_overrides() -> None:
    url = parse_catalog_url("dynamodb://bus-prod?usage=billing.usage&catalog=shared-catalog")
    assert isinstance(url, DynamoDbUrl)
    assert url.names == TableNames(
        catalog="shared-catalog",
        leases="bus-prod-leases",
        usage="billing.usage",
        answers="bus-prod-answers",
    )
    # Said back in one order, whatever the order given.
    assert str(url) == "dynamodb://bus-prod?catalog=shared-catalog&usage=billing.usage"
    assert parse_catalog_url(str(url)) == url
    assert parse_catalog_url("dynamodb://bus").names == TableNames.from_prefix("bus")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("catalog.sqlite3", "sqlite://PATH or dynamodb://PREFIX"),
        ("postgres://db/x", "unknown catalog scheme 'postgres'"),
        ("sqlite://", "sqlite:// needs a path"),
        ("dynamodb://", "needs a table prefix"),
        ("dynamodb://?catalog=abc", "needs a table prefix"),
        ("dynamodb://bus prod", "may hold only"),
        ("dynamodb://bus:8000", "may hold only"),
        ("dynamodb://bus/extra", "dynamodb://PREFIX[?KIND=TABLE&...]"),
        ("dynamodb://bus?tables=x", "no table kind 'tables'"),
        ("dynamodb://bus?usage=a&usage=b", "named twice"),
        ("dynamodb://bus?usage=", "not a DynamoDB table name"),
        ("dynamodb://bus?usage=no/slash", "not a DynamoDB table name"),
        ("dynamodb://bus?usage", "not KIND=TABLE"),
        (f"dynamodb://{'p' * 250}", "not a DynamoDB table name"),
    ],
)
def test_a_bad_url_says_what_is_allowed(text: str, complaint: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_catalog_url(text)
    assert complaint in str(refused.value)


# --- create-tables -----------------------------------------------------------------------------


async def _tables(endpoint: str, names: TableNames) -> dict[str, tuple[str, str]]:
    """Each table's status and TTL status, by name."""
    out = {}
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint) as client:
        for name in names.all().values():
            table = (await client.describe_table(TableName=name))["Table"]
            ttl = await client.describe_time_to_live(TableName=name)
            out[name] = (table["TableStatus"], ttl["TimeToLiveDescription"]["TimeToLiveStatus"])
    return out


async def test_create_tables_makes_the_four_tables_once(dynamodb_endpoint: str) -> None:
    names = new_table_names()
    prefix = names.catalog.removesuffix("-catalog")
    env = {"AWS_ENDPOINT_URL": dynamodb_endpoint}
    first = _cli("catalog", "create-tables", f"dynamodb://{prefix}", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{name}: created" for name in names.all().values()]
    tables = await _tables(dynamodb_endpoint, names)
    assert {status for status, _ in tables.values()} == {"ACTIVE"}
    assert {name for name, (_, ttl) in tables.items() if ttl == "ENABLED"} == {
        names.of(kind) for kind in TTL_TABLES
    }
    again = _cli("catalog", "create-tables", f"dynamodb://{prefix}", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{name}: already there" for name in names.all().values()]
    assert await _tables(dynamodb_endpoint, names) == tables


async def test_create_tables_names_tables_as_the_url_says(dynamodb_endpoint: str) -> None:
    prefix = new_table_names().catalog.removesuffix("-catalog")
    usage = f"{prefix}-billing"
    done = _cli(
        "catalog",
        "create-tables",
        f"dynamodb://{prefix}?usage={usage}",
        env={"AWS_ENDPOINT_URL": dynamodb_endpoint},
    )
    assert done.returncode == 0, done.stderr
    assert f"{usage}: created" in done.stdout.splitlines()
    names = TableNames.from_prefix(prefix, {"usage": usage})
    assert set(await _tables(dynamodb_endpoint, names)) == set(names.all().values())


def test_create_tables_without_dynamodb_says_so_in_one_line(dynamodb_endpoint: str) -> None:
    port = closed_port()
    started = time.monotonic()
    done = _cli(
        "catalog",
        "create-tables",
        "dynamodb://nowhere",
        env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"eventbus: cannot reach DynamoDB at http://127.0.0.1:{port}")
    assert "dynamodb://nowhere" in lines[0]
    assert "AWS_ENDPOINT_URL" in lines[0]


def test_create_tables_is_for_dynamodb_only(tmp_path: Path) -> None:
    done = _cli("catalog", "create-tables", "sqlite://catalog.sqlite3")
    assert done.returncode == 1
    assert "made by the server at its first start" in done.stderr
    refused = _cli("catalog", "create-tables", "dynamodb://")
    assert refused.returncode == 2
    assert "needs a table prefix" in refused.stderr


def test_backup_of_a_dynamodb_catalog_says_it_does_not_apply(tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite3"
    for args, env in [
        (["--catalog", "dynamodb://bus"], {}),
        ([], {"EVENTBUS_CATALOG": "dynamodb://bus"}),
    ]:
        done = _cli("catalog", "backup", str(copy), "--data-dir", str(tmp_path), *args, env=env)
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1
        assert "dynamodb://bus is in DynamoDB" in done.stderr
        assert not copy.exists()


async def test_backup_copies_the_sqlite_file_the_url_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    catalog = await SqliteCatalog.open(data / "meta" / "bus.db")
    try:
        await catalog.create_tenant("acme")
    finally:
        await catalog.close()
    copy = tmp_path / "copy.sqlite3"
    default = _cli("catalog", "backup", str(copy), "--data-dir", str(data))
    assert default.returncode == 1
    assert "no catalog at" in default.stderr
    done = _cli(
        "catalog", "backup", str(copy), "--data-dir", str(data), "--catalog", "sqlite://meta/bus.db"
    )
    assert done.returncode == 0, done.stderr
    copied = await SqliteCatalog.open(copy)
    try:
        assert [t.name for t in await copied.list_tenants()] == ["acme"]
    finally:
        await copied.close()


# --- the server's SQLite file ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["relative", "absolute"])
async def test_the_server_keeps_its_catalog_where_the_url_says(tmp_path: Path, where: str) -> None:
    data = tmp_path / "data"
    file = data / "meta" / "bus.db" if where == "relative" else tmp_path / "elsewhere" / "bus.db"
    url = "sqlite://meta/bus.db" if where == "relative" else f"sqlite://{file}"
    server = ServerProcess(data, env={"EVENTBUS_CATALOG": url})
    await asyncio.to_thread(server.start)
    try:
        key = server.keys["EVENTBUS_API_KEY"]
        async with aiohttp.ClientSession() as session:
            async with session.put(
                f"{server.url}/v1/topics/orders", headers={"Authorization": f"Bearer {key}"}
            ) as answer:
                assert answer.status == 201
    finally:
        assert await asyncio.to_thread(server.stop) == 0, server.stderr()[-3000:]
    assert not (data / "catalog.sqlite3").exists()
    catalog = await SqliteCatalog.open(file)
    try:
        assert [t.name for t in await catalog.list_topics("default")] == ["orders"]
    finally:
        await catalog.close()
