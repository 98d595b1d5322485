"""Throughput of each active partition, measured on the produce path.

The broker calls :meth:`LoadMeters.record` once per batch it appended, never per record:
the meter adds the batch's bytes and record count to the current *slice* of time (a fifth
of the topic's ``window_s``), and looks at no more than :data:`SAMPLES_PER_BATCH` of its
records to sample key hashes. A sampled record stands for ``n / m`` records of its batch (n
records, m sampled, spaced evenly from a random start), and its bytes are scaled the same
way, so the sample is weighted by bytes as the traffic was. The sample is a bounded ring of
the most recent entries; entries older than ``window_s`` no longer count.

Time comes from an injectable clock in milliseconds (monotonic by default), so that tests
count slices instead of sleeping. Meters live in memory: a restart measures afresh, and
nothing is split or merged until a full window has been seen again.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from autoscaler.config import AutoscaleConfig, autoscale_config
from autoscaler.policy import (
    KeySample,
    PartitionLoad,
    Rate,
    TopicLoad,
    average,
    slice_ms,
    slices_in,
)
from partitions.catalog import PartitionRecord
from partitions.incoming import IncomingRecords, Key
from partitions.partition_key import PartitionKey

Clock = Callable[[], int]
SAMPLES_PER_BATCH = 8
# Samples kept per partition, the newest. 512 places a split point and measures a key's
# share to within a few percent; each sample is an object of its own (about 250 bytes with
# its key), and the policy reads all of a busy partition's every second: at 2048, a
# hundred partitions held some 50 MiB of samples.
SAMPLE_CAPACITY = 512
# Enough of a key to name it in topic describe; the rest is never kept.
KEY_PREVIEW_BYTES = 64


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a topic's meters cut time: the slice length and how many slices they keep."""

    slice_ms: int
    keep: int

    @classmethod
    def of(cls, config: AutoscaleConfig) -> Geometry:
        length = slice_ms(config)
        return cls(length, slices_in(max(config.window_s, config.merge_window_s), length))


