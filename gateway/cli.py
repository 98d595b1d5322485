"""The ``eventbus`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ServerConfig
from partitions.catalog_sqlite import CATALOG_FILE, backup_catalog


def _default_data_dir() -> str:
    return os.environ.get("EVENTBUS_DATA_DIR", "./data")


def _env(name: str, default: str | None) -> str | None:
    """Each flag's default comes from EVENTBUS_<FLAG>, so a flag given wins over it."""
    return os.environ.get("EVENTBUS_" + name.upper().replace("-", "_"), default)


def _env_flag(name: str) -> bool:
    value = _env(name, "") or ""
    return value.lower() in ("1", "true", "yes", "on")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 to 65535 (0 picks a free one)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventbus", description="A self-hostable serverless event bus."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server with embedded defaults",
        description="Every flag can also be set by EVENTBUS_<FLAG> (e.g. EVENTBUS_PORT); "
        "a flag given on the command line wins.",
    )
    serve.add_argument("--data-dir", default=_default_data_dir(), help="default ./data")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"), help="default 127.0.0.1")
    serve.add_argument(
        "--port", type=_port, default=_env("port", "8080"), help="default 8080; 0 picks one"
    )
    serve.add_argument("--tls-cert", default=_env("tls-cert", None), help="PEM certificate")
    serve.add_argument("--tls-key", default=_env("tls-key", None), help="PEM private key")
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        default=_env_flag("metrics-public"),
        help="serve /metrics without the admin key",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=_env("max-request-bytes", str(16 * 1024 * 1024)),
        help="largest request body (default 16 MiB)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=int,
        default=_env("max-wait-ms", "30000"),
        help="longest long-poll a read may ask for (default 30000)",
    )
    serve.add_argument(
        "--retention-check-ms",
        type=int,
        default=_env("retention-check-ms", "30000"),
        help="how often retention is applied (default 30000)",
    )
    serve.add_argument(
        "--log-level", default=_env("log-level", "INFO"), help="DEBUG, INFO, WARNING, ERROR"
    )

    catalog = commands.add_parser("catalog", help="work with the catalog of a data directory")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    backup = catalog_commands.add_parser(
        "backup", help="write a consistent copy of the catalog (safe while the server runs)"
    )
    backup.add_argument("path", type=Path, help="file to write the copy to")
    backup.add_argument("--data-dir", default=_default_data_dir(), help="the server's data dir")
    return parser


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.server import run

    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            parser.error(f"no such file: {path}")
    logs.configure(args.log_level.upper())
    config = ServerConfig(
        data_dir=Path(args.data_dir),
        host=args.host,
        port=int(args.port),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        metrics_public=args.metrics_public,
        max_request_bytes=int(args.max_request_bytes),
        max_wait_ms=int(args.max_wait_ms),
        retention_check_ms=int(args.retention_check_ms),
        admin_key=os.environ.get("EVENTBUS_ADMIN_KEY") or None,
    )
    return run(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(parser, args)
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
