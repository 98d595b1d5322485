"""Homes across nodes by rendezvous hashing: one answer in every process and for every order
the live nodes are listed in, an even spread, and a membership change that moves only the
homes it must."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from gateway.processes.homes import (
    answer_home,
    answer_node,
    group_home,
    group_node,
    quota_home,
    quota_node,
    rendezvous,
)
from tests.servers import ROOT

KEYS = [f"group-{n}" for n in range(10_000)]
NODES = ["node-1", "node-2", "node-3", "node-4", "node-5"]


def homes(nodes: list[str]) -> dict[str, str]:
    return {key: group_node("acme", "orders", key, nodes) for key in KEYS}


def chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_the_answers_are_pinned() -> None:
    """Nodes of different builds must agree on homes: changing the weights is a breaking
    change, which this catches."""
    nodes = NODES[:4]
    assert [group_node("acme", "orders", f"g{n}", nodes) for n in range(6)] == [
        "node-1",
        "node-1",
        "node-3",
        "node-1",
        "node-1",
        "node-3",
    ]
    assert [answer_node("acme", "orders", f"k{n}", nodes) for n in range(6)] == [
        "node-1",
        "node-1",
        "node-3",
        "node-1",
        "node-4",
        "node-2",
    ]
    assert [quota_node(f"t{n}", nodes) for n in range(6)] == [
        "node-1",
        "node-1",
        "node-4",
        "node-4",
        "node-3",
        "node-4",
    ]


def test_every_process_gives_the_same_answer() -> None:
    """Other hash seeds (so ``hash()`` and a set's order differ): the same homes."""
    script = (
        "from gateway.processes.homes import group_node\n"
        f"nodes = set({NODES!r})\n"
        "print(','.join(group_node('acme', 'orders', f'group-{n}', nodes) for n in range(500)))\n"
    )
    here = ",".join(group_node("acme", "orders", f"group-{n}", NODES) for n in range(500))
    for seed in ("1", "2", "12345"):
        out = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert out.stdout.strip() == here


def test_the_order_nodes_are_listed_in_does_not_matter() -> None:
    want = [rendezvous(NODES, "acme", key) for key in KEYS[:300]]
    for order in itertools.islice(itertools.permutations(NODES), 0, 120, 17):
        assert [rendezvous(order, "acme", key) for key in KEYS[:300]] == want
    assert [rendezvous(iter(reversed(NODES)), "acme", key) for key in KEYS[:300]] == want


@pytest.mark.parametrize("count", [3, 4, 5])
def test_homes_spread_evenly(count: int) -> None:
    nodes = NODES[:count]
    placed = homes(nodes)
    counts = [sum(1 for node in placed.values() if node == n) for n in nodes]
    # Chi-square with count-1 degrees of freedom: 18.5 is past its 0.1% tail for up to 4.
    assert chi_square(counts) < 18.5, counts
    # The three kinds of state spread too (they weigh different names).
    quotas = [quota_node(key, nodes) for key in KEYS]
    answers = [answer_node("acme", "orders", key, nodes) for key in KEYS]
    assert chi_square([quotas.count(n) for n in nodes]) < 18.5
    assert chi_square([answers.count(n) for n in nodes]) < 18.5


@pytest.mark.parametrize("leaving", NODES)
def test_a_node_leaving_hands_on_only_the_homes_it_held(leaving: str) -> None:
    before = homes(NODES)
    after = homes([n for n in NODES if n != leaving])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == leaving}
    # And they go to every other node, not to one heir.
    assert len({after[key] for key in moved}) == len(NODES) - 1


@pytest.mark.parametrize("count", [3, 4])
def test_a_node_joining_takes_about_its_share_and_only_for_itself(count: int) -> None:
    nodes = NODES[:count]
    before = homes(nodes)
    after = homes([*nodes, "node-new"])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "node-new" for key in moved)
    share = len(moved) / len(KEYS)
    assert abs(share - 1 / (count + 1)) < 0.03, share


def test_no_live_node_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no live node"):
        rendezvous([], "acme", "orders")
    with pytest.raises(ValueError, match="no live node"):
        quota_node("acme", set())


def test_worker_homes_inside_a_node_are_unchanged() -> None:
    """Workers of one node still split by index, as earlier builds did."""
    assert [group_home("acme", "orders", f"g{n}", 4) for n in range(8)] == [2, 1, 2, 3, 1, 1, 2, 2]
    assert [answer_home("acme", "orders", f"k{n}", 4) for n in range(8)] == [1, 1, 2, 2, 2, 0, 2, 2]
    assert [quota_home(f"t{n}", 4) for n in range(8)] == [2, 1, 0, 3, 1, 0, 2, 2]
