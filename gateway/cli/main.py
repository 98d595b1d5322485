"""The ``eventbus`` command line: the server, the catalog's backup and tables, a client for
topics, records and groups, tenants and usage, and its own shell completion."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gateway.cli.catalog import add_catalog_parser, run_catalog_command
from gateway.cli.commands import ADMIN_KEY, CliError, add_client_commands, find_key, groups, topics
from gateway.cli.completion import add_completion_parser, script
from gateway.cli.consume import consume
from gateway.cli.produce import produce
from gateway.cli.serve import WorkerMain, add_serve_parser, serve
from gateway.cli.tenants import add_tenants_parser, tenants
from gateway.cli.usage import add_usage_parser, needs_admin_key, usage
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
    add_tenants_parser(commands)
    add_usage_parser(commands)
    add_completion_parser(commands)
    return parser


CLIENT_COMMANDS = ("topics", "produce", "consume", "groups", "tenants", "usage")


def _run_client_command(args: argparse.Namespace) -> int:
    admin = args.command == "tenants" or (args.command == "usage" and needs_admin_key(args))
    key = find_key(args, ADMIN_KEY) if admin else find_key(args)
    if args.command == "consume":
        return asyncio.run(consume(args, args.url, key))
    compression = None if getattr(args, "compression", "none") == "none" else args.compression
    with Client(args.url, key, timeout=args.timeout, compression=compression) as client:
        if args.command == "topics":
            return topics(args, client)
        if args.command == "groups":
            return groups(args, client)
        if args.command == "tenants":
            return tenants(args, client)
        if args.command == "usage":
            return usage(args, client)
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
    if args.command == "completion":
        sys.stdout.write(script(parser, args.shell))
        return 0
    if args.command in CLIENT_COMMANDS:
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
