"""The name of one partition: its tenant, its topic's incarnation and its id.

It has a module of its own because every layer names partitions with it (the worker and
its Protocol, the seam to object storage, groups, tiered storage, the gateway): each imports
it from here, and none has to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class PartitionKey:
    tenant: str
    incarnation: str
    partition_id: int
