"""The catalog: the one source of truth about what exists.

Tenants and their API keys, topics and their incarnations, partitions and their lineage,
consumer groups and their committed offsets, idempotency records, remote segments and
metered usage all live behind the :class:`Catalog` Protocol. Its stores are SQLite in the
data directory (``partitions.catalog_sqlite``, the default) and DynamoDB for several nodes
(``partitions.catalog_dynamodb``), so nothing here speaks SQL, and every operation is one that
DynamoDB can do atomically (a conditional write or a transaction of a few items).

Rules every store keeps:

- Every key includes the tenant. Another tenant's topic is as absent as a missing one.
- A topic name maps to at most one *live* incarnation (a UUID). Deleting a topic marks its
  incarnation deleted; creating the name again makes a new incarnation, so the old one's
  data, offsets and objects can never show through.
- Partition ids of a topic are never reused: a counter on the topic hands them out.
- The active partitions of a topic cover the hash space ``[0, 2**64)`` exactly once.
  Creation makes partition 0 over all of it; a split replaces one active partition by two
  that divide its range at an interior point; a merge replaces two adjacent active
  partitions by one covering both. Each is one atomic operation: it seals the parents at
  the given end offsets and creates the children, or changes nothing.
- Lineage is acyclic: children always have larger ids than their parents.
- Rows that concurrent writers may race on carry a ``version``; writers that read-modify-
  write pass the version they read, and the loser of a race gets
  :class:`~partitions.errors.VersionConflictError`.
- Owner-side writes about a partition (a remote segment added, moved on or forgotten, the
  log start advanced, a parent sealed by a split or a merge) may carry a
  :class:`LeaseFence`: the writer's partition lease as it believes it holds it. A store
  shared by several nodes (DynamoDB) makes the write and a check of that lease one atomic
  step, and refuses it with :class:`~partitions.errors.LeaseLostError`, changing nothing,
  once the lease has moved to another session or epoch: an owner that was judged dead and
  replaced (a zombie) can no longer change what its successor owns. Without a fence (one
  machine, or a shared store used by one node) nothing is checked; a store that only ever
  has one owner per partition (SQLite) accepts a fence and ignores it.
- Usage rows are counters per tenant and UTC hour that only ever grow by *adding* deltas
  (a DynamoDB ``ADD``), so that any number of processes can flush into one catalog without
  reading first; they outlive their tenant (its last bill still needs them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

HASH_SPACE_END = 1 << 64
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True, order=True)
class HashRange:
    """A half-open range ``[start, end)`` of the 64-bit key-hash space."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= HASH_SPACE_END:
            raise ValueError(f"not a hash range: [{self.start}, {self.end})")

    def contains(self, point: int) -> bool:
        return self.start <= point < self.end

    def to_json(self) -> dict[str, str]:
        """Hash points are decimal strings in JSON, as Kinesis writes them."""
        return {"start": str(self.start), "end": str(self.end)}


WHOLE_SPACE = HashRange(0, HASH_SPACE_END)


class PartitionState(StrEnum):
    ACTIVE = "active"
    SEALED = "sealed"


class RemoteSegmentState(StrEnum):
    """KIP-405's life of a remote segment."""

    COPY_STARTED = "copy-started"
    COPY_FINISHED = "copy-finished"
    DELETE_STARTED = "delete-started"


@dataclass(frozen=True, slots=True, order=True)
class LeaseFence:
    """The lease a writer holds on a partition: its node session and the lease's epoch.

    Given to an owner-side write, it makes the write conditional on the partition's lease
    being still this session's at this epoch (see the module's rules)."""

    session_id: str
    epoch: int

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"a lease epoch starts at 1, not {self.epoch}")


@dataclass(frozen=True, slots=True)
class TenantRecord:
    name: str
    created_ms: int
    quotas: Mapping[str, Any] = field(default_factory=dict)
    plan: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1


@dataclass(frozen=True, slots=True)
class TenantCounts:
    """What a tenant has now: live topics, and active partitions across them."""

    topics: int
    active_partitions: int


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's bounds on live topics and active partitions (None: unbounded)."""

    max_topics: int | None = None
    max_partitions: int | None = None


