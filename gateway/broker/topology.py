"""What differs between one process, worker processes and (later) nodes: one object.

The broker asks its :class:`Topology` every question whose answer depends on how many
processes serve: which partitions keyless records may go to without a hop, where new
partitions go, who hears of a topic change, whether this process runs the once-per-server
work, what topic describe adds per partition, where an idempotency key's answers are kept,
and what the autoscaler (which runs once) says of a topic. :class:`SingleProcess` is the
answer of a server that is one process; ``gateway/processes/topology.py`` has the one of a
worker process among several. The tenancy room asks the same object where a tenant's
quota buckets live and who hears of a tenant's change (its own Protocols say so).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.broker.views import TopicView
from partitions.partition_key import PartitionKey


@dataclass(frozen=True, slots=True)
class AnswerTicket:
    """What the process keeping an idempotency key's answers said of an attempt: the
    answer, or what to write and how to tag it."""

    answer: list[tuple[int, int]] | None
    missing: list[int] = field(default_factory=list)
    request_hash: bytes = b""
    accepted_ms: int = 0
    total_records: int = 0
    token: int = 0


class AnswerHome(Protocol):
    """Another process, which keeps the answers of an idempotency key."""

    async def claim(
        self,
        tenant: str,
        topic: str,
        incarnation: str,
        key: str,
        request_hash: bytes,
        total: int,
    ) -> AnswerTicket:
        """Start an attempt: the answer, or the records still to write (the attempt is
        then this process's until :meth:`settle`)."""
        ...

    async def settle(
        self,
        ticket: AnswerTicket,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> list[tuple[int, int]] | None:
        """Where the attempt's records went; answers the request's answer once complete."""
        ...


class Topology(Protocol):
    @property
    def leader(self) -> bool:
        """Whether this process runs the once-per-server work: finishing interrupted
        deletions, the autoscaler's decisions, object-store cleanup, sampling storage."""
        ...

    def keyless_targets(self, view: TopicView) -> list[int]:
        """The active partitions keyless records of this request may go to: any, but those
        this process owns cost no hop."""
        ...

    async def place(
        self, tenant: str, replaced: list[PartitionKey], count: int
    ) -> list[int] | None:
        """Where ``count`` new partitions replacing ``replaced`` go (None: nowhere in
        particular, as in one process)."""
        ...

    async def topic_changed(self, tenant: str, name: str) -> None:
        """This process created, reconfigured, split or merged the topic: the others read
        it again before the change is answered."""
        ...

    async def partition_extra(self, key: PartitionKey) -> dict[str, Any]:
        """What topic describe adds to a partition (its owner, with several processes)."""
        ...

    def answer_home(self, tenant: str, topic: str, key: str) -> AnswerHome | None:
        """Where the idempotency key's answers are kept, when not here."""
        ...

    async def leader_autoscale(self, tenant: str, name: str) -> dict[str, Any] | None:
        """The autoscaler's view of a topic from the process that decides, when that is
        another one and it answers (None: render this process's own)."""
        ...


class SingleProcess:
    """The topology of a server that is one process: everything is here."""

    @property
    def leader(self) -> bool:
        return True

    def keyless_targets(self, view: TopicView) -> list[int]:
        return view.active_ids

    async def place(
        self, tenant: str, replaced: list[PartitionKey], count: int
    ) -> list[int] | None:
        return None

    async def topic_changed(self, tenant: str, name: str) -> None:
        return None

    async def partition_extra(self, key: PartitionKey) -> dict[str, Any]:
        return {}

    def answer_home(self, tenant: str, topic: str, key: str) -> AnswerHome | None:
        return None

    async def leader_autoscale(self, tenant: str, name: str) -> dict[str, Any] | None:
        return None

    # --- what the tenancy room asks (gateway/tenancy's Protocols) --------------------------

    def quota_home(self, tenant: str) -> None:
        """A tenant's quota buckets are here."""
        return None

    async def tenant_changed(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None:
        """Nobody else caches the tenant's keys or quotas."""
        return None

    @property
    def other_meters(self) -> None:
        """No other process meters usage."""
        return None

    @property
    def other_key_uses(self) -> None:
        """No other process notes the uses of keys."""
        return None


SINGLE_PROCESS = SingleProcess()


def _conforms(topology: SingleProcess) -> Topology:
    """Lets mypy prove that the null object implements the whole Protocol."""
    return topology
