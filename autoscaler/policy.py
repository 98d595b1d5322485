"""The split and merge policy: a pure function of measurements and a topic's config.

:func:`decide` takes a :class:`TopicLoad` (what the meters saw, see ``autoscaler.measure``)
and an :class:`~autoscaler.config.AutoscaleConfig` and answers a :class:`Decision`: which
partitions to split and where, which neighbours to merge, which hot keys to report, and
what a limit held back. It does no I/O and keeps no state, so any runner (the loop in this
process, a scheduled job in a cloud deployment) can call it with measurements it got
elsewhere.

The rules (``docs/autoscaling.md`` tells them to users):

- Time is cut into *slices* of ``window_s / 5``. A partition is **hot** when, in every slice
  of the last ``window_s``, its bytes/s stayed at or above ``split_bytes_per_s``, or its
  records/s stayed at or above ``split_records_per_s``. A hot partition measured for at least
  ``window_s`` and older than ``cooldown_s`` is split at the weighted median of its sampled
  key hashes (weighted by bytes, or by records when only the records threshold was passed),
  provided each side carries at least 10% of the sampled weight. Keyless records spread over
  every active partition, so half of their weight counts on each side.
- A sampled key whose own estimated rate passes a threshold is a **hot key**: reported, and
  never the reason for a split that cannot divide it.
- Two adjacent active partitions are **cold** together when, in every slice of the last
  ``merge_window_s``, their combined rates stayed below ``merge_ratio`` times both split
  thresholds. Cold pairs measured for ``merge_window_s`` and older than ``cooldown_s`` are
  merged, left to right, never two merges sharing a partition.
- The active count stays within ``min_partitions`` and the smaller of ``max_partitions`` and
  the tenant's limit. A count outside the topic's own bounds (a changed config) is brought
  back by merging the coldest neighbours, or by splitting the widest partitions; a tenant
  over its quota only stops splitting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from autoscaler.config import AutoscaleConfig
from partitions.catalog import HashRange

SLICES_PER_WINDOW = 5
# Each side of a split must carry at least this share of the sampled weight.
MIN_SIDE_SHARE = 0.1

# Reasons: a small fixed set, so that metrics can be labelled by them.
SPLIT_BYTES = "bytes_per_s"
SPLIT_RECORDS = "records_per_s"
BELOW_MIN = "min_partitions"
ABOVE_MAX = "max_partitions"
TENANT_QUOTA = "tenant_quota"
MERGE_COLD = "cold"
BLOCKED_HOT_KEY = "hot_key"
BLOCKED_NO_SPLIT_POINT = "no_split_point"
SPLIT_REASONS = (SPLIT_BYTES, SPLIT_RECORDS, BELOW_MIN)
MERGE_REASONS = (MERGE_COLD, ABOVE_MAX)
BLOCKED_REASONS = (ABOVE_MAX, TENANT_QUOTA, BELOW_MIN, BLOCKED_HOT_KEY, BLOCKED_NO_SPLIT_POINT)


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    bytes_per_s: float
    records_per_s: float

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.bytes_per_s + other.bytes_per_s, self.records_per_s + other.records_per_s)


ZERO_RATE = Rate(0.0, 0.0)


class KeySample(NamedTuple):
    """One sampled record, standing for ``nrecords`` records and ``nbytes`` bytes of traffic.

    ``hash`` is None for a keyless record; ``key`` is the start of the key, to name a hot one.
    A named tuple: one is made on the produce path for each sampled record, and the garbage
    collector stops tracking a tuple of plain values.
    """

    hash: int | None
    nbytes: float
    nrecords: float
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class PartitionLoad:
    """What was measured of one active partition.

    ``slices`` are the complete slices since it was first measured, oldest first, at most
    as many as ``merge_window_s`` holds; ``sample`` covers the last ``window_s``.
    ``measured_ms`` is how long it has been measured: since it was created, or since this
    measuring process started.
    """

    partition_id: int
    hash_range: HashRange
    measured_ms: int
    slices: tuple[Rate, ...]
    sample: tuple[KeySample, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicLoad:
    """Every active partition of one topic, measured at one moment with one slice length."""

    slice_ms: int
    partitions: tuple[PartitionLoad, ...]


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    partition_id: int
    at: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Merge:
    partition_ids: tuple[int, int]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class HotKey:
    """A key whose own rate passes a split threshold: no split can divide it."""

    partition_id: int
    hash: int
    key: bytes | None
    bytes_per_s: float
    records_per_s: float
    # Its part of the partition's sampled bytes.
    share: float


@dataclass(frozen=True, slots=True)
class Blocked:
    """A change the measurements called for and a rule or limit held back."""

    partition_ids: tuple[int, ...]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    splits: tuple[Split, ...] = ()
    merges: tuple[Merge, ...] = ()
    hot_keys: tuple[HotKey, ...] = ()
    blocked: tuple[Blocked, ...] = ()


# --- the policy ------------------------------------------------------------------------------


def slice_ms(config: AutoscaleConfig) -> int:
    return config.window_s * 1000 // SLICES_PER_WINDOW


def slices_in(seconds: int, slice_length_ms: int) -> int:
    return max(1, math.ceil(seconds * 1000 / slice_length_ms))


def average(slices: Sequence[Rate]) -> Rate:
    if not slices:
        return ZERO_RATE
    return Rate(
        sum(s.bytes_per_s for s in slices) / len(slices),
        sum(s.records_per_s for s in slices) / len(slices),
    )


def decide(
    load: TopicLoad, config: AutoscaleConfig, *, tenant_max_partitions: int | None = None
) -> Decision:
    """What to change in one topic now; see the module's docstring for the rules."""
    if not config.enabled:
        return Decision()
    parts = sorted(load.partitions, key=lambda p: p.hash_range.start)
    count = len(parts)
    if count > config.max_partitions:
        needed = count - config.max_partitions
        return Decision(merges=_forced_merges(parts, needed, ABOVE_MAX, config))
    # A tenant's quota holds splits back; it never merges a topic that is over it (a lowered
    # quota stops growth, it does not take partitions away).
    ceiling = config.max_partitions
    ceiling_reason = ABOVE_MAX
    if tenant_max_partitions is not None and tenant_max_partitions <= ceiling:
        ceiling, ceiling_reason = tenant_max_partitions, TENANT_QUOTA

    window_n = slices_in(config.window_s, load.slice_ms)
    splits: list[tuple[float, Split]] = []
    hot_keys: list[HotKey] = []
    blocked: list[Blocked] = []
    for part in parts:
        verdict = _hot_verdict(part, config, window_n)
        if verdict is None:
            continue
        heat, split, keys, held = verdict
        hot_keys += keys
        if split is not None:
            splits.append((heat, split))
        if held is not None:
            blocked.append(held)
    splits.sort(key=lambda item: -item[0])
    room = max(0, ceiling - count)
    chosen = [split for _heat, split in splits[:room]]
    if ceiling_reason == TENANT_QUOTA:
        limit = (
            f"the tenant's partition quota, which leaves this topic {max(0, ceiling)} active "
            "partitions (tenant_quota)"
        )
    else:
        limit = f"the topic's limit of {ceiling} active partitions (max_partitions)"
    for _heat, split in splits[room:]:
        message = f"partition {split.partition_id} is hot ({split.message}) but {limit}"
        blocked.append(Blocked((split.partition_id,), ceiling_reason, message))
    splitting = {s.partition_id for s in chosen}
    if count + len(chosen) < config.min_partitions:
        room = min(ceiling, config.min_partitions) - count - len(chosen)
        chosen += _forced_splits(parts, splitting, max(0, room))
        splitting = {s.partition_id for s in chosen}
    floor = config.min_partitions
    merges, held_merges = _cold_merges(parts, splitting, count + len(chosen) - floor, config, load)
    blocked += held_merges
    return Decision(tuple(chosen), tuple(merges), tuple(hot_keys), tuple(blocked))


