"""A topic's configuration: its settings, their defaults and bounds, and their validation.

Stored configs are completed with the defaults of keys added since they were written
(:func:`with_defaults`), so that an old topic reads like a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoscaler.config import AUTOSCALE_KEY, DEFAULT_AUTOSCALE, normalize_autoscale
from partitions.errors import InvalidInputError
from partitions.log.values import LogConfig

MIB = 1024 * 1024
DAY_MS = 24 * 60 * 60 * 1000


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
