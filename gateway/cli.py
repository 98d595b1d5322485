"""The ``eventbus`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus", description="A self-hostable serverless event bus."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server with embedded defaults")
    serve.add_argument("--data-dir", default="./data", help="where partitions live")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # The partition log engine is in place; the HTTP API that serves it is the
        # gateway's to add. Say so plainly rather than pretend to serve.
        print(
            "eventbus: the HTTP API is not built yet; only the partition log engine is.\n"
            "See docs/partition-log.md and run `make bench` to exercise it.",
            file=sys.stderr,
        )
        return 0
    return 2  # argparse has already refused unknown commands


if __name__ == "__main__":
    sys.exit(main())
