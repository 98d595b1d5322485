"""The name of one partition: its tenant, its topic's incarnation and its id.

It has a module of its own because every layer names partitions with it (the worker and
its Protocol, the seam to object storage, groups, tiered storage, the gateway): each imports
it from here, and none has to import another for it.
"""

from __future__ import annotations

from typing import NamedTuple


class PartitionKey(NamedTuple):
    """A named tuple, not a dataclass: it is a dict key on every append's path (the log,
    its appends in flight, the load meters), and a tuple hashes and compares in C."""

    tenant: str
    incarnation: str
    partition_id: int
