"""The server's settings (:class:`ServerConfig`) and the clocks it reads (:class:`Clocks`).

Every field of :class:`ServerConfig` is a setting (``gateway/settings.py``): ``eventbus serve``
has a flag and an environment variable for each, generated from it, with its help and its
default, so the two can never disagree. Clocks are not settings: tests hand in their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoscaler.measure import Clock, monotonic_ms
from gateway.settings import setting
from gateway.tenancy.billing import PricePlan, read_plan_file
from gateway.tenancy.quotas import Quotas
from partitions.catalog_url import DEFAULT_CATALOG_URL, CatalogUrl, parse_catalog_url

MIB = 1024 * 1024
# Metered usage reaches the catalog at least this often: what a SIGKILL may lose.
MAX_FLUSH_MS = 5_000


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0 to 65535 (0 picks a free one)")
    return value


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}")
        return value

    return parse


def optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def optional_text(text: str) -> str | None:
    return text or None


def on_off(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("DEBUG, INFO, WARNING or ERROR")
    return level


POSITIVE = at_least(1)
NOT_NEGATIVE = at_least(0)
TIERING = "tiered storage"
TENANCY = "tenants, quotas and fair service"
METERING = "metering and prices"
CATALOG = "catalog"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path = setting(
        Path("data"),
        "the logs and, by default, the catalog and the object store",
        parse=Path,
    )
    host: str = setting("127.0.0.1", "address to listen on", parse=str)
    port: int = setting(8080, "port to listen on; 0 picks a free one", parse=port)
    tls_cert: Path | None = setting(
        None, "PEM certificate: serve HTTPS (with --tls-key)", parse=optional_path, metavar="PEM"
    )
    tls_key: Path | None = setting(
        None, "PEM private key of --tls-cert", parse=optional_path, metavar="PEM"
    )
    workers: int | None = setting(
        None,
        "worker processes, each serving HTTP and owning some partitions; 0 runs everything "
        "in this one process",
        parse=between(0, 256),
        metavar="N",
        none_means="one per core",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", parse=log_level)
    metrics_public: bool = setting(
        False, "serve /metrics without the admin key", parse=on_off, switch=True
    )
    # Largest request body accepted (413 past it).
    max_request_bytes: int = setting(16 * MIB, "largest request body, in bytes", parse=POSITIVE)
    max_wait_ms: int = setting(
        30_000,
        "longest long-poll a read or group fetch waits (a longer wait_ms is cut to it)",
        parse=NOT_NEGATIVE,
    )
    max_stream_ms: int = setting(
        300_000,
        "longest an event stream lasts before it ends (its client resumes with Last-Event-ID)",
        parse=between(100, 86_400_000),
    )
    retention_check_ms: int = setting(30_000, "how often retention is applied", parse=POSITIVE)
    autoscale_interval_ms: int = setting(
        1000, "how often the autoscaler evaluates every topic", parse=POSITIVE
    )
    # From EVENTBUS_ADMIN_KEY only; never printed (repr=False is implied by no flag).
    admin_key: str | None = setting(
        None, "the admin key (made at first start when not given)", parse=str, has_flag=False
    )
    # Quotas of every tenant that has no override of its own (None: unlimited).
    default_quotas: Quotas = setting(
        help="quotas of tenants without their own",
        factory=Quotas,
        has_flag=False,
        section=TENANCY,
        prefix="default-",
    )
    max_concurrent_requests: int = setting(
        256,
        "tenant requests in service at once; the others wait, served fairly",
        parse=POSITIVE,
        section=TENANCY,
    )
    max_queued_per_tenant: int = setting(
        256, "requests one tenant may have waiting; past it, 429", parse=POSITIVE, section=TENANCY
    )
    max_in_service_per_tenant: int = setting(
        128, "requests of one tenant in service at once", parse=POSITIVE, section=TENANCY
    )
    max_streams_per_tenant: int = setting(
        16,
        "event streams one tenant may hold open in a process; past it, 429",
        parse=POSITIVE,
        section=TENANCY,
    )
    # Prices of every tenant whose plan does not name its own.
    default_plan: PricePlan = setting(
        help="a JSON file with the default price plan (the --default-usd-per-... flags win)",
        name="price-plan",
        factory=PricePlan,
        parse=read_plan_file,
        metavar="FILE",
        section=METERING,
        prefix="default-",
        none_means="the built-in prices",
    )
    usage_flush_ms: int = setting(
        MAX_FLUSH_MS,
        f"how often metered usage is written to the catalog; what a crash may lose "
        f"(at most {MAX_FLUSH_MS})",
        parse=between(10, MAX_FLUSH_MS),
        section=METERING,
    )
    usage_sample_ms: int = setting(
        10_000,
        "how often each tenant's stored bytes and partitions are measured",
        parse=between(10, 3_600_000),
        section=METERING,
    )
    usage_export_delay_ms: int = setting(
        60_000,
        "how long after an hour ends its usage is exported to the object store",
        parse=NOT_NEGATIVE,
        section=METERING,
    )
    object_store: str | None = setting(
        None,
        "file://DIR or s3://BUCKET[/PREFIX]",
        parse=optional_text,
        metavar="URL",
        section=TIERING,
        none_means="file://DATA_DIR/objects",
    )
    s3_endpoint: str | None = setting(
        None,
        "the S3 endpoint",
        parse=optional_text,
        metavar="URL",
        section=TIERING,
        none_means="AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS itself",
    )
    # A stalled store counts as down past this deadline of each call.
    object_store_timeout_ms: int = setting(
        30_000, "deadline of each object-store call", parse=POSITIVE, section=TIERING
    )
    upload_concurrency: int = setting(4, "segment uploads at once", parse=POSITIVE, section=TIERING)
    max_upload_backlog_bytes: int = setting(
        4 * 1024 * MIB,
        "bytes waiting for upload past which produce answers 503",
        parse=POSITIVE,
        section=TIERING,
    )
    upload_retry_max_ms: int = setting(
        30_000, "longest backoff between upload attempts", parse=POSITIVE, section=TIERING
    )
    orphan_grace_ms: int = setting(
        60 * 60 * 1000,
        "age before leftover objects and abandoned copies are deleted",
        parse=POSITIVE,
        section=TIERING,
    )
    orphan_check_ms: int = setting(
        10 * 60 * 1000, "how often leftovers are looked for", parse=POSITIVE, section=TIERING
    )
    read_cache_bytes: int = setting(
        256 * MIB, "memory for the cold reads' cache", parse=POSITIVE, section=TIERING
    )
    read_chunk_bytes: int = setting(
        8 * MIB, "bytes per ranged GET of cold data", parse=POSITIVE, section=TIERING
    )
    read_ahead_chunks: int = setting(
        2,
        "chunks fetched ahead of a sequential cold reader (0: none)",
        parse=NOT_NEGATIVE,
        section=TIERING,
    )
    catalog: CatalogUrl = setting(
        DEFAULT_CATALOG_URL,
        "sqlite://PATH (relative: in the data dir) or dynamodb://PREFIX[?KIND=TABLE&...] "
        "(endpoint, region and credentials from the standard AWS settings)",
        parse=parse_catalog_url,
        metavar="URL",
        section=CATALOG,
    )
    # A DynamoDB that stalls counts as unreachable past this deadline of each call.
    catalog_timeout_ms: int = setting(
        10_000,
        "deadline of each DynamoDB catalog call, retries included",
        parse=POSITIVE,
        section=CATALOG,
    )

    def __repr__(self) -> str:
        # The admin key is a secret: never in a log line or a traceback.
        shown = {name: getattr(self, name) for name in self.__dataclass_fields__}
        shown["admin_key"] = None if self.admin_key is None else "***"
        return "ServerConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Clocks:
    """The clocks the server reads. Not settings: tests pass their own, to count time
    (quota tokens, UTC hours of usage, autoscaler windows) without sleeping."""

    # Seconds, monotonic: the quota buckets.
    quota_s: Callable[[], float] = time.monotonic
    # Milliseconds since the epoch, UTC: metering's hours.
    usage_ms: Callable[[], int] = wall_clock_ms
    # Milliseconds, monotonic: the autoscaler's measurements.
    autoscale_ms: Clock = monotonic_ms
