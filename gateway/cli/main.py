"""The ``eventbus`` command line: the server, the catalog's backup and tables, and a client
for topics, records and groups."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gateway.cli.catalog import add_catalog_parser, run_catalog_command
from gateway.cli.commands import CliError, add_client_commands, api_key, groups, topics
from gateway.cli.consume import consume
from gateway.cli.produce import produce
from gateway.cli.serve import WorkerMain, add_serve_parser, serve
from gateway.client import ApiError, Client, ClientError
from gateway.config import Clocks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus", description="A self-hostable serverless event bus."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(commands)
    add_catalog_parser(commands)
    add_client_commands(commands)
    return parser


def _run_client_command(args: argparse.Namespace) -> int:
    key = api_key(args)
    if args.command == "consume":
        return asyncio.run(consume(args, args.url, key))
    compression = None if getattr(args, "compression", "none") == "none" else args.compression
    with Client(args.url, key, timeout=args.timeout, compression=compression) as client:
        if args.command == "topics":
            return topics(args, client)
        if args.command == "groups":
            return groups(args, client)
        return produce(args, client)


def main(
    argv: Sequence[str] | None = None,
    *,
    clocks: Clocks | None = None,
    worker_main: WorkerMain | None = None,
) -> int:
    """Run a command. A program that wraps the server (a benchmark's profiler, a test that
    moves the server's clocks) passes its ``clocks`` and the ``worker_main`` that every
    worker process runs (default: this function, with the same clocks)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "serve":
        clocks = clocks or Clocks()
        if worker_main is None:

            def worker_main(worker_argv: Sequence[str]) -> int:
                return main(worker_argv, clocks=clocks)

        return serve(parser, args, argv, clocks=clocks, worker_main=worker_main)
    if args.command == "catalog":
        return run_catalog_command(args)
    if args.command in ("topics", "produce", "consume", "groups"):
        try:
            return _run_client_command(args)
        except ApiError as exc:
            print(f"eventbus: {exc.code}: {exc.message}", file=sys.stderr)
        except (ClientError, CliError) as exc:
            print(f"eventbus: {exc}", file=sys.stderr)
        except BrokenPipeError:
            # The reader of stdout went away (e.g. `| head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 2  # argparse has already refused anything else
