"""Where new partitions go: the least loaded worker process, by measured throughput.

A new partition (a topic's first, a split's two children, a merge's child) is placed when
the catalog creates it, for good. Each worker process measures the bytes per second its
partitions take (appends, as the owner wrote them) and counts its active partitions. The
partitions a change replaces stop taking writes, so their throughput and their count leave
their owners; the new ones are expected to share it evenly. Each new partition then goes,
in turn, to the worker whose load would be lowest, loads within a small quantum counting
as equal so that, among similar loads, the worker with fewer active partitions wins (an idle
server spreads partitions by count), then the lowest index. So a hot partition's children
leave its worker for the idle ones: a split spreads a hot topic over cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Loads closer than this share of the total (and never less than 1 KiB/s) are equal.
LOAD_QUANTUM_SHARE = 0.05
MIN_LOAD_QUANTUM = 1024.0


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """What one worker process carries now."""

    bytes_per_s: float
    active_partitions: int


@dataclass(frozen=True, slots=True)
class Replaced:
    """A partition a change replaces: its owner and the throughput it takes now."""

    owner: int
    bytes_per_s: float


def place(loads: Mapping[int, WorkerLoad], replaced: Sequence[Replaced], count: int) -> list[int]:
    """Workers for ``count`` new partitions, given the workers that can take them now."""
    if not loads:
        raise ValueError("no worker to place partitions on")
    projected = {w: [load.bytes_per_s, float(load.active_partitions)] for w, load in loads.items()}
    moving = 0.0
    for partition in replaced:
        moving += partition.bytes_per_s
        if partition.owner in projected:
            entry = projected[partition.owner]
            entry[0] = max(0.0, entry[0] - partition.bytes_per_s)
            entry[1] = max(0.0, entry[1] - 1)
    share = moving / count
    total = sum(entry[0] for entry in projected.values()) + moving
    quantum = max(MIN_LOAD_QUANTUM, total * LOAD_QUANTUM_SHARE)
    out: list[int] = []
    for _ in range(count):
        chosen = min(projected, key=lambda w: (projected[w][0] // quantum, projected[w][1], w))
        out.append(chosen)
        projected[chosen][0] += share
        projected[chosen][1] += 1
    return out
