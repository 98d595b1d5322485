"""The read cache: what cold reads fetched from the object store, least recently used out
first, never more than its bound.

It lives in memory. What it holds is a copy of data that is safe in the object store, and
its job is short-lived reuse: the chunk a sequential reader will consume next (read-ahead),
the indexes of the segments being read, and ranges several consumers read at about the same
time. Keeping that in memory costs no disk that local retention is trying to free, no writes
and no cleanup after a crash; a restart starts it empty, which costs one fetch per range.

Entries are immutable values (bytes, parsed indexes) under hashable keys, each with the size
it is charged. :meth:`ReadCache.put` evicts from the least recently used end until the total
is within the bound; a value larger than the whole bound is not kept at all. A reader that
still holds a value evicted meanwhile keeps using it: eviction only forgets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ReadCache:
    """A least-recently-used map bounded by the bytes its values are charged."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError("the read cache needs a positive size")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.size_bytes = 0
        # The most the cache ever held: stays within the bound (tests and /metrics see it).
        self.peak_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` as the most recently used; answers whether it was kept."""
        self.discard(key)
        if size > self.capacity_bytes:
            return False
        while self.size_bytes + size > self.capacity_bytes:
            _, (_, gone) = self._entries.popitem(last=False)
            self.size_bytes -= gone
            self.evictions += 1
        self._entries[key] = (value, size)
        self.size_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.size_bytes)
        return True

    def discard(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size_bytes -= entry[1]

    def discard_where(self, doomed: Callable[[Hashable], bool]) -> int:
        """Forget every entry whose key ``doomed`` picks (a deleted topic's); answers how
        many."""
        keys = [key for key in self._entries if doomed(key)]
        for key in keys:
            self.discard(key)
        return len(keys)
