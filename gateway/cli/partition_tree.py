"""A topic's partitions as an indented tree of their lineage, for people.

Each partition is one line: its id, state, hash range (as shares of the key-hash space),
offsets and, for active partitions, the throughput the autoscaler measured. Children are
drawn under their parent. A partition made by a merge has two parents: it is drawn in
full under the first and named again under the second (``-> 5, above``), so the tree shows
every edge without repeating subtrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.cli.output import size

HASH_SPACE = 1 << 64


def _share(bound: str | int) -> str:
    return f"{int(bound) * 100 / HASH_SPACE:.4g}%"


def partition_line(partition: Mapping[str, Any], rate: Mapping[str, Any] | None) -> str:
    hash_range = partition.get("hash_range") or {}
    parts = [
        f"{partition['id']}",
        f"{partition.get('state', '?')}",
        f"hash {_share(hash_range.get('start', 0))}-{_share(hash_range.get('end', HASH_SPACE))}",
        f"offsets {partition.get('start_offset', 0):,}..{partition.get('end_offset', 0):,}",
    ]
    # Not measured yet (a new partition, or an autoscaler that has not looked): none.
    if rate is not None and rate.get("records_per_s") is not None:
        parts.append(f"{rate['records_per_s']:,.1f} rec/s {size(rate.get('bytes_per_s'))}/s")
    worker = partition.get("worker")
    if worker is not None:
        parts.append(f"worker {worker}")
    return "  ".join(parts)


def partition_tree(described: Mapping[str, Any]) -> list[str]:
    """The lines of the tree of a topic as ``GET /v1/topics/{topic}`` describes it."""
    partitions = {p["id"]: p for p in described.get("partitions", [])}
    rates = {r["partition"]: r for r in (described.get("autoscale") or {}).get("throughput", [])}
    lines: list[str] = []
    drawn: set[int] = set()

    def draw(pid: int, prefix: str, branch: str, below: str) -> None:
        """``branch`` leads this partition's line, ``below`` its children's lines."""
        if pid in drawn:
            lines.append(f"{prefix}{branch}-> {pid}, above")
            return
        drawn.add(pid)
        partition = partitions[pid]
        lines.append(prefix + branch + partition_line(partition, rates.get(pid)))
        children = [c for c in partition.get("children", []) if c in partitions]
        for index, child in enumerate(children):
            last = index == len(children) - 1
            draw(child, prefix + below, "└─ " if last else "├─ ", "   " if last else "│  ")

    roots = [pid for pid, p in sorted(partitions.items()) if not p.get("parents")]
    # Partitions whose parents are gone (retention) are roots of their own.
    for pid in roots + sorted(partitions):
        if pid not in drawn:
            draw(pid, "", "", "")
    return lines


def topic_summary(described: Mapping[str, Any]) -> str:
    partitions = described.get("partitions", [])
    active = sum(1 for p in partitions if p.get("state") == "active")
    return (
        f"topic {described.get('name')}: {active} active, "
        f"{len(partitions) - active} sealed partitions"
    )
