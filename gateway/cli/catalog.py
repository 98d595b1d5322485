"""``eventbus catalog``: a SQLite catalog's backup, and a DynamoDB catalog's tables.

- ``backup PATH``: a consistent copy of the SQLite file, safe while the server runs. A
  DynamoDB catalog is not a file: DynamoDB's own backups (point-in-time recovery, on-demand
  backups) cover it, and the command says so.
- ``create-tables dynamodb://PREFIX``: make the four tables a DynamoDB catalog needs, and
  wait until they are active. Tables already there are left as they are, so running it
  again changes nothing. The endpoint, region and credentials come from the standard AWS
  settings, as for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from gateway.cli.arguments import positive_seconds
from gateway.cli.commands import default_data_dir
from partitions.catalog_url import (
    DEFAULT_CATALOG_URL,
    CatalogUrl,
    DynamoDbUrl,
    SqliteUrl,
    parse_catalog_url,
)

CATALOG_ENV = "EVENTBUS_CATALOG"


def _catalog_url(text: str) -> CatalogUrl:
    try:
        return parse_catalog_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_catalog_parser(commands: Any) -> None:
    catalog = commands.add_parser(
        "catalog",
        help="back up a SQLite catalog, or create a DynamoDB catalog's tables",
        description="The catalog is where the server keeps what exists (tenants, keys, topics, "
        "partitions, groups, usage): a SQLite file in the data directory by default, or "
        "DynamoDB tables (eventbus serve --catalog).",
    )
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    backup = catalog_commands.add_parser(
        "backup",
        help="write a consistent copy of a SQLite catalog (safe while the server runs)",
        description="Write a consistent copy of a SQLite catalog, safe while the server runs. "
        "A DynamoDB catalog is backed up by DynamoDB itself (point-in-time recovery or "
        "on-demand backups).",
    )
    backup.add_argument("path", type=Path, help="file to write the copy to")
    backup.add_argument("--data-dir", default=default_data_dir(), help="the server's data dir")
    backup.add_argument(
        "--catalog",
        type=_catalog_url,
        default=os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG_URL,
        metavar="URL",
        help=f"the server's --catalog (env {CATALOG_ENV}, default {DEFAULT_CATALOG_URL})",
    )
    create = catalog_commands.add_parser(
        "create-tables",
        help="create the DynamoDB tables of a dynamodb:// catalog (again: nothing changes)",
        description="Create the four DynamoDB tables of a catalog (PREFIX-catalog, "
        "PREFIX-leases, PREFIX-usage and PREFIX-answers, or the names the URL gives) and wait "
        "until they are active; tables already there are left as they are. The endpoint, "
        "region and credentials come from the standard AWS settings (AWS_ENDPOINT_URL, "
        "AWS_REGION, the credential chain). Prints each table, created or already there.",
    )
    create.add_argument(
        "url", type=_catalog_url, help="dynamodb://PREFIX[?KIND=TABLE&...], as given to serve"
    )
    create.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds each DynamoDB call may take (default 10)",
    )


def run_catalog_command(args: argparse.Namespace) -> int:
    if args.catalog_command == "backup":
        return _backup(args)
    return _create_tables(args)


def _backup(args: argparse.Namespace) -> int:
    url = args.catalog
    if not isinstance(url, SqliteUrl):
        print(
            f"eventbus: backup copies a SQLite catalog; {url} is in DynamoDB, whose own "
            "backups (point-in-time recovery, on-demand backups) cover it",
            file=sys.stderr,
        )
        return 1
    # Imported here: only this command needs it.
    from partitions.catalog_sqlite import backup_catalog

    source = url.file(Path(args.data_dir))
    try:
        backup_catalog(source, args.path)
    except FileNotFoundError:
        print(f"eventbus: no catalog at {source}", file=sys.stderr)
        return 1
    print(f"eventbus: wrote a copy of {source} to {args.path}")
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    url = args.url
    if not isinstance(url, DynamoDbUrl):
        print(
            f"eventbus: create-tables makes the tables of a dynamodb:// catalog; a SQLite "
            f"catalog ({url}) is made by the server at its first start",
            file=sys.stderr,
        )
        return 1
    try:
        created = asyncio.run(_create(url, args.timeout))
    except _Unreachable as exc:
        print(f"eventbus: {exc}", file=sys.stderr)
        return 1
    for table in url.names.all().values():
        print(f"{table}: {'created' if table in created else 'already there'}")
    return 0


class _Unreachable(Exception):
    """DynamoDB could not be reached, or refused: the one line to print."""


async def _create(url: DynamoDbUrl, timeout_s: float) -> list[str]:
    # Imported here: the AWS libraries take a while to load, and only this command and a
    # server with a DynamoDB catalog need them.
    import aioboto3
    import aiohttp
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from partitions.catalog_dynamodb.tables import create_tables
    from partitions.catalog_url import dynamodb_endpoint

    config = Config(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"mode": "standard", "total_max_attempts": 3},
    )
    where = dynamodb_endpoint()
    try:
        async with aioboto3.Session().client("dynamodb", config=config) as client:
            where = f"{client.meta.endpoint_url} (region {client.meta.region_name})"
            return await create_tables(client, url.names)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise _Unreachable(
            f"DynamoDB at {where} refused to create the tables of {url}: "
            f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        ) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _Unreachable(
            f"cannot reach DynamoDB at {where} to create the tables of {url}: {reason}; "
            "check the AWS endpoint, region and credentials (AWS_ENDPOINT_URL, AWS_REGION)"
        ) from exc
