"""The ``autoscale`` object of a topic's config: its knobs, defaults and validation.

A topic's config stores ``autoscale`` as a JSON object with every knob filled in. Topics
written before the autoscaler existed have no such object; :func:`autoscale_config` gives
them the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from partitions.errors import InvalidInputError

AUTOSCALE_KEY = "autoscale"
MIB = 1024 * 1024
# Partition ids are never reused, so a topic's lineage only grows; this bounds how many
# partitions may be active at once, not how many ever existed.
MAX_PARTITIONS_LIMIT = 1024


class InvalidAutoscaleConfigError(InvalidInputError):
    """The same code as every other bad topic config."""

    code = "invalid_config"


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """The policy's knobs for one topic (see ``docs/autoscaling.md``)."""

    enabled: bool = True
    split_bytes_per_s: int = 4 * MIB
    split_records_per_s: int = 4000
    window_s: int = 10
    merge_ratio: float = 0.25
    merge_window_s: int = 300
    cooldown_s: int = 30
    min_partitions: int = 1
    max_partitions: int = 64

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_DEFAULTS = AutoscaleConfig()

# name -> (smallest, largest) for the integer knobs
_INT_KNOBS_RANGES: dict[str, tuple[int, int]] = {
    "split_bytes_per_s": (1, 2**40),
    "split_records_per_s": (1, 2**40),
    "window_s": (1, 3600),
    "merge_window_s": (1, 7 * 24 * 3600),
    "cooldown_s": (0, 24 * 3600),
    "min_partitions": (1, MAX_PARTITIONS_LIMIT),
    "max_partitions": (1, MAX_PARTITIONS_LIMIT),
}
_INT_KNOBS = frozenset(_INT_KNOBS_RANGES)
KNOBS = tuple(sorted(_INT_KNOBS | {"enabled", "merge_ratio"}))

DEFAULT_AUTOSCALE: dict[str, Any] = _DEFAULTS.to_json()


def normalize_autoscale(given: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``given`` over ``base`` (default: the defaults); answer the whole object.

    Raises :class:`InvalidAutoscaleConfigError` naming the knob (``autoscale.window_s``).
    """
    if not isinstance(given, Mapping):
        raise InvalidAutoscaleConfigError(
            "autoscale is a JSON object of knobs: " + ", ".join(KNOBS), key=AUTOSCALE_KEY
        )
    out = {**DEFAULT_AUTOSCALE, **(base or {})}
    for name, value in given.items():
        key = f"{AUTOSCALE_KEY}.{name}"
        if name == "enabled":
            if not isinstance(value, bool):
                raise InvalidAutoscaleConfigError(f"{key} must be true or false", key=key)
        elif name == "merge_ratio":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise InvalidAutoscaleConfigError(
                    f"{key} must be a number above 0 and below 1", key=key
                )
            value = float(value)
        elif name in _INT_KNOBS_RANGES:
            low, high = _INT_KNOBS_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidAutoscaleConfigError(
                    f"{key} must be an integer from {low} to {high}", key=key
                )
        else:
            raise InvalidAutoscaleConfigError(
                f"unknown autoscale knob {name!r}; known: {', '.join(KNOBS)}", key=key
            )
        out[name] = value
    if out["min_partitions"] > out["max_partitions"]:
        raise InvalidAutoscaleConfigError(
            "autoscale.min_partitions may not exceed autoscale.max_partitions",
            key=f"{AUTOSCALE_KEY}.min_partitions",
        )
    if out["merge_window_s"] < out["window_s"]:
        # Merging on less evidence than splitting would let partitions flap.
        raise InvalidAutoscaleConfigError(
            "autoscale.merge_window_s may not be shorter than autoscale.window_s",
            key=f"{AUTOSCALE_KEY}.merge_window_s",
        )
    return out


def autoscale_config(topic_config: Mapping[str, Any]) -> AutoscaleConfig:
    """The knobs of a stored topic config; defaults where it has none."""
    stored = topic_config.get(AUTOSCALE_KEY)
    if not isinstance(stored, Mapping):
        return _DEFAULTS
    merged = {**DEFAULT_AUTOSCALE, **stored}
    return AutoscaleConfig(
        enabled=bool(merged["enabled"]),
        split_bytes_per_s=int(merged["split_bytes_per_s"]),
        split_records_per_s=int(merged["split_records_per_s"]),
        window_s=int(merged["window_s"]),
        merge_ratio=float(merged["merge_ratio"]),
        merge_window_s=int(merged["merge_window_s"]),
        cooldown_s=int(merged["cooldown_s"]),
        min_partitions=int(merged["min_partitions"]),
        max_partitions=int(merged["max_partitions"]),
    )