class PartitionMeter:
    """Bytes and records per slice, and a sample of key hashes, of one partition."""

    __slots__ = ("geometry", "started_ms", "_slices", "_samples")

    def __init__(self, geometry: Geometry, now_ms: int) -> None:
        self.geometry = geometry
        self.started_ms = now_ms
        # [slice index, bytes, records], oldest first; slices without traffic are absent.
        self._slices: deque[list[int]] = deque()
        # (slice index, sample), oldest first.
        self._samples: deque[tuple[int, KeySample]] = deque(maxlen=SAMPLE_CAPACITY)

    def add(self, now_ms: int, nbytes: int, nrecords: int, samples: Iterable[KeySample]) -> None:
        index = now_ms // self.geometry.slice_ms
        slices = self._slices
        if slices and slices[-1][0] == index:
            last = slices[-1]
            last[1] += nbytes
            last[2] += nrecords
        elif not slices or slices[-1][0] < index:
            slices.append([index, nbytes, nrecords])
            oldest = index - self.geometry.keep
            while slices[0][0] < oldest:
                slices.popleft()
        else:
            self._add_earlier(index, nbytes, nrecords)
        for sample in samples:
            self._samples.append((index, sample))

    def _add_earlier(self, index: int, nbytes: int, nrecords: int) -> None:
        """Counts of a slice before the newest one (shipped late by another process)."""
        slices = self._slices
        if index < slices[-1][0] - self.geometry.keep:
            return  # older than anything kept
        for position in range(len(slices) - 1, -1, -1):
            entry = slices[position]
            if entry[0] == index:
                entry[1] += nbytes
                entry[2] += nrecords
                return
            if entry[0] < index:
                slices.insert(position + 1, [index, nbytes, nrecords])
                return
        slices.appendleft([index, nbytes, nrecords])

    def complete_slices(self, now_ms: int, count: int) -> tuple[Rate, ...]:
        """Rates of the last ``count`` complete slices, oldest first; fewer when the meter
        has not seen that many (the slice it started in is not complete)."""
        length = self.geometry.slice_ms
        current = now_ms // length
        first = max(self.started_ms // length + 1, current - count)
        if first >= current:
            return ()
        totals = {index: (b, r) for index, b, r in self._slices if first <= index < current}
        per_s = 1000 / length
        out = []
        for index in range(first, current):
            nbytes, nrecords = totals.get(index, (0, 0))
            out.append(Rate(nbytes * per_s, nrecords * per_s))
        return tuple(out)

    def recent_sample(self, now_ms: int, count: int) -> tuple[KeySample, ...]:
        """Sampled records of the last ``count`` slices and the current one."""
        oldest = now_ms // self.geometry.slice_ms - count
        return tuple(sample for index, sample in self._samples if index >= oldest)


class LoadMeters:
    """Every partition's meter, by topic incarnation and partition id.

    ``hash_key`` is the routing hash of a key (the broker's), so that sampled hashes are
    the points that routing compares with partition ranges.
    """

    def __init__(
        self,
        hash_key: Callable[[Key], int],
        *,
        clock_ms: Clock = monotonic_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.hash_key = hash_key
        self.clock_ms = clock_ms
        self._rng = rng or random.Random()  # noqa: S311 - where to sample, not a secret
        self._topics: dict[tuple[str, str], dict[int, PartitionMeter]] = {}

    # --- the produce path ----------------------------------------------------------------

    def record(
        self,
        key: PartitionKey,
        topic_config: Mapping[str, object],
        batch_bytes: int,
        records: IncomingRecords,
        indexes: Sequence[int],
    ) -> None:
        """Count one appended batch: the request's ``records`` at ``indexes``."""
        now = self.clock_ms()
        count = len(indexes)
        if not count:
            self.add(key, topic_config, now, 0, 0, ())
            return
        picks = min(SAMPLES_PER_BATCH, count)
        stride = count / picks
        # A batch of at most SAMPLES_PER_BATCH records has every record sampled, wherever
        # the samples start: no random draw for it (a single-record produce is such).
        offset = self._rng.random() * stride if count > picks else 0.0
        hash_key = self.hash_key
        samples = []
        for n in range(picks):
            index = indexes[int(offset + n * stride)]
            size = records.key_value_size(index)
            record_key = records.key(index)
            if record_key is None:
                samples.append(KeySample(None, size * stride, stride))
            else:
                preview = bytes(record_key[:KEY_PREVIEW_BYTES])
                samples.append(KeySample(hash_key(record_key), size * stride, stride, preview))
        self.add(key, topic_config, now, batch_bytes, count, samples)

    def add(
        self,
        key: PartitionKey,
        topic_config: Mapping[str, object],
        now_ms: int,
        nbytes: int,
        nrecords: int,
        samples: Sequence[KeySample],
    ) -> None:
        """Count ``nbytes`` and ``nrecords`` of traffic at ``now_ms`` (with their sampled
        records) in the partition's meter, started now if it has none."""
        meters = self._topics.get((key.tenant, key.incarnation))
        meter = None if meters is None else meters.get(key.partition_id)
        if meter is None:
            meter = self._start(key, Geometry.of(autoscale_config(topic_config)), self.clock_ms())
        if nrecords:
            meter.add(now_ms, nbytes, nrecords, samples)

    def add_measured(
        self,
        key: PartitionKey,
        geometry: Geometry,
        at_ms: int,
        nbytes: int,
        nrecords: int,
        samples: Sequence[KeySample],
    ) -> None:
        """Add traffic another process measured (see :class:`MeterOutbox`)."""
        meters = self._topics.get((key.tenant, key.incarnation))
        meter = None if meters is None else meters.get(key.partition_id)
        if meter is None:
            meter = self._start(key, geometry, self.clock_ms())
        meter.add(at_ms, nbytes, nrecords, samples)

    # --- partitions come and go --------------------------------------------------------

    def _start(self, key: PartitionKey, geometry: Geometry, now_ms: int) -> PartitionMeter:
        meter = PartitionMeter(geometry, now_ms)
        self._topics.setdefault((key.tenant, key.incarnation), {})[key.partition_id] = meter
        return meter

    def start(self, key: PartitionKey, topic_config: Mapping[str, object]) -> None:
        """Begin measuring a new partition now (a split's or a merge's child)."""
        self._start(key, Geometry.of(autoscale_config(topic_config)), self.clock_ms())

    def forget(self, key: PartitionKey) -> None:
        meters = self._topics.get((key.tenant, key.incarnation))
        if meters is not None:
            meters.pop(key.partition_id, None)

    def drop_topic(self, tenant: str, incarnation: str) -> None:
        self._topics.pop((tenant, incarnation), None)

    def keep_topics(self, live: set[tuple[str, str]]) -> None:
        """Forget the meters of every topic incarnation not in ``live``."""
        for topic in [t for t in self._topics if t not in live]:
            del self._topics[topic]

    def sync_topic(
        self,
        tenant: str,
        incarnation: str,
        active: Iterable[int],
        config: AutoscaleConfig,
    ) -> dict[int, PartitionMeter]:
        """Meters for exactly the ``active`` partitions: new ones start now, those of
        sealed partitions go, and all restart when the config cut time differently."""
        now = self.clock_ms()
        geometry = Geometry.of(config)
        old = self._topics.get((tenant, incarnation), {})
        meters = {}
        for pid in active:
            meter = old.get(pid)
            if meter is None or meter.geometry != geometry:
                meter = PartitionMeter(geometry, now)
            meters[pid] = meter
        self._topics[(tenant, incarnation)] = meters
        return meters

    # --- reading -------------------------------------------------------------------------

    def topic_load(
        self,
        tenant: str,
        incarnation: str,
        active: Sequence[PartitionRecord],
        config: AutoscaleConfig,
    ) -> TopicLoad:
        """What the policy needs of one topic now."""
        meters = self.sync_topic(tenant, incarnation, [p.partition_id for p in active], config)
        now = self.clock_ms()
        geometry = Geometry.of(config)
        window_n = slices_in(config.window_s, geometry.slice_ms)
        loads = []
        for partition in sorted(active, key=lambda p: p.hash_range.start):
            meter = meters[partition.partition_id]
            loads.append(
                PartitionLoad(
                    partition.partition_id,
                    partition.hash_range,
                    now - meter.started_ms,
                    meter.complete_slices(now, geometry.keep),
                    meter.recent_sample(now, window_n),
                )
            )
        return TopicLoad(geometry.slice_ms, tuple(loads))

    def rate(self, key: PartitionKey, config: AutoscaleConfig) -> tuple[Rate, int] | None:
        """A partition's mean rate over the complete slices of the last ``window_s``, and
        how long it has been measured; None if it is not measured here."""
        meters = self._topics.get((key.tenant, key.incarnation))
        meter = None if meters is None else meters.get(key.partition_id)
        if meter is None:
            return None
        now = self.clock_ms()
        window_n = slices_in(config.window_s, meter.geometry.slice_ms)
        return average(meter.complete_slices(now, window_n)), now - meter.started_ms

    def partitions_measured(self) -> int:
        return sum(len(meters) for meters in self._topics.values())


# --- measured in one process, decided in another ------------------------------------------

# Traffic is gathered per tenth of a second: slices are whole multiples of it.
OUTBOX_BUCKET_MS = 100
# Sampled records kept per partition and bucket; more are thinned, their weights raised.
OUTBOX_SAMPLES = 64


@dataclass(slots=True)
class MeteredBucket:
    """Traffic of one partition in one bucket of time, not sent yet."""

    geometry: Geometry
    nbytes: int = 0
    nrecords: int = 0
    seen: int = 0
    samples: list[KeySample] = field(default_factory=list)


class MeterOutbox(LoadMeters):
    """The meters of a process that does not decide: it keeps what its appends measured
    until :meth:`take` hands it over (to the process that runs the autoscaler, which adds
    it with :meth:`LoadMeters.add_measured`). Sampled records are thinned to
    :data:`OUTBOX_SAMPLES` per partition and bucket, each kept one standing for the ones
    dropped, so the sample stays weighted by bytes."""

    def __init__(
        self,
        hash_key: Callable[[Key], int],
        *,
        clock_ms: Clock = monotonic_ms,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(hash_key, clock_ms=clock_ms, rng=rng)
        self._outbox: dict[tuple[PartitionKey, int], MeteredBucket] = {}

    def add(
        self,
        key: PartitionKey,
        topic_config: Mapping[str, object],
        now_ms: int,
        nbytes: int,
        nrecords: int,
        samples: Sequence[KeySample],
    ) -> None:
        if not nrecords:
            return
        bucket = now_ms - now_ms % OUTBOX_BUCKET_MS
        entry = self._outbox.get((key, bucket))
        if entry is None:
            geometry = Geometry.of(autoscale_config(topic_config))
            entry = self._outbox[(key, bucket)] = MeteredBucket(geometry)
        entry.nbytes += nbytes
        entry.nrecords += nrecords
        kept = entry.samples
        for sample in samples:
            entry.seen += 1
            if len(kept) < OUTBOX_SAMPLES:
                kept.append(sample)
            else:
                slot = self._rng.randrange(entry.seen)
                if slot < OUTBOX_SAMPLES:
                    kept[slot] = sample

    def take(self) -> list[tuple[PartitionKey, int, MeteredBucket]]:
        """Everything measured since the last call: (partition, bucket start, traffic),
        with the kept samples weighted for the ones dropped."""
        out = []
        for (key, bucket), entry in self._outbox.items():
            kept = entry.samples
            scale = entry.seen / len(kept) if kept else 1.0
            if scale != 1.0:
                entry.samples = [
                    KeySample(s.hash, s.nbytes * scale, s.nrecords * scale, s.key) for s in kept
                ]
            out.append((key, bucket, entry))
        self._outbox = {}
        return out
