"""Where a topic's keys go, as the client last saw it: the hash ranges of its active partitions.

The server routes a keyed record to the active partition whose hash range holds
``xxh3_64(key)``, and the keyless records of one request together to one partition of its
choosing. A producer that sends one batch per partition lets the server store each batch
as it came instead of cutting it into pieces; :class:`Grouping` groups a request's
records so. The ranges come from topic describe and go stale when the topic is
split or merged: the client notices when an answer places a record elsewhere than
predicted, and reads them again.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from partitions.batch import NewRecord


@dataclass(frozen=True, slots=True)
class HashRanges:
    """The active partitions of a topic, by the start of their hash range (ascending)."""

    starts: tuple[int, ...]
    ids: tuple[int, ...]

    @classmethod
    def of_topic(cls, described: Mapping[str, Any]) -> HashRanges:
        """From a topic describe answer."""
        active = sorted(
            (int(p["hash_range"]["start"]), int(p["id"]))
            for p in described["partitions"]
            if p["state"] == "active"
        )
        return cls(tuple(start for start, _ in active), tuple(pid for _, pid in active))

    def partition_of(self, key: bytes) -> int:
        point = xxhash.xxh3_64_intdigest(key)
        return self.ids[bisect.bisect_right(self.starts, point) - 1]


class Grouping:
    """A request's records as one group per partition they go to, each group in request
    order, groups in the order their first record came. Keyless records are a group of
    their own (``None``: the server chooses its partition), unless the topic has one
    partition; without ranges every record is in that group."""

    def __init__(self, records: Sequence[NewRecord], ranges: HashRanges | None) -> None:
        groups: dict[int | None, list[int]] = {}
        if ranges is None:
            groups[None] = list(range(len(records)))
        elif len(ranges.ids) == 1:
            # One partition takes them all, keyed or not: one group, as they came.
            groups[ranges.ids[0]] = list(range(len(records)))
        else:
            for index, record in enumerate(records):
                pid = None if record.key is None else ranges.partition_of(record.key)
                groups.setdefault(pid, []).append(index)
        self.groups = groups
        # Request index of every record in the order the groups send them.
        self.order = [index for indexes in groups.values() for index in indexes]

    def in_request_order(self, answered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """(partition, offset) per record in request order, from those in sent order."""
        out: list[tuple[int, int]] = [(0, 0)] * len(answered)
        for position, index in enumerate(self.order):
            out[index] = answered[position]
        return out

    def predicted(self, placed: Sequence[tuple[int, int]]) -> bool:
        """Whether every record of a group with a partition went there (``placed`` in
        request order); when not, the topic changed shape since the ranges were read."""
        return all(
            placed[index][0] == pid
            for pid, indexes in self.groups.items()
            if pid is not None
            for index in indexes
        )
