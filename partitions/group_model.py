"""What consumer-group coordination works with: the topic's shape as a fetch saw it, a
group with its members, owners and committed offsets, what a fetch delivers, and the
groups' errors. The rules they serve are in :mod:`partitions.groups`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from partitions.batch import BatchBytes, Record
from partitions.catalog import PartitionRecord
from partitions.errors import ConflictError, InvalidInputError
from partitions.partition_key import PartitionKey

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 30_000
EARLIEST = "earliest"
LATEST = "latest"


class UnknownMemberError(ConflictError):
    """The member id is not (or no longer) in the group: its session expired or it left.
    ``details`` say so in the terms of a refused commit: an empty assignment, and the
    group's generation."""

    code = "unknown_member"


class PartitionNotAssignedError(ConflictError):
    """A commit names partitions the member does not own now: ``details`` give the
    partitions refused, the member's assignment and the group's generation, so that the
    client drops its work on the partitions it lost."""

    code = "partition_not_assigned"


class GroupHasMembersError(ConflictError):
    code = "group_has_members"


class InvalidSeekError(InvalidInputError):
    code = "invalid_seek"


def unknown_member(member_id: str, name: str, generation: int = 0) -> UnknownMemberError:
    return UnknownMemberError(
        f"member {member_id} is not in group {name!r} (its session ended); "
        "fetch without member_id to join again",
        member_id=member_id,
        assignment=[],
        generation=generation,
    )


@dataclass(frozen=True, slots=True)
class TopicShape:
    """What the coordinator needs to know of the topic right now."""

    tenant: str
    name: str
    incarnation: str
    partitions: Mapping[int, PartitionRecord]

    def key(self, partition_id: int) -> PartitionKey:
        return PartitionKey(self.tenant, self.incarnation, partition_id)


@dataclass(slots=True)
class Member:
    member_id: str
    session_timeout_ms: int
    last_seen_ms: int
    auto_commit: bool
    # Next offset to hand out, per partition this member owns.
    positions: dict[int, int] = field(default_factory=dict)
    # Positions reached by the last fetch, committed by the next one under auto_commit.
    delivered: dict[int, int] = field(default_factory=dict)
    # Fetches in progress: a member waiting in a long-poll is alive.
    busy: int = 0

    def expired(self, now: int) -> bool:
        return not self.busy and now - self.last_seen_ms > self.session_timeout_ms


@dataclass(slots=True)
class Group:
    tenant: str
    incarnation: str
    name: str
    committed: dict[int, int] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    owner: dict[int, str] = field(default_factory=dict)
    generation: int = 0
    # The highest partition id of the topic seen: a fetch whose shape has a lower one
    # began before a split or merge and answers early, so that its member sees the change.
    newest_partition: int = -1
    loaded: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Automatic commits in effect here but not yet in the catalog, and the task writing them.
    unwritten: dict[int, int] = field(default_factory=dict)
    writer: asyncio.Task[None] | None = None
    # Set to have the writer write what is left now rather than after its pause.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def assignment(self, member_id: str) -> list[int]:
        return sorted(p for p, owner in self.owner.items() if owner == member_id)

    def expire_members(self, now: int) -> bool:
        """Remove the members whose session ran out; answers whether there were any."""
        gone = [mid for mid, m in self.members.items() if m.expired(now)]
        for member_id in gone:
            log.info("group %s: member %s expired", self.name, member_id)
            self.remove_member(member_id)
        return bool(gone)

    def remove_member(self, member_id: str) -> None:
        """The member leaves: its partitions are free at once, in a new generation."""
        self.members.pop(member_id, None)
        for pid in [p for p, owner in self.owner.items() if owner == member_id]:
            del self.owner[pid]
        self.generation += 1


@dataclass(frozen=True, slots=True)
class RawChunk:
    """Whole stored batches of one partition; the records below ``from_offset`` were
    delivered before and are not part of this fetch."""

    partition: int
    from_offset: int
    data: BatchBytes


@dataclass(slots=True)
class Fetched:
    """What one fetch delivers: decoded records, or with ``raw`` whole stored batches."""

    records: list[tuple[int, Record]] = field(default_factory=list)
    chunks: list[RawChunk] = field(default_factory=list)
    count: int = 0
    size: int = 0

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass(frozen=True, slots=True)
class FetchResult:
    member_id: str
    generation: int
    assignment: list[int]
    fetched: Fetched

    @property
    def records(self) -> list[tuple[int, Record]]:
        return self.fetched.records
