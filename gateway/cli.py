"""The ``eventbus`` command line: the server, and a client for topics, records and groups."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from gateway.auth import CREDENTIALS_FILE
from gateway.billing import PRICE_FIELDS, InvalidPlanError, PricePlan, parse_price
from gateway.client import ApiError, AsyncClient, Client, ClientError, FetchResult
from gateway.config import ServerConfig
from gateway.metering import MAX_FLUSH_MS
from gateway.quotas import QUOTA_NAMES, RATE_QUOTAS, Quotas
from partitions.batch import NewRecord, Record
from partitions.catalog_sqlite import CATALOG_FILE, backup_catalog
from partitions.errors import InvalidInputError
from tiered_storage.store_url import parse_store_url

DEFAULT_URL = "http://127.0.0.1:8080"
# Bounds of one produce request built from stdin, and of one fetch.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_FETCH_RECORDS = 10_000
FETCH_MAX_BYTES = 4 * 1024 * 1024
PROGRESS_EVERY_S = 0.2


class CliError(Exception):
    """A failure reported as one line on stderr, with exit code 1."""


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


def _workers(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError("from 0 (one process) to 256")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


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
        "--autoscale-interval-ms",
        type=_positive_int,
        default=_env("autoscale-interval-ms", "1000"),
        help="how often the autoscaler evaluates every topic (default 1000)",
    )
    serve.add_argument(
        "--log-level", default=_env("log-level", "INFO"), help="DEBUG, INFO, WARNING, ERROR"
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=_env("workers", str(os.cpu_count() or 1)),
        metavar="N",
        help="worker processes, each serving HTTP and owning some partitions (default: the "
        "number of cores; 0 runs everything in this one process)",
    )
    _add_tenancy_flags(serve)
    _add_metering_flags(serve)
    _add_tiering_flags(serve)

    catalog = commands.add_parser("catalog", help="work with the catalog of a data directory")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    backup = catalog_commands.add_parser(
        "backup", help="write a consistent copy of the catalog (safe while the server runs)"
    )
    backup.add_argument("path", type=Path, help="file to write the copy to")
    backup.add_argument("--data-dir", default=_default_data_dir(), help="the server's data dir")
    _add_client_commands(commands)
    return parser


def _quota(name: str) -> Any:
    low = 1 if name in RATE_QUOTAS else 0

    def parse(text: str) -> int | None:
        if text.strip().lower() in ("", "none", "unlimited"):
            return None
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, or 'none'")
        return value

    return parse


def _add_tenancy_flags(serve: argparse.ArgumentParser) -> None:
    for name in QUOTA_NAMES:
        flag = "default-" + name.replace("_", "-")
        serve.add_argument(
            "--" + flag,
            type=_quota(name),
            default=_env(flag, "none"),
            metavar="N",
            help=f"{name} of tenants without their own (default: none, unlimited)",
        )
    serve.add_argument(
        "--max-concurrent-requests",
        type=_positive,
        default=_env("max-concurrent-requests", "256"),
        help="tenant requests in service at once; the rest wait, served fairly (default 64)",
    )
    serve.add_argument(
        "--max-in-service-per-tenant",
        type=_positive,
        default=_env("max-in-service-per-tenant", "128"),
        help="requests of one tenant in service at once (default 16)",
    )
    serve.add_argument(
        "--max-queued-per-tenant",
        type=_positive,
        default=_env("max-queued-per-tenant", "256"),
        help="requests one tenant may have waiting (default 256); past it, 429",
    )


def _price(name: str) -> Any:
    def parse(text: str) -> Decimal:
        try:
            return parse_price(name, text)
        except InvalidPlanError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}")
        return value

    return parse


def _add_metering_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--price-plan",
        default=_env("price-plan", None),
        metavar="FILE",
        help="a JSON file with the default price plan (the --default-usd-per-... flags win)",
    )
    for name in PRICE_FIELDS:
        flag = "default-" + name.replace("_", "-")
        serve.add_argument(
            "--" + flag,
            type=_price(name),
            default=_env(flag, None),
            metavar="USD",
            help=f"{name} of tenants whose plan has none (default {getattr(PricePlan(), name)})",
        )
    serve.add_argument(
        "--usage-flush-ms",
        type=_bounded(10, MAX_FLUSH_MS),
        default=_env("usage-flush-ms", str(MAX_FLUSH_MS)),
        help="how often metered usage is written to the catalog; what a crash may lose "
        f"(default and most {MAX_FLUSH_MS})",
    )
    serve.add_argument(
        "--usage-sample-ms",
        type=_bounded(10, 3_600_000),
        default=_env("usage-sample-ms", "10000"),
        help="how often each tenant's stored bytes and partitions are measured (default 10000)",
    )


def _default_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PricePlan:
    plan = PricePlan()
    if args.price_plan:
        try:
            given = json.loads(Path(args.price_plan).read_text())
            plan = PricePlan.from_json(given)
        except (OSError, ValueError) as exc:
            parser.error(f"--price-plan {args.price_plan}: {exc}")
        except InvalidPlanError as exc:
            parser.error(f"--price-plan {args.price_plan}: {exc.message}")
    prices = {name: getattr(args, "default_" + name) for name in PRICE_FIELDS}
    return replace(plan, **{name: price for name, price in prices.items() if price is not None})


def _add_tiering_flags(serve: argparse.ArgumentParser) -> None:
    tiering = serve.add_argument_group("tiered storage")
    tiering.add_argument(
        "--object-store",
        default=_env("object-store", None),
        metavar="URL",
        help="file://DIR or s3://BUCKET[/PREFIX] (default file://DATA_DIR/objects)",
    )
    tiering.add_argument(
        "--s3-endpoint",
        default=_env("s3-endpoint", None),
        metavar="URL",
        help="S3 endpoint (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS itself)",
    )
    for flag, default, text in (
        ("object-store-timeout-ms", 30_000, "deadline of each object-store call (default 30000)"),
        ("upload-concurrency", 4, "segment uploads at once (default 4)"),
        (
            "max-upload-backlog-bytes",
            4 * 1024**3,
            "bytes waiting for upload past which produce answers 503 (default 4 GiB)",
        ),
        ("upload-retry-max-ms", 30_000, "longest backoff between upload attempts (default 30000)"),
        ("orphan-grace-ms", 3_600_000, "age before leftover objects are deleted (default 1 h)"),
        ("orphan-check-ms", 600_000, "how often leftovers are looked for (default 10 min)"),
        ("read-cache-bytes", 256 * 1024**2, "memory for cold reads' cache (default 256 MiB)"),
        ("read-chunk-bytes", 8 * 1024**2, "bytes per ranged GET of cold data (default 8 MiB)"),
    ):
        tiering.add_argument(
            f"--{flag}", type=_positive, default=_env(flag, str(default)), help=text
        )
    tiering.add_argument(
        "--read-ahead-chunks",
        type=_not_negative,
        default=_env("read-ahead-chunks", "2"),
        help="chunks fetched ahead of a sequential cold reader (default 2; 0: none)",
    )


def _config_item(text: str) -> tuple[str, Any]:
    name, found, raw = text.partition("=")
    if not found or not name:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)  # numbers and null as JSON; anything else is a string
    except ValueError:
        value = raw
    return name, value


def _seek_target(text: str) -> str | dict[str, Any]:
    if text in ("earliest", "latest"):
        return text
    kind, _, rest = text.partition(":")
    try:
        if kind == "timestamp":
            return {"timestamp_ms": int(rest)}
        if kind == "offsets":
            pairs = [item.split("=", 1) for item in rest.split(",") if item]
            if pairs and all(len(pair) == 2 for pair in pairs):
                return {"offsets": [{"partition": int(p), "offset": int(o)} for p, o in pairs]}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected earliest, latest, timestamp:MS or offsets:P=O,P=O")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _add_client_commands(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("EVENTBUS_URL", DEFAULT_URL),
        help=f"server URL (env EVENTBUS_URL, default {DEFAULT_URL})",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("EVENTBUS_API_KEY") or None,
        help="tenant API key (env EVENTBUS_API_KEY; default: the key in DATA_DIR/credentials)",
    )
    group.add_argument(
        "--data-dir",
        default=_default_data_dir(),
        help="where to find the credentials file without a key (env EVENTBUS_DATA_DIR, "
        "default ./data)",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request attempt (default 30)"
    )

    topics = commands.add_parser("topics", help="create, list, describe and delete topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser("create", parents=[connection], help="create a topic")
    create.add_argument("name")
    create.add_argument(
        "--config",
        type=_config_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a topic config key, e.g. retention_ms=86400000 (repeatable)",
    )
    topic_commands.add_parser("list", parents=[connection], help="list every topic")
    describe = topic_commands.add_parser(
        "describe", parents=[connection], help="config and partitions of a topic"
    )
    describe.add_argument("name")
    delete = topic_commands.add_parser(
        "delete", parents=[connection], help="delete a topic and all its data"
    )
    delete.add_argument("name")

    produce = commands.add_parser(
        "produce",
        parents=[connection],
        help="produce stdin, one record per line",
        description="Reads stdin and produces one record per line (values are sent as text). "
        "Lines are sent in batches, in order, one request at a time; a batch goes when it is "
        "full or when --linger-ms passed since its first line.",
    )
    produce.add_argument("topic")
    produce.add_argument(
        "--key-separator",
        metavar="SEP",
        help="split each line at the first SEP into key and value; lines without it are keyless",
    )
    produce.add_argument(
        "--batch-size", type=_positive, default=1000, help="lines per request (default 1000)"
    )
    produce.add_argument(
        "--linger-ms",
        type=int,
        default=100,
        help="send a partial batch this long after its first line (default 100)",
    )
    produce.add_argument(
        "--compression", choices=("zstd", "gzip", "none"), default="none", help="request bodies"
    )

    consume = commands.add_parser(
        "consume",
        parents=[connection],
        help="consume a topic as a member of a group, printing one record per line",
        description="Follows the topic as a member of GROUP and prints each record's value, "
        "one per line. What was printed is committed; on SIGINT, SIGTERM or --max-records "
        "the member commits and leaves the group.",
    )
    consume.add_argument("topic")
    consume.add_argument("--group", required=True, help="consumer group name")
    consume.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new group starts at the beginning (default: at the end)",
    )
    consume.add_argument(
        "--max-records", type=_positive, default=None, help="stop after this many records"
    )
    consume.add_argument("--print-key", action="store_true", help="print the key before the value")
    consume.add_argument(
        "--print-offset", action="store_true", help="print partition and offset first"
    )
    consume.add_argument("--separator", default="\t", help="between printed fields (default a tab)")
    consume.add_argument(
        "--wait-ms",
        type=int,
        default=20_000,
        help="long-poll of each fetch; at most the server's --max-wait-ms (default 20000)",
    )

    groups = commands.add_parser("groups", help="describe and reset consumer groups")
    group_commands = groups.add_subparsers(dest="groups_command", required=True)
    describe_group = group_commands.add_parser(
        "describe", parents=[connection], help="members, commits and lag of a group"
    )
    describe_group.add_argument("topic")
    describe_group.add_argument("group")
    seek = group_commands.add_parser(
        "seek", parents=[connection], help="reset a group's committed offsets (no live members)"
    )
    seek.add_argument("topic")
    seek.add_argument("group")
    seek.add_argument(
        "--to",
        type=_seek_target,
        required=True,
        metavar="TARGET",
        help="earliest, latest, timestamp:MS or offsets:P=O,P=O",
    )


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from gateway import logs
    from gateway.workers import WorkerRole

    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            parser.error(f"no such file: {path}")
    if args.object_store:
        try:
            parse_store_url(args.object_store)
        except InvalidInputError as exc:
            parser.error(exc.message)
    role = WorkerRole.from_environment()
    logs.configure(args.log_level.upper(), worker=None if role is None else role.index)
    # A process killed by a fault (a crash in C code, SIGSEGV, SIGABRT) writes every
    # thread's Python stack to the log first, instead of vanishing without a word.
    faulthandler.enable()
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
        autoscale_interval_ms=int(args.autoscale_interval_ms),
        admin_key=os.environ.get("EVENTBUS_ADMIN_KEY") or None,
        default_quotas=Quotas(**{name: getattr(args, "default_" + name) for name in QUOTA_NAMES}),
        max_concurrent_requests=int(args.max_concurrent_requests),
        max_queued_per_tenant=int(args.max_queued_per_tenant),
        max_in_service_per_tenant=int(args.max_in_service_per_tenant),
        default_plan=_default_plan(parser, args),
        usage_flush_ms=int(args.usage_flush_ms),
        usage_sample_ms=int(args.usage_sample_ms),
        object_store=args.object_store or None,
        s3_endpoint=args.s3_endpoint or None,
        object_store_timeout_ms=int(args.object_store_timeout_ms),
        upload_concurrency=int(args.upload_concurrency),
        max_upload_backlog_bytes=int(args.max_upload_backlog_bytes),
        upload_retry_max_ms=int(args.upload_retry_max_ms),
        orphan_grace_ms=int(args.orphan_grace_ms),
        orphan_check_ms=int(args.orphan_check_ms),
        read_cache_bytes=int(args.read_cache_bytes),
        read_chunk_bytes=int(args.read_chunk_bytes),
        read_ahead_chunks=int(args.read_ahead_chunks),
        **_test_clocks(),
    )
    if role is not None:
        from gateway.server import run_worker

        return run_worker(config, role)
    workers = int(args.workers)
    if workers == 0:
        from gateway.server import run

        return run(config)
    # The supervisor loads none of the server: its workers start sooner.
    from gateway.supervisor import run_supervisor

    return run_supervisor(config, argv, workers)


QUOTA_CLOCK_FILE_ENV = "EVENTBUS_QUOTA_CLOCK_FILE"
USAGE_CLOCK_FILE_ENV = "EVENTBUS_USAGE_CLOCK_FILE"


def _test_clocks() -> dict[str, Any]:
    """For tests that count time across worker processes: ``EVENTBUS_QUOTA_CLOCK_FILE``
    names a file holding the quota buckets' clock (seconds) and ``EVENTBUS_USAGE_CLOCK_FILE``
    one holding metering's (milliseconds since the epoch), each a little-endian float64
    that the test moves; every process reads the same time."""
    from gateway.quotas import FileClock

    clocks: dict[str, Any] = {}
    quota = os.environ.get(QUOTA_CLOCK_FILE_ENV)
    if quota:
        clocks["quota_clock"] = FileClock(Path(quota))
    usage = os.environ.get(USAGE_CLOCK_FILE_ENV)
    if usage:
        clocks["usage_clock_ms"] = FileClock(Path(usage)).whole
    return clocks


def _quota_clock() -> dict[str, Any]:
    """For tests: ``EVENTBUS_QUOTA_CLOCK_FILE`` names a file holding the quota buckets' clock
    (seconds, a little-endian float64) that a test moves, the same in every process."""
    path = os.environ.get(QUOTA_CLOCK_FILE_ENV)
    if not path:
        return {}
    from gateway.quotas import FileClock

    return {"quota_clock": FileClock(Path(path))}


# --- client commands -------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> str:
    """--api-key (or EVENTBUS_API_KEY), else tenant default's key from the credentials file."""
    if args.api_key:
        return str(args.api_key)
    path = Path(args.data_dir) / CREDENTIALS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "EVENTBUS_API_KEY" and value.strip():
            return value.strip()
    raise CliError(
        f"no API key: pass --api-key, set EVENTBUS_API_KEY, or point --data-dir at the "
        f"server's data dir (no key in {path})"
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _topics(args: argparse.Namespace, client: Client) -> int:
    command = args.topics_command
    if command == "create":
        _print_json(client.create_topic(args.name, dict(args.config)))
    elif command == "list":
        _print_json(client.list_topics())
    elif command == "describe":
        _print_json(client.describe_topic(args.name))
    else:
        client.delete_topic(args.name)
        _print_json({"deleted": args.name})
    return 0


def _groups(args: argparse.Namespace, client: Client) -> int:
    if args.groups_command == "describe":
        _print_json(client.describe_group(args.topic, args.group))
    else:
        committed = client.seek_group(args.topic, args.group, args.to)
        _print_json(
            {"committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]}
        )
    return 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, for loops that stop at a safe point."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _read_lines(source: BinaryIO, out: queue.Queue[list[bytes] | None]) -> None:
    """Put stdin's lines on ``out`` as they arrive (whatever one read returns), then None.

    A bounded queue holds the reader back while the server is slower than the input."""
    fd = source.fileno()
    tail = b""
    try:
        while data := os.read(fd, 1 << 16):
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            if lines:
                out.put(lines)
        if tail:
            out.put([tail])
    finally:
        out.put(None)


def _is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _line_record(line: bytes, separator: bytes | None) -> NewRecord:
    """A line (without its LF or CRLF) as a record; text unless it is not UTF-8."""
    line = line.removesuffix(b"\r")
    key = None
    if separator is not None:
        head, found, rest = line.partition(separator)
        if found:
            key, line = head, rest
    return NewRecord(
        value=line,
        key=key,
        key_is_text=key is not None and _is_text(key),
        value_is_text=_is_text(line),
    )


class _Progress:
    """A records/s line on stderr, rewritten in place, when stderr is a terminal."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self._shown = 0.0

    def rate(self, count: int) -> tuple[float, float]:
        elapsed = time.monotonic() - self.started
        return elapsed, count / elapsed if elapsed > 0 else 0.0

    def update(self, count: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self._shown >= PROGRESS_EVERY_S:
            self._shown = now
            _elapsed, rate = self.rate(count)
            sys.stderr.write(f"\r{count:,} records  {rate:,.0f} records/s\x1b[K")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _produce(args: argparse.Namespace, client: Client) -> int:
    separator = args.key_separator.encode() if args.key_separator else None
    linger_s = max(args.linger_ms, 0) / 1000
    chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
    reader = threading.Thread(
        target=_read_lines, args=(sys.stdin.buffer, chunks), name="stdin", daemon=True
    )
    progress = _Progress()
    produced = 0
    pending: list[bytes] = []
    pending_bytes = 0
    deadline = 0.0

    def send(lines: list[bytes]) -> None:
        nonlocal produced
        client.produce(args.topic, [_line_record(line, separator) for line in lines])
        produced += len(lines)
        progress.update(produced)

    with _stop_on_signals() as stop:
        reader.start()
        try:
            ended = False
            while not ended:
                wait = max(0.0, deadline - time.monotonic()) if pending else 0.2
                try:
                    chunk = chunks.get(timeout=min(wait, 0.2))
                except queue.Empty:
                    chunk = []
                if chunk is None:
                    ended = True
                elif chunk:
                    if not pending:
                        deadline = time.monotonic() + linger_s
                    pending.extend(chunk)
                    pending_bytes += sum(len(line) for line in chunk)
                ended = ended or stop.is_set()
                # Full batches go now; a partial one at its deadline or at the end.
                while len(pending) >= args.batch_size or pending_bytes >= MAX_BATCH_BYTES:
                    take = _batch_length(pending, args.batch_size)
                    send(pending[:take])
                    del pending[:take]
                    pending_bytes = sum(len(line) for line in pending)
                    deadline = time.monotonic() + linger_s
                if pending and (ended or time.monotonic() >= deadline):
                    send(pending)
                    pending, pending_bytes = [], 0
        except BaseException:
            progress.clear()
            if produced:
                # Where to resume: the lines before this point are stored, in order.
                print(
                    f"eventbus: the first {produced:,} lines were produced before the failure",
                    file=sys.stderr,
                )
            raise
    progress.clear()
    elapsed, rate = progress.rate(produced)
    print(
        f"eventbus: produced {produced:,} records to {args.topic} in {elapsed:.2f} s "
        f"({rate:,.0f} records/s)",
        file=sys.stderr,
    )
    return 0


def _batch_length(lines: list[bytes], batch_size: int) -> int:
    """How many leading lines make one request: at most batch_size and about
    MAX_BATCH_BYTES, at least one."""
    size = 0
    for count, line in enumerate(lines[:batch_size], 1):
        size += len(line)
        if size >= MAX_BATCH_BYTES:
            return count
    return min(len(lines), batch_size)


def _format(pid: int, record: Record, args: argparse.Namespace, separator: bytes) -> bytes:
    fields: list[bytes] = []
    if args.print_offset:
        fields += [str(pid).encode(), str(record.offset).encode()]
    if args.print_key:
        fields.append(record.key if record.key is not None else b"")
    fields.append(record.value)
    return separator.join(fields) + b"\n"


async def _consume(args: argparse.Namespace, url: str, key: str) -> int:
    """Follow the topic as one group member; see the command's description.

    Commits: every fetch uses auto_commit, which commits what the member's previous fetch
    delivered; this loop has printed and flushed all of it before it fetches again. On exit
    it commits the positions after the records it printed (fewer than delivered when
    --max-records cut an answer, or when a signal cancelled a fetch) and leaves with
    ``commit: false``, so that the leave commits nothing more. A fetch whose answer may have
    been lost is never followed by another fetch as the same member, so nothing unprinted is
    ever committed.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout.buffer
    separator = args.separator.encode()
    limit: int | None = args.max_records
    printed: dict[int, int] = {}  # partition -> offset after the last record printed
    count = 0
    member: str | None = None
    answer: FetchResult | None = None
    async with AsyncClient(url, key, timeout=args.timeout) as client:
        try:
            while not stop.is_set() and (limit is None or count < limit):
                want = MAX_FETCH_RECORDS if limit is None else min(MAX_FETCH_RECORDS, limit - count)
                fetch = asyncio.ensure_future(
                    client.fetch(
                        args.topic,
                        args.group,
                        member,
                        max_records=want,
                        max_bytes=FETCH_MAX_BYTES,
                        wait_ms=args.wait_ms,
                        auto_commit=True,
                        auto_offset_reset="earliest" if args.from_beginning else None,
                    )
                )
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ClientError):
                        await fetch
                    break
                try:
                    answer = fetch.result()
                except ApiError as exc:
                    if exc.code != "unknown_member":
                        raise
                    member = answer = None  # the session ended: join again
                    continue
                member = answer.member_id
                records = answer.records
                if limit is not None:
                    records = records[: limit - count]
                out.write(b"".join(_format(pid, r, args, separator) for pid, r in records))
                out.flush()
                count += len(records)
                for pid, record in records:
                    printed[pid] = max(printed.get(pid, 0), record.offset + 1)
        finally:
            if member is not None and answer is not None:
                await _commit_and_leave(client, args, answer, printed)
    return 0


async def _commit_and_leave(
    client: AsyncClient, args: argparse.Namespace, answer: FetchResult, printed: dict[int, int]
) -> None:
    """Commit what was printed in the member's partitions, then leave without committing
    more (leaving would otherwise commit all the last fetch delivered, printed or not); a
    refused commit (a rebalance came first) means those records are delivered again, so it
    is a warning."""
    offsets = {p: o for p, o in printed.items() if p in answer.assignment}
    if offsets:
        try:
            await client.commit(
                args.topic, args.group, answer.member_id, answer.generation, offsets
            )
        except ClientError as exc:
            print(
                f"eventbus: warning: could not commit ({exc}); "
                "the uncommitted records will be delivered again",
                file=sys.stderr,
            )
    # Refused (unknown_member: the session had already ended) or unreachable: the session
    # expires on its own.
    with contextlib.suppress(ClientError):
        await client.leave(args.topic, args.group, answer.member_id, commit=False)


def _run_client_command(args: argparse.Namespace) -> int:
    key = _api_key(args)
    if args.command == "consume":
        return asyncio.run(_consume(args, args.url, key))
    compression = None if getattr(args, "compression", "none") == "none" else args.compression
    with Client(args.url, key, timeout=args.timeout, compression=compression) as client:
        if args.command == "topics":
            return _topics(args, client)
        if args.command == "groups":
            return _groups(args, client)
        return _produce(args, client)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(parser, args, argv)
    if args.command == "catalog" and args.catalog_command == "backup":
        source = Path(args.data_dir) / CATALOG_FILE
        try:
            backup_catalog(source, args.path)
        except FileNotFoundError:
            print(f"eventbus: no catalog at {source}", file=sys.stderr)
            return 1
        print(f"eventbus: wrote a copy of {source} to {args.path}")
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
