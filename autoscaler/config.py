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
from partitions.shapes import Boolean, Integer, Number, Object

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

DEFAULT_AUTOSCALE: dict[str, Any] = _DEFAULTS.to_json()

# The ``autoscale`` object a client sends: knobs left out keep their values.
AUTOSCALE_SHAPE = Object(
    fields={
        "enabled": Boolean(default=_DEFAULTS.enabled),
        "merge_ratio": Number(low=0, high=1, exclusive=True, default=_DEFAULTS.merge_ratio),
    }
    | {
        name: Integer(low=low, high=high, default=getattr(_DEFAULTS, name))
        for name, (low, high) in _INT_KNOBS_RANGES.items()
    },
    fill_defaults=False,
    description="See docs/autoscaling.md; knobs left out keep their values. "
    "min_partitions may not exceed max_partitions, nor merge_window_s be shorter than "
    "window_s.",
    error=InvalidAutoscaleConfigError,
)


def normalize_autoscale(given: Any, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``given`` over ``base`` (default: the defaults); answer the whole object.

    Raises :class:`InvalidAutoscaleConfigError` naming the knob (``autoscale.window_s``).
    """
    checked = AUTOSCALE_SHAPE.parse(
        given, InvalidAutoscaleConfigError, where=AUTOSCALE_KEY, detail="key"
    )
    out = {**DEFAULT_AUTOSCALE, **(base or {}), **checked}
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
