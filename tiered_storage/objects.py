"""The object-store Protocol, its value types, its errors and the rule for keys.

Two backends implement :class:`ObjectStore`: ``file://DIR`` (:mod:`tiered_storage.file_store`,
the embedded default under the data directory) and ``s3://BUCKET/PREFIX``
(:mod:`tiered_storage.s3_store`). One conformance suite (``tests/test_object_store.py``)
runs against both. Both import this module, and it imports neither: opening a store by
its URL, which needs both, is :mod:`tiered_storage.store_url`'s.

Rules every store keeps:

- **Create-only puts.** A put never replaces an object: if the key exists, it answers
  :attr:`PutResult.ALREADY_EXISTS` and changes nothing. An object appears whole or not at all.
- **Every call has a deadline** (``timeout_s``). A store that does not answer in time counts
  as down: the call raises :class:`ObjectStoreUnavailableError`, which callers retry later.
- Keys are ``/``-separated names of non-empty parts that do not start with a dot (names
  starting with a dot are the stores' own: temporary files, for one).
- ``list`` answers keys in byte order, so zero-padded offsets list in offset order.
- ``delete`` of a missing key succeeds: deletions are retried after crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from partitions.errors import EventBusError, InvalidInputError

DEFAULT_TIMEOUT_S = 30.0


class PutResult(StrEnum):
    CREATED = "created"
    ALREADY_EXISTS = "already_exists"


@dataclass(frozen=True, slots=True, order=True)
class ObjectInfo:
    key: str
    size: int
    last_modified_ms: int


class ObjectStoreError(EventBusError):
    """The object store refused or failed a call."""

    code = "object_store_error"
    status = 503
    retriable = True


class ObjectStoreUnavailableError(ObjectStoreError):
    """The store did not answer in time, could not be reached, or kept answering "slow
    down" or a server error through every retry."""

    code = "object_store_unavailable"


class ObjectNotFoundError(ObjectStoreError):
    code = "object_not_found"
    status = 404
    retriable = False


class InvalidObjectKeyError(InvalidInputError):
    code = "invalid_object_key"


class InvalidObjectStoreUrlError(InvalidInputError):
    code = "invalid_object_store_url"


class ObjectStore(Protocol):
    """A flat namespace of immutable objects. All methods are coroutines with a deadline."""

    @property
    def url(self) -> str:
        """Where the store is (for logs and docs; never holds credentials)."""
        ...

    @property
    def local(self) -> bool:
        """Whether a get is a read of this machine's files, which the kernel's page cache
        keeps: cold reads then read exactly the bytes they need, with no read cache or
        read-ahead of their own."""
        ...

    async def put(self, key: str, source: bytes | Path) -> PutResult:
        """Create ``key`` from bytes or from a local file, unless it exists.

        A file that vanishes before it is read raises :class:`FileNotFoundError`.
        """
        ...

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (to its end when ``end`` is None; fewer at
        the end of the object). A missing key raises :class:`ObjectNotFoundError`."""
        ...

    async def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> bytes | bytearray:
        """The bytes of every ``(key, start, end)`` range, back to back in one buffer, so
        that a read spanning objects needs no copy to join them. A range is read as
        :meth:`get` reads it; one that comes back short ends the answer there."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...

    async def remove_incomplete(self, older_than_ms: int) -> int:
        """Remove what interrupted puts left behind (temporary files, unfinished multipart
        uploads) that started before ``older_than_ms`` (wall clock) and are not in flight
        in this process. Answers how many."""
        ...

    async def close(self) -> None: ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") or "\0" in p for p in parts):
        raise InvalidObjectKeyError(f"not an object key: {key!r}")
    return key
