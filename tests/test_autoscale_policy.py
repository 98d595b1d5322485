"""The split and merge policy, as a pure function of measurements and config."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given
from hypothesis import strategies as st

from autoscaler.config import AutoscaleConfig
from autoscaler.policy import (
    KeySample,
    PartitionLoad,
    Rate,
    TopicLoad,
    decide,
    split_point,
)
from partitions.catalog import HASH_SPACE_END, WHOLE_SPACE, HashRange

# Slices of 200 ms: a window is 5 slices, a merge window 10.
CONFIG = AutoscaleConfig(
    split_bytes_per_s=100_000,
    split_records_per_s=1000,
    window_s=1,
    merge_window_s=2,
    merge_ratio=0.25,
    cooldown_s=0,
    min_partitions=1,
    max_partitions=8,
)
SLICE_MS = 200
HOT = Rate(200_000, 2000)  # above both thresholds
WARM = Rate(50_000, 500)  # below both, above the merge limits
COLD = Rate(1000, 10)


def spread(count: int, start: int = 0, end: int = HASH_SPACE_END) -> list[int]:
    """``count`` distinct hashes spread evenly over [start, end)."""
    step = (end - start) // (count + 1)
    return [start + step * (n + 1) for n in range(count)]


def sample_of(hashes: list[int], nbytes: float = 100.0) -> tuple[KeySample, ...]:
    return tuple(KeySample(h, nbytes, 1.0, f"k{n}".encode()) for n, h in enumerate(hashes))


def part(
    pid: int,
    hash_range: HashRange = WHOLE_SPACE,
    slices: list[Rate] | None = None,
    sample: tuple[KeySample, ...] = (),
    measured_ms: int | None = None,
) -> PartitionLoad:
    slices = [HOT] * 5 if slices is None else slices
    measured = (len(slices) + 1) * SLICE_MS if measured_ms is None else measured_ms
    return PartitionLoad(pid, hash_range, measured, tuple(slices), sample)


def halves() -> tuple[HashRange, HashRange]:
    mid = HASH_SPACE_END // 2
    return HashRange(0, mid), HashRange(mid, HASH_SPACE_END)


def quarters() -> list[HashRange]:
    q = HASH_SPACE_END // 4
    return [HashRange(q * n, q * (n + 1)) for n in range(4)]


def topic(*parts: PartitionLoad) -> TopicLoad:
    return TopicLoad(SLICE_MS, tuple(parts))


# --- splits ----------------------------------------------------------------------------------


def test_a_partition_hot_in_every_slice_splits_at_the_weighted_median() -> None:
    # Skewed traffic: every key hashes into the lowest eighth of the space.
    hashes = spread(40, 0, HASH_SPACE_END // 8)
    decision = decide(topic(part(0, sample=sample_of(hashes))), CONFIG)
    (split,) = decision.splits
    assert split.partition_id == 0 and split.reason == "bytes_per_s"
    # Half the sampled weight on each side: between the 20th and the 21st hash, nowhere near
    # the middle of the range.
    assert hashes[19] < split.at <= hashes[20]
    assert decision.blocked == () and decision.hot_keys == ()


def test_the_median_follows_the_bytes_not_the_count_of_keys() -> None:
    hashes = spread(10)
    # The first two keys carry as many bytes as the other eight together.
    sample = tuple(KeySample(h, 400.0 if n < 2 else 100.0, 1.0) for n, h in enumerate(hashes))
    (split,) = decide(topic(part(0, sample=sample)), CONFIG).splits
    assert hashes[1] < split.at <= hashes[2]


def test_a_split_on_records_alone_weighs_records() -> None:
    hashes = spread(10)
    # Bytes pile up on the last key; records are even: the records threshold was passed.
    sample = tuple(KeySample(h, 10_000.0 if n == 9 else 1.0, 1.0) for n, h in enumerate(hashes))
    slices = [Rate(10_000, 2000)] * 5
    (split,) = decide(topic(part(0, slices=slices, sample=sample)), CONFIG).splits
    assert split.reason == "records_per_s"
    assert hashes[4] < split.at <= hashes[5]


def test_one_slice_below_both_thresholds_means_no_split() -> None:
    slices = [HOT, HOT, WARM, HOT, HOT]
    assert decide(topic(part(0, slices=slices, sample=sample_of(spread(9)))), CONFIG).splits == ()
    # Either threshold held in every slice is enough.
    mixed = [HOT, Rate(200_000, 10), HOT, HOT, HOT]
    assert decide(topic(part(0, slices=mixed, sample=sample_of(spread(9)))), CONFIG).splits


def test_a_partition_measured_for_less_than_a_window_does_not_split() -> None:
    young = part(0, slices=[HOT] * 4, sample=sample_of(spread(9)))
    assert decide(topic(young), CONFIG).splits == ()


def test_a_single_hot_key_is_reported_and_not_split() -> None:
    sample = tuple(KeySample(12345, 100.0, 1.0, b"user-7") for _ in range(50))
    decision = decide(topic(part(0, sample=sample)), CONFIG)
    assert decision.splits == ()
    (hot,) = decision.hot_keys
    assert (hot.partition_id, hot.hash, hot.key, hot.share) == (0, 12345, b"user-7", 1.0)
    assert hot.bytes_per_s == HOT.bytes_per_s and hot.records_per_s == HOT.records_per_s
    (blocked,) = decision.blocked
    assert blocked.reason == "hot_key" and blocked.partition_ids == (0,)
    assert "single key" in blocked.message


def test_a_hot_key_with_enough_other_traffic_is_peeled_off() -> None:
    # One key carries 80% of a partition twice the threshold: it is hot on its own, and
    # the rest is worth a partition of its own.
    hot_hash = HASH_SPACE_END // 2
    others = spread(10, 0, HASH_SPACE_END // 4)
    sample = sample_of(others) + tuple(KeySample(hot_hash, 100.0, 1.0, b"hot") for _ in range(40))
    decision = decide(topic(part(0, sample=sample)), CONFIG)
    (split,) = decision.splits
    assert others[-1] < split.at <= hot_hash  # the hot key alone on the right
    assert [k.key for k in decision.hot_keys] == [b"hot"]
    assert decision.blocked == ()


def test_each_side_must_carry_a_tenth_of_the_weight() -> None:
    # Two keys, 95% and 5%, the bigger one below the threshold on its own.
    slices = [Rate(101_000, 100)] * 5
    sample = (KeySample(10, 95.0, 1.0), KeySample(2**63, 5.0, 1.0))
    decision = decide(topic(part(0, slices=slices, sample=sample)), CONFIG)
    assert decision.splits == () and decision.hot_keys == ()
    (blocked,) = decision.blocked
    assert blocked.reason == "no_split_point"


def test_keyless_records_count_half_on_each_side() -> None:
    # One key and as many keyless bytes: the keyless half makes either side big enough.
    sample = (KeySample(2**40, 60.0, 1.0),) + (KeySample(None, 40.0, 1.0),)
    assert split_point(sample, WHOLE_SPACE) is not None
    # Without keyed traffic the middle of the range.
    assert split_point((KeySample(None, 1.0, 1.0),), WHOLE_SPACE) == HASH_SPACE_END // 2
    assert split_point((), HashRange(10, 20)) == 15
    # Only one key and nothing else: no point divides it.
    assert split_point((KeySample(2**40, 1.0, 1.0),), WHOLE_SPACE) is None


@given(
    st.integers(0, HASH_SPACE_END - 2).flatmap(
        lambda start: st.tuples(st.just(start), st.integers(start + 2, HASH_SPACE_END))
    ),
    st.lists(st.tuples(st.integers(0, 2**64 - 1), st.floats(0.01, 1000)), max_size=30),
    st.floats(0, 100),
)
def test_a_split_point_lies_strictly_inside_and_leaves_a_tenth_each_side(
    bounds: tuple[int, int], points: list[tuple[int, float]], keyless: float
) -> None:
    start, end = bounds
    hash_range = HashRange(start, end)
    sample = tuple(KeySample(start + h % (end - start), w, 1.0) for h, w in points)
    if keyless:
        sample += (KeySample(None, keyless, 1.0),)
    point = split_point(sample, hash_range)
    keyed = [s for s in sample if s.hash is not None]
    if point is None:
        return
    assert start < point < end
    if keyed:
        total = sum(s.nbytes for s in sample)
        left = sum(s.nbytes for s in keyed if s.hash is not None and s.hash < point) + keyless / 2
        assert left >= 0.1 * total - 1e-6 and total - left >= 0.1 * total - 1e-6


def test_cooldown_holds_back_a_young_lineage_only() -> None:
    config = dataclasses.replace(CONFIG, cooldown_s=3)
    low, high = halves()
    young = part(1, low, sample=sample_of(spread(9, low.start, low.end)), measured_ms=2000)
    old = part(2, high, sample=sample_of(spread(9, high.start, high.end)), measured_ms=5000)
    decision = decide(topic(young, old), config)
    assert [s.partition_id for s in decision.splits] == [2]


def test_limits_hold_splits_back_hottest_first_and_say_which_limit() -> None:
    ranges = quarters()
    loads = [
        part(
            pid,
            r,
            slices=[Rate(HOT.bytes_per_s * (1 + pid), 0)] * 5,
            sample=sample_of(spread(9, r.start, r.end)),
        )
        for pid, r in enumerate(ranges)
    ]
    config = dataclasses.replace(CONFIG, max_partitions=6)
    decision = decide(topic(*loads), config)
    assert sorted(s.partition_id for s in decision.splits) == [2, 3]  # the two hottest
    assert sorted(b.partition_ids for b in decision.blocked) == [(0,), (1,)]
    assert {b.reason for b in decision.blocked} == {"max_partitions"}
    # A tenant's limit below the topic's: the quota is named.
    decision = decide(topic(*loads), config, tenant_max_partitions=5)
    assert [s.partition_id for s in decision.splits] == [3]
    assert {b.reason for b in decision.blocked} == {"tenant_quota"}
    assert "tenant_quota" in decision.blocked[0].message
    decision = decide(topic(*loads), config, tenant_max_partitions=4)
    assert decision.splits == () and len(decision.blocked) == 4


# --- merges ----------------------------------------------------------------------------------


def test_cold_neighbours_merge_after_the_merge_window_left_to_right() -> None:
    ranges = quarters()
    loads = [part(pid, r, slices=[COLD] * 10) for pid, r in enumerate(ranges)]
    decision = decide(topic(*loads), CONFIG)
    assert [m.partition_ids for m in decision.merges] == [(0, 1), (2, 3)]
    assert {m.reason for m in decision.merges} == {"cold"}


def test_a_pair_is_cold_only_if_every_slice_of_the_merge_window_is() -> None:
    low, high = halves()
    # Each alone is below the limit (0.25 x 1000 records/s), together they pass it once.
    spike = [Rate(1000, 10)] * 9 + [Rate(1000, 130)]
    assert decide(topic(part(0, low, spike), part(1, high, spike)), CONFIG).merges == ()
    # Measured for less than the merge window: not yet.
    short = [COLD] * 9
    assert decide(topic(part(0, low, short), part(1, high, short)), CONFIG).merges == ()
    assert decide(topic(part(0, low, [COLD] * 10), part(1, high, [COLD] * 10)), CONFIG).merges


def test_merges_stop_at_min_partitions_and_say_so() -> None:
    low, high = halves()
    config = dataclasses.replace(CONFIG, min_partitions=2)
    decision = decide(topic(part(0, low, [COLD] * 10), part(1, high, [COLD] * 10)), config)
    assert decision.merges == ()
    (blocked,) = decision.blocked
    assert blocked.reason == "min_partitions" and blocked.partition_ids == (0, 1)


def test_a_hot_partition_and_a_cold_pair_change_in_one_evaluation() -> None:
    ranges = quarters()
    loads = [
        part(0, ranges[0], [HOT] * 10, sample_of(spread(9, ranges[0].start, ranges[0].end))),
        part(1, ranges[1], [WARM] * 10),
        part(2, ranges[2], [COLD] * 10),
        part(3, ranges[3], [COLD] * 10),
    ]
    decision = decide(topic(*loads), CONFIG)
    assert [s.partition_id for s in decision.splits] == [0]
    assert [m.partition_ids for m in decision.merges] == [(2, 3)]


def test_above_the_limit_the_coldest_neighbours_merge() -> None:
    ranges = quarters()
    rates = [WARM, COLD, COLD, HOT]
    loads = [part(pid, r, [rates[pid]] * 5) for pid, r in enumerate(ranges)]
    decision = decide(topic(*loads), dataclasses.replace(CONFIG, max_partitions=3))
    assert [(m.partition_ids, m.reason) for m in decision.merges] == [((1, 2), "max_partitions")]
    # Two merges needed, but the coldest pair sits in the middle: one now, one next time.
    config = dataclasses.replace(CONFIG, max_partitions=2)
    decision = decide(topic(*loads), config)
    assert [(m.partition_ids, m.reason) for m in decision.merges] == [((1, 2), "max_partitions")]
    merged = part(4, HashRange(ranges[1].start, ranges[2].end), [COLD] * 5)
    decision = decide(topic(loads[0], merged, loads[3]), config)
    assert [m.partition_ids for m in decision.merges] == [(0, 4)]


def test_a_tenant_over_its_quota_stops_splitting_and_keeps_its_partitions() -> None:
    ranges = quarters()
    loads = [
        part(pid, r, [HOT] * 5, sample_of(spread(9, r.start, r.end)))
        for pid, r in enumerate(ranges)
    ]
    decision = decide(topic(*loads), CONFIG, tenant_max_partitions=2)
    assert decision.splits == () and decision.merges == ()
    assert {b.reason for b in decision.blocked} == {"tenant_quota"} and len(decision.blocked) == 4


def test_below_min_the_widest_partitions_split() -> None:
    low, high = halves()
    quarter = HashRange(high.start, high.start + HASH_SPACE_END // 4)
    rest = HashRange(quarter.end, HASH_SPACE_END)
    loads = [part(0, low, [COLD]), part(1, quarter, [COLD]), part(2, rest, [COLD])]
    decision = decide(topic(*loads), dataclasses.replace(CONFIG, min_partitions=4))
    (split,) = decision.splits
    assert (split.partition_id, split.reason) == (0, "min_partitions")
    assert split.at == HASH_SPACE_END // 4


def test_disabled_decides_nothing() -> None:
    config = dataclasses.replace(CONFIG, enabled=False)
    assert decide(topic(part(0, sample=sample_of(spread(9)))), config).splits == ()


def test_the_policy_is_a_pure_function() -> None:
    rng = random.Random(7)
    sample = tuple(KeySample(rng.randrange(HASH_SPACE_END), rng.random(), 1.0) for _ in range(99))
    load = topic(part(0, sample=sample))
    assert decide(load, CONFIG) == decide(load, CONFIG)
