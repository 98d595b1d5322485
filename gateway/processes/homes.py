"""Which worker process is the home of a piece of state that must live in one: a consumer
group, an idempotency key's answers, a tenant's quota buckets. A stable hash of the state's
name, modulo the number of workers: the same in every process, with no call."""

from __future__ import annotations

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