UNLIMITED = TenantLimits()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key, by its hash: the secret itself is never stored."""

    tenant: str
    key_id: str
    key_hash: str
    scope: Mapping[str, Any]
    created_ms: int
    last_used_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TopicRecord:
    tenant: str
    name: str
    incarnation: str
    config: Mapping[str, Any]
    created_ms: int
    deleted: bool = False
    deleted_ms: int | None = None
    version: int = 1


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    tenant: str
    topic: str
    incarnation: str
    partition_id: int
    hash_range: HashRange
    state: PartitionState
    parents: tuple[int, ...]
    children: tuple[int, ...]
    # The log start as last reported (it only rises) and, once sealed, the final end.
    start_offset: int
    end_offset: int | None
    created_ms: int
    sealed_ms: int | None = None
    version: int = 1

    @property
    def active(self) -> bool:
        return self.state is PartitionState.ACTIVE


@dataclass(frozen=True, slots=True)
class LineageChange:
    """What a split or a merge did: the sealed parents and the new children."""

    sealed: tuple[PartitionRecord, ...]
    created: tuple[PartitionRecord, ...]


@dataclass(frozen=True, slots=True)
class GroupRecord:
    tenant: str
    topic: str
    group: str
    generation: int
    metadata: Mapping[str, Any]
    # partition id -> the next offset to read
    offsets: Mapping[int, int]
    version: int


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The answer to a produce request, remembered under its ``Idempotency-Key``."""

    tenant: str
    topic: str
    key: str
    request_hash: str
    answer: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class RemoteSegmentRecord:
    tenant: str
    incarnation: str
    partition_id: int
    base_offset: int
    last_offset: int
    size_bytes: int
    first_timestamp_ms: int
    max_timestamp_ms: int
    object_key: str
    state: RemoteSegmentState
    version: int = 1
    # The lease epoch its objects were uploaded under: part of their keys when not 0 (see
    # tiered_storage.layout). 0 for one machine and every segment uploaded before epochs.
    epoch: int = 0


USAGE_COUNTERS = (
    "requests",
    "records_in",
    "records_out",
    "bytes_in",
    "bytes_out",
    "stored_byte_seconds",
    "partition_seconds",
)


@dataclass(frozen=True, slots=True)
class UsageCounters:
    """What a tenant used in some time: all non-negative integers.

    ``stored_byte_seconds`` and ``partition_seconds`` are integrals over time (bytes stored
    times seconds, active partitions times seconds); the API shows them in hours.
    """

    requests: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stored_byte_seconds: int = 0
    partition_seconds: int = 0

    def __add__(self, other: UsageCounters) -> UsageCounters:
        return UsageCounters(
            *(getattr(self, name) + getattr(other, name) for name in USAGE_COUNTERS)
        )

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in USAGE_COUNTERS)

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in USAGE_COUNTERS}


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """A tenant's counters for the UTC hour starting at ``hour_ms`` (a multiple of
    :data:`HOUR_MS`): a stored row, or a delta to add to one."""

    tenant: str
    hour_ms: int
    counters: UsageCounters


