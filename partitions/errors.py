"""The one error root of the event bus.

Every failure that a caller may want to tell apart is a subclass of :class:`EventBusError`
with a stable string ``code``, the HTTP ``status`` the gateway answers with, and whether a
retry of the same request can succeed (``retriable``). The gateway turns any of them into the
JSON error body ``{"error": {"code": ..., "message": ...}}``; nothing else needs to know HTTP.

This module lives in ``partitions`` because it is the lowest package: every other package may
import it, and it imports nothing of the project.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EventBusError(Exception):
    """Base of every error the event bus raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


# --- bad input -------------------------------------------------------------------------------


class InvalidInputError(EventBusError):
    code = "invalid_input"
    status = 400


class InvalidBatchError(InvalidInputError):
    """Bytes that claim to be a record batch are not one (wrong version, length or CRC)."""

    code = "invalid_batch"


class RecordTooLargeError(EventBusError):
    code = "record_too_large"
    status = 413


class TooManyRecordsError(EventBusError):
    """A produce request holds more records than any request may."""

    code = "too_many_records"
    status = 413


class BatchTooLargeError(EventBusError):
    code = "batch_too_large"
    status = 413


class OffsetOutOfRangeError(EventBusError):
    """An offset below the log start or past the high watermark.

    ``details`` carries the valid range (``start_offset``, ``high_watermark``) so a client can
    correct itself.
    """

    code = "offset_out_of_range"
    status = 416


class OffsetNotLocalError(EventBusError):
    """An offset inside the log (at or above its start) whose data lives only in object
    storage: local retention removed the local copy after it was uploaded.

    The partition log raises it for every read below its local start; the partition worker
    then reads those offsets through its :class:`~partitions.remote.RemoteLogReader`, so a
    server never answers it. Only a worker without a reader lets it through: a final answer
    (not retriable) whose ``details`` carry ``offset``, the log's ``start_offset``, its
    ``local_start_offset`` (where local data begins) and ``high_watermark``. It is never a
    416: the offset is valid.
    """

    code = "offset_not_local"
    status = 501


# --- state conflicts -------------------------------------------------------------------------


class PartitionSealedError(EventBusError):
    """Appending to a partition that was sealed by a split, a merge or by hand."""

    code = "partition_sealed"
    status = 409


class PartitionClosedError(EventBusError):
    """The partition log was closed (shutdown, deletion); the request may go elsewhere."""

    code = "partition_closed"
    status = 503
    retriable = True


# --- storage failures ------------------------------------------------------------------------


class DiskFullError(EventBusError):
    """The disk had no room for an append. Nothing already written was damaged."""

    code = "disk_full"
    status = 503
    retriable = True


class StorageIOError(EventBusError):
    """A write or fsync failed. The partition reopens with recovery; the append did not succeed.

    As with any failed write, the bytes of the failed append may or may not survive the
    recovery: the client was not told they are durable, and an idempotency key makes a retry
    safe.
    """

    code = "storage_io_error"
    status = 503
    retriable = True


class StorageBackpressureError(EventBusError):
    """Too much data waits for upload to object storage (the store is down or slow), so
    produce is refused rather than fill the disk or block. It clears by itself once
    uploads catch up. In cluster mode the same holds for the batches waiting to be written
    to the node's write-ahead log in object storage (refused before they reach the log)."""

    code = "storage_backpressure"
    status = 503
    retriable = True


class CatalogUnavailableError(EventBusError):
    """The catalog's store cannot be reached now (DynamoDB down, throttling that outlasted
    the retries, a call past its deadline). Nothing is known to have changed unless the
    operation says so; the same request can be retried."""

    code = "catalog_unavailable"
    status = 503
    retriable = True


class CatalogTablesMissingError(EventBusError):
    """The catalog's DynamoDB tables are not there: they are made once, by
    ``eventbus catalog create-tables dynamodb://PREFIX`` (or the SAM stack)."""

    code = "catalog_tables_missing"
    status = 503
    retriable = True


class CatalogAccessDeniedError(CatalogUnavailableError):
    """DynamoDB answered, and refused the catalog's credentials or their permissions."""

    code = "catalog_access_denied"


class UsagePartlyAddedError(CatalogUnavailableError):
    """A usage flush too large for one atomic write (DynamoDB's 100 actions) was added in
    chunks, and one failed after others were added. ``details["not_added"]`` lists the
    ``[tenant, hour_ms]`` rows not added: only those are to be flushed again."""

    code = "usage_partly_added"


class PartitionUnavailableError(EventBusError):
    """The partition is recovering from a storage failure and cannot take requests yet."""

    code = "partition_unavailable"
    status = 503
    retriable = True


class WorkerUnreachableError(PartitionUnavailableError):
    """The worker process that owns the partition (or the request) cannot be reached now:
    it is restarting. Nothing was sent to it; the same request can be retried."""

    code = "worker_unavailable"


class WorkerLostError(WorkerUnreachableError):
    """The worker process went away while a request to it was in flight (it died): the
    request may or may not have been carried out. Acknowledged data is never lost, and a
    produce with an idempotency key may be retried safely."""

    code = "worker_lost"


