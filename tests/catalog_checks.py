"""Invariants every catalog keeps, checked from the outside (shared by several tests)."""

from __future__ import annotations

import random

from partitions.catalog import HASH_SPACE_END, Catalog, LineageChange, PartitionRecord


async def random_lineage_change(
    catalog: Catalog, rng: random.Random, step: int, *, max_active: int | None = None
) -> LineageChange:
    """Split a random active partition of acme/orders at a random point, or merge two
    adjacent ones (always merge once more than ``max_active`` are active)."""
    active = sorted(
        (p for p in await catalog.list_partitions("acme", "orders") if p.active),
        key=lambda p: p.hash_range.start,
    )
    crowded = max_active is not None and len(active) > max_active
    if crowded or (len(active) > 1 and rng.random() < 0.4):
        i = rng.randrange(len(active) - 1)
        return await catalog.merge_partitions(
            "acme",
            "orders",
            [active[i].partition_id, active[i + 1].partition_id],
            end_offsets=[step, step],
        )
    target = rng.choice([p for p in active if p.hash_range.end - p.hash_range.start > 1])
    at = rng.randrange(target.hash_range.start + 1, target.hash_range.end)
    return await catalog.split_partition(
        "acme", "orders", target.partition_id, at=at, end_offset=step
    )


def assert_lineage_invariants(partitions: list[PartitionRecord]) -> None:
    """Active ranges cover the hash space exactly once; lineage is whole and acyclic."""
    by_id = {p.partition_id: p for p in partitions}
    assert len(by_id) == len(partitions), "a partition id is used twice"
    active = sorted((p for p in partitions if p.active), key=lambda p: p.hash_range.start)
    assert active, "no active partition"
    assert active[0].hash_range.start == 0
    assert active[-1].hash_range.end == HASH_SPACE_END
    for left, right in zip(active, active[1:], strict=False):
        assert left.hash_range.end == right.hash_range.start, "gap or overlap"
    for p in partitions:
        for child_id in p.children:
            child = by_id[child_id]
            assert p.partition_id in child.parents
            assert child_id > p.partition_id, "lineage must point forward"
        for parent_id in p.parents:
            parent = by_id[parent_id]
            assert not parent.active and parent.end_offset is not None
            assert p.partition_id in parent.children
        if p.children:
            assert not p.active
        if not p.active:
            assert p.children, "sealed without children (half a split or merge)"
    # The children of a sealed partition cover exactly its range (split), or its range is
    # inside the single child's (merge).
    for p in partitions:
        if len(p.children) == 2:
            a, b = (by_id[c] for c in p.children)
            assert a.hash_range.start == p.hash_range.start
            assert a.hash_range.end == b.hash_range.start
            assert b.hash_range.end == p.hash_range.end
        elif len(p.children) == 1:
            child = by_id[p.children[0]]
            assert child.hash_range.start <= p.hash_range.start
            assert p.hash_range.end <= child.hash_range.end
