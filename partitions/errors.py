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


class PartitionUnavailableError(EventBusError):
    """The partition is recovering from a storage failure and cannot take requests yet."""

    code = "partition_unavailable"
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
