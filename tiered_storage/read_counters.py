"""What cold reads count for /metrics: reads, cache hits and misses, fetches from the
store, and the latency of both."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


class LatencyHistogram:
    """Counts of observed durations per bucket (seconds), for a Prometheus histogram."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # the last one: above every bucket
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class ColdReadCounters:
    """Numbers for /metrics. A *hit* is a chunk or index a read needed that was cached or
    already being fetched (by read-ahead, or for another reader); a *miss* had to be
    fetched by the read itself."""

    reads: int = 0
    hits: int = 0
    misses: int = 0
    fetches: int = 0
    fetched_bytes: int = 0
    fetch_failures: int = 0
    read_ahead_chunks: int = 0
    read_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
    fetch_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)