def _hot_verdict(
    part: PartitionLoad, config: AutoscaleConfig, window_n: int
) -> tuple[float, Split | None, list[HotKey], Blocked | None] | None:
    """For a hot partition: its heat, the split if one is possible, its hot keys, and why
    it cannot split if it cannot. None for a partition that is not (yet) hot."""
    if len(part.slices) < window_n or part.measured_ms < config.cooldown_s * 1000:
        return None
    recent = part.slices[-window_n:]
    by_bytes = all(s.bytes_per_s >= config.split_bytes_per_s for s in recent)
    by_records = all(s.records_per_s >= config.split_records_per_s for s in recent)
    if not (by_bytes or by_records):
        return None
    mean = average(recent)
    heat = _heat(mean, config)
    reason = SPLIT_BYTES if by_bytes else SPLIT_RECORDS
    if by_bytes:
        why = (
            f"{mean.bytes_per_s:.0f} bytes/s, above {config.split_bytes_per_s} "
            f"for {config.window_s} s"
        )
    else:
        why = (
            f"{mean.records_per_s:.0f} records/s, above {config.split_records_per_s} "
            f"for {config.window_s} s"
        )
    keys = hot_keys(part, mean, config)
    point = split_point(part.sample, part.hash_range, by_records=not by_bytes)
    if point is not None:
        split = Split(part.partition_id, point, reason, why)
        return heat, split, keys, None
    if keys:
        top = max(keys, key=lambda k: k.share)
        message = (
            f"partition {part.partition_id} is hot ({why}) but one key carries "
            f"{top.share:.0%} of it ({top.bytes_per_s:.0f} bytes/s, {top.records_per_s:.0f} "
            "records/s): a single key cannot be split"
        )
        return heat, None, keys, Blocked((part.partition_id,), BLOCKED_HOT_KEY, message)
    message = (
        f"partition {part.partition_id} is hot ({why}) but its sampled traffic does not "
        f"divide with at least {MIN_SIDE_SHARE:.0%} on each side"
    )
    return heat, None, keys, Blocked((part.partition_id,), BLOCKED_NO_SPLIT_POINT, message)


