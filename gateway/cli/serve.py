"""``eventbus serve``: its flags, generated from the server's settings, and starting it.

Each setting of :class:`~gateway.config.ServerConfig` is one flag (``gateway/settings.py``
says how it is named), whose default comes from its ``EVENTBUS_...`` environment variable
when that is set, else from the field: a flag given on the command line wins over both.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import Clocks, ServerConfig
from gateway.processes.role import WorkerRole
from gateway.settings import ENV_PREFIX, Flag, flags, say, setting_of
from partitions.catalog_url import DynamoDbUrl
from partitions.errors import (
    CatalogTablesMissingError,
    CatalogUnavailableError,
    InvalidInputError,
)
from tiered_storage.store_url import parse_store_url

# What a worker process runs, with the server's command line: ``main`` of the command
# line unless a program that wraps the server (a benchmark's profiler, a test's clocks)
# hands in its own.
WorkerMain = Callable[[Sequence[str]], int]


def add_serve_parser(commands: Any) -> argparse.ArgumentParser:
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the server with embedded defaults",
        description="Every flag can also be set by its environment variable, named in its "
        "help; a flag given on the command line wins.",
    )
    sections: dict[str, Any] = {}
    for flag in flags(ServerConfig):
        section = flag.section
        if section not in sections:
            sections[section] = serve.add_argument_group(section)
        _add_flag(sections[section], flag)
    return serve


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A setting's parser as argparse wants it: its complaint becomes the error shown."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value {text!r}") from None

    return convert


def _add_flag(group: Any, flag: Flag) -> None:
    setting = flag.setting
    env = os.environ.get(flag.env)
    # A group's own flag reads a file, which none is by default.
    shown = say(None if setting.prefix is not None else flag.default, setting)
    text = f"{setting.help} [default: {shown}; env {flag.env}]".replace("%", "%%")
    if setting.switch:
        given = setting.parse(env) if env is not None else flag.default
        group.add_argument(
            flag.option, dest=flag.dest, action="store_true", default=given, help=text
        )
        return
    # Members of a group, and a group's file, are applied only when given: their absence
    # keeps what the group has (the file's prices, or the defaults).
    grouped = len(flag.path) > 1 or setting.prefix is not None
    fallback = None if grouped else flag.default
    group.add_argument(
        flag.option,
        dest=flag.dest,
        type=_typed(setting.parse),
        # A string default goes through ``type`` too, so the environment is checked alike.
        default=env if env is not None else fallback,
        metavar=setting.metavar,
        help=text,
    )


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def build_config(args: argparse.Namespace) -> ServerConfig:
    """The settings the flags and the environment give."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ServerConfig):
        setting = setting_of(field)
        if setting is None:
            continue
        if setting.prefix is not None:
            base = getattr(args, field.name, None) if setting.has_flag else None
            if base is None:
                base = getattr(ServerConfig(), field.name)
            given = {}
            for member in dataclasses.fields(base):
                value = getattr(args, f"{field.name}_{member.name}", None)
                if setting_of(member) is not None and value is not None:
                    given[member.name] = value
            values[field.name] = dataclasses.replace(base, **given)
        elif setting.has_flag:
            values[field.name] = getattr(args, field.name)
        else:
            raw = os.environ.get(env_name(field.name))
            values[field.name] = setting.parse(raw) if raw else None
    return ServerConfig(**values)


def check_config(parser: argparse.ArgumentParser, config: ServerConfig) -> None:
    """What one flag's parser cannot see: settings that go together, files that exist."""
    if bool(config.tls_cert) != bool(config.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for path in (config.tls_cert, config.tls_key):
        if path is not None and not Path(path).is_file():
            parser.error(f"no such file: {path}")
    if config.object_store:
        try:
            parse_store_url(config.object_store)
        except InvalidInputError as exc:
            parser.error(exc.message)


def serve(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str],
    *,
    clocks: Clocks,
    worker_main: WorkerMain,
) -> int:
    config = build_config(args)
    check_config(parser, config)
    role = WorkerRole.from_environment()
    logs.configure(config.log_level, worker=None if role is None else role.index)
    # A process killed by a fault (a crash in C code, SIGSEGV, SIGABRT) writes every
    # thread's Python stack to the log first, instead of vanishing without a word.
    faulthandler.enable()
    try:
        if role is not None:
            from gateway.wiring.serve import run_worker

            return run_worker(config, role, clocks)
        workers = (os.cpu_count() or 1) if config.workers is None else config.workers
        if workers == 0:
            from gateway.wiring.serve import run

            return run(config, clocks)
        # The supervisor loads none of the server: its workers start sooner.
        from gateway.processes.supervisor import run_supervisor

        return run_supervisor(
            config, argv, workers, worker_main, preload=partial(_load_server, config)
        )
    except (CatalogUnavailableError, CatalogTablesMissingError) as exc:
        # The catalog cannot be reached at start, or its tables are missing: what, where
        # and what to do, in one line (no traceback: nothing is wrong with the server).
        print(f"eventbus: {exc.message}", file=sys.stderr, flush=True)
        return 1


def _load_server(config: ServerConfig) -> object:
    """What the supervisor's spawner loads once, so that every worker it forks starts with
    the server already in memory (with it, the DynamoDB store when that is the catalog)."""
    import gateway.wiring.serve

    if isinstance(config.catalog, DynamoDbUrl):
        import partitions.catalog_dynamodb  # noqa: F401 - loaded for the forks

    return gateway.wiring.serve
