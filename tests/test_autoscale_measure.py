"""Throughput meters: rates per slice, the sample of key hashes, partitions coming and going.

A hand-driven clock: the tests count slices, they never sleep.
"""

from __future__ import annotations

import random

from autoscaler.config import DEFAULT_AUTOSCALE, AutoscaleConfig
from autoscaler.measure import SAMPLE_CAPACITY, SAMPLES_PER_BATCH, LoadMeters
from autoscaler.policy import Rate
from gateway.broker.service import key_hash
from partitions.batch import NewRecord
from partitions.catalog import WHOLE_SPACE, PartitionRecord, PartitionState
from partitions.incoming import RecordList
from partitions.partition_key import PartitionKey

CONFIG = AutoscaleConfig(window_s=1, merge_window_s=2)  # slices of 200 ms
TOPIC_CONFIG = {"autoscale": {**DEFAULT_AUTOSCALE, "window_s": 1, "merge_window_s": 2}}
KEY = PartitionKey("t", "inc", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def meters(clock: Clock) -> LoadMeters:
    return LoadMeters(key_hash, clock_ms=clock, rng=random.Random(1))


def records(count: int, size: int = 100, key: str | None = "k") -> RecordList:
    out = []
    for n in range(count):
        name = None if key is None else f"{key}{n}".encode()
        out.append(NewRecord(value=b"v" * (size - len(name or b"")), key=name))
    return RecordList(out)


def partition(pid: int) -> PartitionRecord:
    return PartitionRecord(
        "t", "topic", "inc", pid, WHOLE_SPACE, PartitionState.ACTIVE, (), (), 0, None, 0
    )


def test_rates_are_per_complete_slice_and_the_first_slice_does_not_count() -> None:
    clock = Clock()
    board = meters(clock)
    batch = records(10)
    clock.now += 100  # halfway into a slice: the meter starts in it
    board.record(KEY, TOPIC_CONFIG, 1000, batch, range(10))
    for _ in range(3):
        clock.now += 200
        board.record(KEY, TOPIC_CONFIG, 1000, batch, range(10))
    clock.now += 400  # one slice with nothing in it, then into the next
    load = board.topic_load("t", "inc", [partition(0)], CONFIG)
    assert load.slice_ms == 200
    (measured,) = load.partitions
    # 1000 bytes and 10 records per 200 ms slice, then an empty slice; the partial first
    # slice is left out.
    assert measured.slices == (Rate(5000, 50),) * 3 + (Rate(0, 0),)
    assert measured.measured_ms == 1000
    rate, age = board.rate(KEY, CONFIG) or (None, 0)
    assert rate == Rate(15000 / 4, 150 / 4) and age == 1000


def test_slices_are_kept_for_the_merge_window_only() -> None:
    clock = Clock()
    board = meters(clock)
    for _ in range(40):
        board.record(KEY, TOPIC_CONFIG, 200, records(1), [0])
        clock.now += 200
    (measured,) = board.topic_load("t", "inc", [partition(0)], CONFIG).partitions
    assert len(measured.slices) == 10  # merge_window_s / slice
    assert set(measured.slices) == {Rate(1000, 5)}


def test_the_sample_is_weighted_by_bytes_bounded_and_recent() -> None:
    clock = Clock()
    board = meters(clock)
    big = records(1000, size=50)
    board.record(KEY, TOPIC_CONFIG, 50_000, big, range(1000))
    (measured,) = board.topic_load("t", "inc", [partition(0)], CONFIG).partitions
    # At most a handful of records looked at per batch; together they stand for all of it.
    assert len(measured.sample) == SAMPLES_PER_BATCH
    assert sum(s.nrecords for s in measured.sample) == 1000
    assert sum(s.nbytes for s in measured.sample) == 50_000
    assert all(s.hash == key_hash(s.key or b"") for s in measured.sample)
    # Many small batches: the ring keeps the most recent ones only.
    for n in range(SAMPLE_CAPACITY + 10):
        board.record(
            KEY, TOPIC_CONFIG, 100, RecordList([NewRecord(b"x", key=f"s{n}".encode())]), [0]
        )
    (measured,) = board.topic_load("t", "inc", [partition(0)], CONFIG).partitions
    assert len(measured.sample) == SAMPLE_CAPACITY
    assert measured.sample[-1].key == f"s{SAMPLE_CAPACITY + 9}".encode()
    # Older than the window (5 slices and the current one): no longer counted.
    clock.now += 6 * 200
    (measured,) = board.topic_load("t", "inc", [partition(0)], CONFIG).partitions
    assert measured.sample == ()


def test_keyless_records_are_sampled_without_a_hash() -> None:
    clock = Clock()
    board = meters(clock)
    board.record(KEY, TOPIC_CONFIG, 1000, records(4, key=None), range(4))
    (measured,) = board.topic_load("t", "inc", [partition(0)], CONFIG).partitions
    assert {s.hash for s in measured.sample} == {None}


def test_partitions_come_and_go_and_a_new_window_restarts_the_meters() -> None:
    clock = Clock()
    board = meters(clock)
    for pid in (0, 1):
        board.record(PartitionKey("t", "inc", pid), TOPIC_CONFIG, 100, records(1), [0])
    clock.now += 1000
    # Partition 0 was sealed: only 1 and the new 2 are measured now; 2 starts from zero.
    load = board.topic_load("t", "inc", [partition(1), partition(2)], CONFIG)
    assert [(p.partition_id, p.measured_ms) for p in load.partitions] == [(1, 1000), (2, 0)]
    assert board.rate(KEY, CONFIG) is None
    # Another window cuts time differently: measuring starts over.
    longer = AutoscaleConfig(window_s=2, merge_window_s=2)
    load = board.topic_load("t", "inc", [partition(1)], longer)
    assert load.slice_ms == 400 and load.partitions[0].measured_ms == 0
    board.keep_topics(set())
    assert board.partitions_measured() == 0