class PeerAuthenticationError(EventBusError):
    """A node's channel peer could not be authenticated (it proved no knowledge of the
    nodes' shared secret, or does not speak the channel handshake): nothing was sent to it.
    A configuration to fix, not a failure to retry."""

    code = "peer_unauthenticated"


class WalUnavailableError(EventBusError):
    """The write-ahead log in object storage could not be written now (the store is down or
    slow), or whether the node still owns its session could not be checked after the
    write. The append was not acknowledged; its bytes may still come back after a
    takeover, and an idempotency key makes a retry safe."""

    code = "wal_unavailable"
    status = 503
    retriable = True


class CorruptLogError(EventBusError):
    """Stored bytes failed their checks where recovery cannot repair them (not the tail)."""

    code = "corrupt_log"
    status = 500


class ShortBatchError(CorruptLogError):
    """The log ends inside a batch: a torn tail, left by a crash during a write."""

    code = "short_batch"


class CorruptBatchError(CorruptLogError):
    """A whole batch is there but fails its CRC or carries the wrong offset or version."""

    code = "corrupt_batch"


# --- catalog -----------------------------------------------------------------------------


class NotFoundError(EventBusError):
    code = "not_found"
    status = 404


class TenantNotFoundError(NotFoundError):
    code = "tenant_not_found"


class TopicNotFoundError(NotFoundError):
    code = "topic_not_found"


class PartitionNotFoundError(NotFoundError):
    code = "partition_not_found"


class ApiKeyNotFoundError(NotFoundError):
    code = "api_key_not_found"


class GroupNotFoundError(NotFoundError):
    code = "group_not_found"


class RemoteSegmentNotFoundError(NotFoundError):
    code = "remote_segment_not_found"


class ConflictError(EventBusError):
    code = "conflict"
    status = 409


class TenantExistsError(ConflictError):
    code = "tenant_exists"


class TopicExistsError(ConflictError):
    """A live topic of that name exists; ``details["incarnation"]`` names it."""

    code = "topic_exists"


class VersionConflictError(ConflictError):
    """A compare-and-set lost: the row changed since the caller read it."""

    code = "version_conflict"


class StaleGenerationError(ConflictError):
    """A consumer-group write from a generation that is no longer current."""

    code = "stale_generation"


class PartitionNotActiveError(ConflictError):
    """Split or merge of a partition that is already sealed."""

    code = "partition_not_active"


class PartitionsNotAdjacentError(ConflictError):
    """A merge of two partitions whose hash ranges do not touch."""

    code = "partitions_not_adjacent"


class InvalidSplitPointError(ConflictError):
    """A split point that is not strictly inside the partition's hash range as it is now
    (a well-formed point: the partition's state decides, so 409)."""

    code = "invalid_split_point"


class InvalidMergeError(InvalidInputError):
    """A merge that does not name exactly two different partitions."""

    code = "invalid_merge"


class InvalidOffsetError(InvalidInputError):
    """An offset that cannot be right (negative, or a sealed end below the start)."""

    code = "invalid_offset"


class TopicLimitError(ConflictError):
    """Creating a topic would pass the tenant's ``max_topics``."""

    code = "topic_limit_reached"


class PartitionLimitError(ConflictError):
    """A new topic or a split would pass the tenant's ``max_partitions`` (active ones)."""

    code = "partition_limit_reached"


class RemoteSegmentStateError(ConflictError):
    """A remote-segment state change from a state the row is not in."""

    code = "remote_segment_state"


class RemoteSegmentExistsError(ConflictError):
    code = "remote_segment_exists"


# --- nodes and leases (several nodes sharing the catalog) ---------------------------------


class SessionFencedError(EventBusError):
    """This node's session is no longer alive in the lease table: another node fenced it
    (it was judged dead), it fenced itself (DynamoDB unreachable past its lease), it left,
    or a newer session of the same node id replaced it. Nothing it does from now on may be
    acknowledged: appends waiting on it were not, and a produce with an idempotency key may
    be retried safely (the retry reaches the partition's new owner). The process starts
    again as a new session."""

    code = "node_fenced"
    status = 503
    retriable = True


class NodeIdInUseError(ConflictError):
    """A node joined under a node id whose session is alive and heartbeating: two
    processes were given the same id. The older one is left alone."""

    code = "node_id_in_use"


class NodeNotAliveError(ConflictError):
    """A lease was to go to a node session that is not alive (fenced, left, or replaced
    by a newer session)."""

    code = "node_not_alive"


class LeaseConflictError(ConflictError):
    """A partition lease is not as the caller read it (another grant or hand-over came
    first, or the partition already has a lease); ``details`` says what it is now."""

    code = "lease_conflict"


class OwnerStillAliveError(ConflictError):
    """A partition was to be granted away from an owner whose session is still alive:
    only the owner itself may move it then (a hand-over)."""

    code = "owner_still_alive"


class LeaseLostError(ConflictError):
    """An owner-side write about a partition (a remote segment, the log start, a seal) was
    refused because the writer no longer holds the partition's lease: it was granted or
    handed over to another node session, at a higher epoch. Nothing was changed. Retrying
    from the same writer cannot succeed, so it is final (409, not retriable); the writer
    stops serving the partition, and a client's next request reaches the new owner."""

    code = "lease_lost"
