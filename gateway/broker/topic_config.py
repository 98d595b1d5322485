"""A topic's configuration: its settings, their defaults and bounds, and their validation.

Stored configs are completed with the defaults of keys added since they were written
(:func:`with_defaults`), so that an old topic reads like a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoscaler.config import (
    AUTOSCALE_KEY,
    AUTOSCALE_SHAPE,
    DEFAULT_AUTOSCALE,
    normalize_autoscale,
)
from partitions.errors import InvalidInputError
from partitions.log.values import LogConfig
from partitions.shapes import Integer, Nullable, Object

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


# The config a client sends (PUT and PATCH of a topic): settings left out keep their values.
TOPIC_CONFIG_SHAPE = Object(
    fields={
        name: (
            Nullable(shape=Integer(low=low, high=high), default=default)
            if nullable
            else Integer(low=low, high=high, default=default)
        )
        for name, (default, low, high, nullable) in _INT_SETTINGS.items()
    }
    | {AUTOSCALE_KEY: AUTOSCALE_SHAPE},
    fill_defaults=False,
    description="Settings left out keep their values (their defaults, for a new topic). "
    "null for a retention setting is no limit; a local retention of null is the total "
    "retention, and may not exceed it.",
    error=InvalidConfigError,
)


def normalize_topic_config(given: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``given`` over ``base`` (default: the defaults); answer the whole config.

    ``null`` for a retention setting means no limit; a local retention of ``null`` means
    the same as the total retention. Local retention may not exceed total retention.
    """
    checked = TOPIC_CONFIG_SHAPE.parse(given, InvalidConfigError, detail="key")
    config = with_defaults({} if base is None else base)
    for name, value in checked.items():
        if name == AUTOSCALE_KEY:
            # A nested object: the knobs given change, the others keep their values.
            config[name] = normalize_autoscale(value, base=config[name])
        else:
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