def hot_keys(part: PartitionLoad, mean: Rate, config: AutoscaleConfig) -> list[HotKey]:
    """Sampled keys whose own estimated rate passes a split threshold, hottest first."""
    total_bytes = sum(s.nbytes for s in part.sample)
    total_records = sum(s.nrecords for s in part.sample)
    if total_bytes <= 0 or total_records <= 0:
        return []
    per_hash: dict[int, list[float]] = {}
    names: dict[int, bytes | None] = {}
    for s in part.sample:
        if s.hash is None:
            continue
        sums = per_hash.setdefault(s.hash, [0.0, 0.0])
        sums[0] += s.nbytes
        sums[1] += s.nrecords
        if names.get(s.hash) is None:
            names[s.hash] = s.key
    found = []
    for key_hash, (key_bytes, key_records) in per_hash.items():
        share = key_bytes / total_bytes
        bytes_rate = share * mean.bytes_per_s
        records_rate = key_records / total_records * mean.records_per_s
        if bytes_rate >= config.split_bytes_per_s or records_rate >= config.split_records_per_s:
            name = names.get(key_hash)
            found.append(HotKey(part.partition_id, key_hash, name, bytes_rate, records_rate, share))
    return sorted(found, key=lambda k: -k.share)


def split_point(
    sample: Sequence[KeySample], hash_range: HashRange, *, by_records: bool = False
) -> int | None:
    """The weighted median of the sampled key hashes, as a point strictly inside the range.

    The point falls midway between two neighbouring sampled hashes, so that keys never
    sampled spread evenly. None when no point leaves at least 10% of the weight on each
    side. Without any keyed sample (all keyless, or nothing) the middle of the range.
    """
    start, end = hash_range.start, hash_range.end
    weights: dict[int, float] = {}
    keyless = 0.0
    for s in sample:
        weight = s.nrecords if by_records else s.nbytes
        if s.hash is None:
            keyless += weight
        elif start <= s.hash < end:
            weights[s.hash] = weights.get(s.hash, 0.0) + weight
    if not weights:
        return (start + end) // 2 if end - start >= 2 else None
    total = sum(weights.values()) + keyless
    hashes = sorted(weights)
    # Candidate k puts hashes[:k] on the left; its point p has hashes[k-1] < p <= hashes[k].
    best: tuple[float, int] | None = None
    left = keyless / 2
    for k in range(len(hashes) + 1):
        if k > 0:
            left += weights[hashes[k - 1]]
        # The point lies in (low, high]: between two sampled hashes, or at an end.
        low = hashes[k - 1] if k > 0 else start
        high = hashes[k] if k < len(hashes) else end - 1
        if high <= low:
            continue
        point = low + 1 + (high - low - 1) // 2
        if not start < point < end:
            continue
        if min(left, total - left) < MIN_SIDE_SHARE * total:
            continue
        imbalance = abs(total - 2 * left)
        if best is None or imbalance < best[0]:
            best = (imbalance, point)
    return None if best is None else best[1]


