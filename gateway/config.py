"""Server settings and topic configuration."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoscaler.config import AUTOSCALE_KEY, DEFAULT_AUTOSCALE, normalize_autoscale
from gateway.billing import PricePlan
from gateway.quotas import Quotas
from partitions.errors import InvalidInputError
from partitions.log.values import LogConfig

MIB = 1024 * 1024
DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_public: bool = False
    # Largest request body accepted (413 past it).
    max_request_bytes: int = 16 * MIB
    # Longest long-poll a read may ask for with wait_ms.
    max_wait_ms: int = 30_000
    # How often retention is applied.
    retention_check_ms: int = 30_000
    # How often the autoscaler measures every topic and splits or merges partitions.
    autoscale_interval_ms: int = 1000
    # From EVENTBUS_ADMIN_KEY; never printed (repr=False).
    admin_key: str | None = field(default=None, repr=False)
    # Quotas of every tenant that has no override of its own (None: unlimited).
    default_quotas: Quotas = field(default_factory=Quotas)
    # Tenant requests in service at once; the others wait per tenant and are served in turn.
    max_concurrent_requests: int = 256
    # Requests one tenant may have waiting for service; past it, 429 request_queue_full.
    max_queued_per_tenant: int = 256
    # Slots one tenant may hold at once (at most max_concurrent_requests).
    max_in_service_per_tenant: int = 128
    # The quota buckets' clock (seconds, monotonic), injectable so that tests count tokens.
    quota_clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    # Prices of every tenant whose plan does not name its own.
    default_plan: PricePlan = field(default_factory=PricePlan)
    # Metered usage reaches the catalog this often (at most 5 s: what a SIGKILL may lose).
    usage_flush_ms: int = 5_000
    # How often each tenant's stored bytes and active partitions are measured.
    usage_sample_ms: int = 10_000
    # An hour's usage is exported this long after the hour ends.
    usage_export_delay_ms: int = 60_000
    # The meter's clock (ms since the epoch, UTC), injectable so that tests cross hours.
    usage_clock_ms: Callable[[], int] = field(
        default=lambda: time.time_ns() // 1_000_000, repr=False, compare=False
    )
    # Tiered storage: file://DIR or s3://BUCKET/PREFIX (default: file:// under data_dir).
    object_store: str | None = None
    # The S3 endpoint; else the standard AWS settings (AWS_ENDPOINT_URL_S3, ...).
    s3_endpoint: str | None = None
    # Deadline of each call to the object store: a stalled store counts as down.
    object_store_timeout_ms: int = 30_000
    upload_concurrency: int = 4
    # Past this many bytes of rolled segments waiting for upload, produce answers 503.
    max_upload_backlog_bytes: int = 4 * 1024 * MIB
    # Longest wait between attempts at a failing upload (the backoff doubles up to it).
    upload_retry_max_ms: int = 30_000
    # Unreferenced objects and abandoned copies older than this are deleted...
    orphan_grace_ms: int = 60 * 60 * 1000
    # ... by a pass that runs this often.
    orphan_check_ms: int = 10 * 60 * 1000
    # Cold reads: the in-memory read cache's bound, the size of one ranged GET of a remote
    # segment, and how many of those are fetched ahead of a sequential reader.
    read_cache_bytes: int = 256 * MIB
    read_chunk_bytes: int = 8 * MIB
    read_ahead_chunks: int = 2

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


class InvalidConfigError(InvalidInputError):
    code = "invalid_config"


# name -> (default, smallest allowed, largest allowed, may be null)
_INT_SETTINGS: dict[str, tuple[int | None, int, int, bool]] = {
    "retention_ms": (7 * DAY_MS, 1, 2**62, True),
    "retention_bytes": (None, 1, 2**62, True),
    "local_retention_ms": (None, 1, 2**62, True),
    "local_retention_bytes": (None, 1, 2**62, True),
    "segment_bytes": (128 * MIB, 1024, 1024 * MIB, False),
    "segment_ms": (60 * 60 * 1000, 1000, 2**62, False),
    "max_record_bytes": (1 * MIB, 1, 16 * MIB, False),
}
DEFAULT_TOPIC_CONFIG: dict[str, Any] = {name: spec[0] for name, spec in _INT_SETTINGS.items()}
DEFAULT_TOPIC_CONFIG[AUTOSCALE_KEY] = DEFAULT_AUTOSCALE


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config with the defaults of keys added since it was written."""
    out = {**DEFAULT_TOPIC_CONFIG, **config}
    out[AUTOSCALE_KEY] = {**DEFAULT_AUTOSCALE, **(config.get(AUTOSCALE_KEY) or {})}
    return out


def normalize_topic_config(given: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``given`` over ``base`` (default: the defaults); answer the whole config.

    ``null`` for a retention setting means no limit; a local retention of ``null`` means
    the same as the total retention. Local retention may not exceed total retention.
    """
    if not isinstance(given, Mapping):
        raise InvalidConfigError("a topic config is a JSON object")
    config = with_defaults({} if base is None else base)
    for name, value in given.items():
        if name == AUTOSCALE_KEY:
            # A nested object: the knobs given change, the others keep their values.
            config[name] = normalize_autoscale(value, base=config[name])
            continue
        spec = _INT_SETTINGS.get(name)
        if spec is None:
            known = ", ".join(sorted([*_INT_SETTINGS, AUTOSCALE_KEY]))
            raise InvalidConfigError(
                f"unknown topic config key {name!r}; known: {known}",
                key=name,
            )
        _default, low, high, nullable = spec
        if value is None and nullable:
            config[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            allowed = f"an integer from {low} to {high}" + (" or null" if nullable else "")
            raise InvalidConfigError(f"{name} must be {allowed}", key=name)
        config[name] = value
    for local, total in (
        ("local_retention_ms", "retention_ms"),
        ("local_retention_bytes", "retention_bytes"),
    ):
        limit, bound = config[local], config[total]
        if limit is not None and bound is not None and limit > bound:
            raise InvalidConfigError(f"{local} may not exceed {total}", key=local)
    return config


def log_config(topic_config: Mapping[str, Any]) -> LogConfig:
    return LogConfig(
        segment_bytes=int(topic_config["segment_bytes"]),
        segment_ms=int(topic_config["segment_ms"]),
        max_record_bytes=int(topic_config["max_record_bytes"]),
    )