class Catalog(Protocol):
    """Everything the event bus knows about what exists. All methods are coroutines.

    Lookups of a missing thing raise the matching ``*NotFoundError``; every refusal has
    its own error type (see ``partitions.errors``).
    """

    # --- installation-wide settings ------------------------------------------------------

    async def get_setting(self, name: str) -> str | None: ...

    async def put_setting(self, name: str, value: str) -> None: ...

    # --- tenants and keys ----------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> TenantRecord: ...

    async def get_tenant(self, name: str) -> TenantRecord: ...

    async def list_tenants(self) -> list[TenantRecord]: ...

    async def update_tenant(
        self,
        name: str,
        *,
        expected_version: int,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> TenantRecord: ...

    async def delete_tenant(self, name: str) -> list[TopicRecord]:
        """Remove the tenant, its keys, groups and idempotency records; mark its topics
        deleted. Answers the topics it marked, whose data the caller then removes."""
        ...

    async def tenant_counts(self, tenant: str) -> TenantCounts:
        """Live topics and active partitions of the tenant (what its limits count)."""
        ...

    async def add_api_key(
        self, tenant: str, key_id: str, key_hash: str, scope: Mapping[str, Any]
    ) -> ApiKeyRecord: ...

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    async def list_api_keys(self, tenant: str) -> list[ApiKeyRecord]: ...

    async def revoke_api_key(self, tenant: str, key_id: str) -> None: ...

    async def touch_api_key(self, tenant: str, key_id: str, used_ms: int) -> None: ...

    # --- topics --------------------------------------------------------------------------

    async def create_topic(
        self,
        tenant: str,
        name: str,
        config: Mapping[str, Any],
        *,
        max_topics: int | None = None,
        max_partitions: int | None = None,
        placement: Sequence[int] | None = None,
    ) -> tuple[TopicRecord, PartitionRecord]:
        """Create a topic with partition 0 over the whole hash space, atomically.

        A live topic of the same name raises :class:`TopicExistsError`. With limits, a
        tenant that already has ``max_topics`` live topics raises :class:`TopicLimitError`,
        and one with ``max_partitions`` active partitions :class:`PartitionLimitError`; the
        count and the creation are one atomic step, so racing creations cannot pass them.

        ``placement`` names the worker that owns each partition created (here one), written
        in the same step, so that no process ever sees the partition without its owner.
        """
        ...

    async def get_topic(self, tenant: str, name: str) -> TopicRecord: ...

    async def list_topics(
        self, tenant: str, *, after: str | None = None, limit: int = 100
    ) -> list[TopicRecord]:
        """Live topics in name order, starting after ``after`` (for pagination)."""
        ...

    async def update_topic_config(
        self, tenant: str, name: str, config: Mapping[str, Any], *, expected_version: int
    ) -> TopicRecord: ...

    async def delete_topic(self, tenant: str, name: str) -> TopicRecord:
        """Mark the live incarnation deleted and drop its groups and idempotency records.

        Its partitions and remote segments stay, under the old incarnation, until
        :meth:`purge_topic` once their data is gone.
        """
        ...

    async def list_deleted_topics(self) -> list[TopicRecord]: ...

    async def purge_topic(self, tenant: str, incarnation: str) -> None:
        """Forget a deleted incarnation entirely (after its data and objects are gone)."""
        ...

    # --- partitions ----------------------------------------------------------------------

    async def list_partitions(
        self, tenant: str, topic: str, *, incarnation: str | None = None
    ) -> list[PartitionRecord]:
        """Every partition of the live topic, active and sealed, by id.

        With ``incarnation``, only while that is the live incarnation of the name (else
        :class:`TopicNotFoundError`): work that holds an incarnation (retention) never reads
        the partitions of a topic deleted and created again under it.
        """
        ...

    async def get_partition(
        self, tenant: str, topic: str, partition_id: int
    ) -> PartitionRecord: ...

    async def split_partition(
        self,
        tenant: str,
        topic: str,
        partition_id: int,
        *,
        at: int,
        end_offset: int,
        max_partitions: int | None = None,
        placement: Sequence[int] | None = None,
        fence: LeaseFence | None = None,
    ) -> LineageChange:
        """Seal ``partition_id`` at ``end_offset``; create children ``[start, at)`` and
        ``[at, end)``. ``at`` must lie strictly inside the range. A split adds one active
        partition: with ``max_partitions``, one that would take the tenant's active
        partitions (across all its topics) past it raises :class:`PartitionLimitError`.
        ``placement``: the children's workers, low child first. ``fence``: the parent
        owner's lease (:class:`~partitions.errors.LeaseLostError` once it moved)."""
        ...

    async def merge_partitions(
        self,
        tenant: str,
        topic: str,
        partition_ids: Sequence[int],
        *,
        end_offsets: Sequence[int],
        placement: Sequence[int] | None = None,
        fences: Sequence[LeaseFence] | None = None,
    ) -> LineageChange:
        """Seal two adjacent active partitions at their end offsets; create one child over
        both ranges. ``placement``: the child's worker. ``fences``: each parent owner's
        lease, in the order of ``partition_ids`` (as ``end_offsets``)."""
        ...

    async def list_placements(self, tenant: str, incarnation: str) -> dict[int, int]:
        """The worker each placed partition of a topic incarnation was given at its creation
        (partitions made without a placement are absent)."""
        ...

    async def advance_start_offset(
        self,
        tenant: str,
        topic: str,
        partition_id: int,
        start_offset: int,
        *,
        incarnation: str | None = None,
        fence: LeaseFence | None = None,
    ) -> PartitionRecord:
        """Record that retention moved a partition's log start (it never moves back).

        With ``incarnation``, only while that is the live incarnation of the name (else
        :class:`TopicNotFoundError`), checked in the same step as the write: a retention pass
        of a deleted topic never moves the start of the topic created again under its name.
        With ``fence``, only while the writer holds the partition's lease (a start that
        would not move changes nothing and is not checked).
        """
        ...

    # --- consumer groups -----------------------------------------------------------------

    async def get_group(self, tenant: str, topic: str, group: str) -> GroupRecord: ...

    async def list_groups(self, tenant: str, topic: str) -> list[GroupRecord]: ...

    async def put_group(
        self,
        tenant: str,
        topic: str,
        group: str,
        *,
        generation: int,
        metadata: Mapping[str, Any],
        expected_version: int | None,
    ) -> GroupRecord:
        """Create (``expected_version=None``) or replace a group's generation and metadata."""
        ...

    async def commit_offsets(
        self,
        tenant: str,
        topic: str,
        group: str,
        offsets: Mapping[int, int],
        *,
        generation: int | None = None,
        expected_version: int | None = None,
    ) -> GroupRecord:
        """Durably store next-to-read offsets (creating the group if it is new).

        With ``generation``, a commit from any other generation raises
        :class:`StaleGenerationError`; with ``expected_version``, a commit racing another
        write raises :class:`VersionConflictError`.
        """
        ...

    async def delete_group(
        self, tenant: str, topic: str, group: str, *, expected_version: int | None = None
    ) -> None: ...

    # --- idempotency ---------------------------------------------------------------------

    async def remember_answer(self, record: IdempotencyRecord, *, now_ms: int) -> IdempotencyRecord:
        """Store ``record`` unless an unexpired one has its key; answer the one stored."""
        ...

    async def find_answer(
        self, tenant: str, topic: str, key: str, *, now_ms: int
    ) -> IdempotencyRecord | None: ...

    async def forget_expired_answers(self, *, now_ms: int) -> int: ...

    # --- remote segments -----------------------------------------------------------------

    async def add_remote_segment(
        self, record: RemoteSegmentRecord, *, fence: LeaseFence | None = None
    ) -> RemoteSegmentRecord:
        """Record a segment whose copy is starting; its state must be copy-started.

        A deleted or unknown topic incarnation raises :class:`TopicNotFoundError`, so that
        no copy can start after a topic's objects were cleaned up. The record's ``epoch``
        is stored with it (which object keys the segment has).
        """
        ...

    async def set_remote_segment_state(
        self,
        tenant: str,
        incarnation: str,
        partition_id: int,
        base_offset: int,
        *,
        from_state: RemoteSegmentState,
        to_state: RemoteSegmentState,
        fence: LeaseFence | None = None,
    ) -> RemoteSegmentRecord: ...

    async def list_remote_segments(
        self, tenant: str, incarnation: str, partition_id: int
    ) -> list[RemoteSegmentRecord]:
        """By base offset."""
        ...

    async def remove_remote_segment(
        self,
        tenant: str,
        incarnation: str,
        partition_id: int,
        base_offset: int,
        *,
        fence: LeaseFence | None = None,
    ) -> None:
        """Forget a segment whose objects are deleted; it must be delete-started."""
        ...

    async def list_remote_segments_in_state(
        self,
        state: RemoteSegmentState,
        *,
        after: tuple[str, str, int, int] | None = None,
        limit: int = 1000,
    ) -> list[RemoteSegmentRecord]:
        """Rows in ``state`` across every tenant, topic and partition, ordered by (tenant,
        incarnation, partition id, base offset), starting after ``after`` (pagination).

        Tiered storage uses it at start and when cleaning up: copies that never finished,
        deletions that a crash interrupted.
        """
        ...

    # --- usage -----------------------------------------------------------------------------

    async def add_usage(self, deltas: Sequence[UsageRecord]) -> None:
        """Add each delta's counters to its (tenant, hour) row, creating missing rows, all
        in one atomic step: every delta is added exactly once, or none is. Deltas for the
        same row add up. A store whose atomic step is bounded (DynamoDB: 99 rows) adds
        more in steps, each exactly once, and if one fails after others were added it
        raises :class:`~partitions.errors.UsagePartlyAddedError` naming the rows not
        added. An hour that is not a multiple of :data:`HOUR_MS`, or a negative counter,
        raises :class:`ValueError` and adds nothing."""
        ...

    async def list_usage(
        self, start_ms: int, end_ms: int, *, tenant: str | None = None
    ) -> list[UsageRecord]:
        """The rows of hours in ``[start_ms, end_ms)``, of ``tenant`` or of every tenant
        (deleted ones too), by hour then tenant."""
        ...

    async def close(self) -> None: ...