def _cold_merges(
    parts: Sequence[PartitionLoad],
    splitting: set[int],
    allowed: int,
    config: AutoscaleConfig,
    load: TopicLoad,
) -> tuple[list[Merge], list[Blocked]]:
    merge_n = slices_in(config.merge_window_s, load.slice_ms)
    cooldown_ms = config.cooldown_s * 1000
    bytes_limit = config.merge_ratio * config.split_bytes_per_s
    records_limit = config.merge_ratio * config.split_records_per_s
    merges: list[Merge] = []
    blocked: list[Blocked] = []
    taken: set[int] = set()
    for low, high in zip(parts, parts[1:], strict=False):
        pair = (low.partition_id, high.partition_id)
        if taken & set(pair) or splitting & set(pair):
            continue
        if any(len(p.slices) < merge_n or p.measured_ms < cooldown_ms for p in (low, high)):
            continue
        recent = zip(low.slices[-merge_n:], high.slices[-merge_n:], strict=True)
        combined = [a + b for a, b in recent]
        if not all(
            c.bytes_per_s < bytes_limit and c.records_per_s < records_limit for c in combined
        ):
            continue
        peak_bytes = max(c.bytes_per_s for c in combined)
        peak_records = max(c.records_per_s for c in combined)
        message = (
            f"partitions {pair[0]} and {pair[1]} together stayed below {config.merge_ratio} x "
            f"the split thresholds for {config.merge_window_s} s (peak {peak_bytes:.0f} "
            f"bytes/s, {peak_records:.0f} records/s)"
        )
        if len(merges) >= allowed:
            blocked.append(
                Blocked(
                    pair,
                    BELOW_MIN,
                    f"{message}, but the topic is at its minimum of {config.min_partitions} "
                    "active partitions",
                )
            )
            continue
        merges.append(Merge(pair, MERGE_COLD, message))
        taken |= set(pair)
    return merges, blocked


def _forced_merges(
    parts: Sequence[PartitionLoad], needed: int, reason: str, config: AutoscaleConfig
) -> tuple[Merge, ...]:
    """Merge the coldest neighbours until the count is back within its limit."""
    pairs = sorted(
        zip(parts, parts[1:], strict=False),
        key=lambda pair: _heat(average(pair[0].slices) + average(pair[1].slices), config),
    )
    merges: list[Merge] = []
    taken: set[int] = set()
    for low, high in pairs:
        if len(merges) >= needed:
            break
        ids = (low.partition_id, high.partition_id)
        if taken & set(ids):
            continue
        taken |= set(ids)
        message = (
            f"the topic has {len(parts)} active partitions, above its limit ({reason}); "
            f"merging the coldest neighbours {ids[0]} and {ids[1]}"
        )
        merges.append(Merge(ids, reason, message))
    return tuple(merges)


def _forced_splits(parts: Sequence[PartitionLoad], splitting: set[int], needed: int) -> list[Split]:
    """Split the widest partitions until the count reaches ``min_partitions``."""
    widest = sorted(
        (p for p in parts if p.partition_id not in splitting),
        key=lambda p: (p.hash_range.start - p.hash_range.end, p.hash_range.start),
    )
    out: list[Split] = []
    for part in widest:
        if len(out) >= needed:
            break
        point = split_point(part.sample, part.hash_range)
        if point is None:
            low, high = part.hash_range.start, part.hash_range.end
            if high - low < 2:
                continue
            point = (low + high) // 2
        message = "the topic has fewer active partitions than min_partitions"
        out.append(Split(part.partition_id, point, BELOW_MIN, message))
    return out


def _heat(rate: Rate, config: AutoscaleConfig) -> float:
    """How far a rate is towards a split: 1.0 is a threshold."""
    return max(
        rate.bytes_per_s / config.split_bytes_per_s,
        rate.records_per_s / config.split_records_per_s,
    )
