"""The ``eventbus`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from partitions.catalog_sqlite import CATALOG_FILE, backup_catalog


def _default_data_dir() -> str:
    return os.environ.get("EVENTBUS_DATA_DIR", "./data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus", description="A self-hostable serverless event bus."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server with embedded defaults")
    serve.add_argument("--data-dir", default=_default_data_dir(), help="where partitions live")

    catalog = commands.add_parser("catalog", help="work with the catalog of a data directory")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    backup = catalog_commands.add_parser(
        "backup", help="write a consistent copy of the catalog (safe while the server runs)"
    )
    backup.add_argument("path", type=Path, help="file to write the copy to")
    backup.add_argument("--data-dir", default=_default_data_dir(), help="the server's data dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # The partition log engine and the catalog are in place; the HTTP API that serves
        # them is the gateway's to add. Say so plainly rather than pretend to serve.
        print(
            "eventbus: the HTTP API is not built yet; the partition log engine and the "
            "catalog are.\nSee docs/partition-log.md and docs/architecture.md, and run "
            "`make bench` to exercise the log.",
            file=sys.stderr,
        )
        return 0
    if args.command == "catalog" and args.catalog_command == "backup":
        source = Path(args.data_dir) / CATALOG_FILE
        try:
            backup_catalog(source, args.path)
        except FileNotFoundError:
            print(f"eventbus: no catalog at {source}", file=sys.stderr)
            return 1
        print(f"eventbus: wrote a copy of {source} to {args.path}")
        return 0
    return 2  # argparse has already refused anything else


if __name__ == "__main__":
    sys.exit(main())
