"""Where a piece of state that must live in one place has its home: a consumer group, an
idempotency key's answers, a tenant's quota buckets.

Inside one node, the home is a worker process: a stable hash of the state's name modulo the
number of workers, the same in every process, with no call.

Across nodes, the home is a node, chosen by rendezvous (highest-random-weight) hashing over
the live nodes: each node weighs the state's name with its own id, and the heaviest is the
home. Every node that reads the same live set picks the same home, whatever the order it
lists them in; a node that leaves hands on only the homes it held, each to whichever node
weighs next, and a node that joins takes about 1/N of the homes, each from the node that
had it. Weights are xxh3 of bytes, never ``hash()``: nodes of one cluster must agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash


def stable_hash(*parts: str) -> int:
    """The same in every process (unlike ``hash``)."""
    return int(xxhash.xxh3_64_intdigest("\0".join(parts).encode()))


def group_home(tenant: str, topic: str, group: str, count: int) -> int:
    return stable_hash(tenant, topic, "group", group) % count


def answer_home(tenant: str, topic: str, key: str, count: int) -> int:
    return stable_hash(tenant, topic, "idempotency", key) % count


def quota_home(tenant: str, count: int) -> int:
    return stable_hash("quota", tenant) % count


def rendezvous(nodes: Iterable[str], *parts: str) -> str:
    """The node, of ``nodes``, that is the home of the state named by ``parts``."""
    name = "\0".join(parts).encode()
    # (weight, node): two nodes of equal weight still give one answer everywhere.
    best = max(
        ((xxhash.xxh3_64_intdigest(node.encode() + b"\0" + name), node) for node in nodes),
        default=None,
    )
    if best is None:
        raise ValueError("no live node to be the home of " + repr("/".join(parts)))
    return best[1]


def group_node(tenant: str, topic: str, group: str, nodes: Iterable[str]) -> str:
    return rendezvous(nodes, tenant, topic, "group", group)


def answer_node(tenant: str, topic: str, key: str, nodes: Iterable[str]) -> str:
    return rendezvous(nodes, tenant, topic, "idempotency", key)


def quota_node(tenant: str, nodes: Iterable[str]) -> str:
    return rendezvous(nodes, "quota", tenant)
