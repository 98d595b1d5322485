"""The write-ahead log in object storage: cluster mode's :class:`~partitions.durability.Durability`.

One :class:`WalWriter` per node session gathers the entries of every partition the node
appends to and writes them as one object (layout: :mod:`tiered_storage.wal_format`) every
``flush_ms``, or sooner once ``flush_bytes`` are pending. An entry's ``make_durable``
returns only when

1. its object is written: a create-only put under ``wal/<node>/<session>/<seq:020d>``, and
2. **after** that write, the injected ``check_fence()`` answered that this node still holds
   its session (not fenced).

Write, then check: a node that takes partitions over fences the dead node's session first
and lists its WAL after, so any object written before the owner's check passed is in the
listing, and a write that lands after the fence is followed by a check that fails. Checking
first and writing after leaves a window (check passes, the session is fenced and the WAL
read, the write lands) in which an acknowledged entry is missing from the new owner's
replay; ``tests/test_wal.py`` plays that schedule against both orders.

**Objects are written one at a time, in seq order.** Recovery replays a partition in seq
order and stops at its first gap, and a partition's entries in consecutive objects are
consecutive offsets. Were object N+1 acknowledged before N is written, losing the node then
would leave N+1's entries behind a gap, and the replay would stop before them: an
acknowledged entry lost. Written in order, an acknowledged object has every earlier one
written before it. Throughput does not suffer much: each object carries everything that
gathered while the previous one was in flight.

**Failures.**

- A put that fails (the store is down or slow) fails the waiters of its object with the
  retriable :class:`~partitions.errors.WalUnavailableError`, but the object is kept and
  written again, same key and bytes, before any later one: the local log already holds its
  offsets, so it must reach the WAL for later entries not to sit behind a gap. A put that
  meets an existing object with the same bytes (an earlier attempt landed after all) counts
  as written.
- A check that answers "fenced" fails the waiters with the retriable
  :class:`~partitions.errors.SessionFencedError`, and so does every later ``make_durable``: a
  fenced writer acknowledges nothing again. So does an existing object with other bytes
  under one of this session's keys (another writer has this session: never expected).
- A check that cannot answer (it raised) fails the waiters with ``WalUnavailableError``;
  the object is written, so the writer goes on with the next.

An entry whose waiter failed with ``WalUnavailableError`` is still queued: once its object
is written and a later check passes, :meth:`WalWriter.wait_durable` returns for it, so that
the partition's visible end catches up without another append.

Nothing here bounds how much waits while the store is down: :attr:`WalWriter.backlog_bytes`
is for the produce path to refuse new appends (backpressure) before they reach the log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from partitions.durability import WalEntry
from partitions.errors import (
    EventBusError,
    PartitionClosedError,
    SessionFencedError,
    WalUnavailableError,
)
from tiered_storage.objects import ObjectStore, PutResult
from tiered_storage.wal_format import check_entry, encode_object, wal_key

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_FLUSH_MS = 100
DEFAULT_FLUSH_BYTES = 4 * MIB

#: Answers True while this node still holds its session, False once it is fenced.
FenceCheck = Callable[[], Awaitable[bool]]
#: Waits the given number of seconds (``asyncio.sleep``; tests pass a timer they fire).
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Pending:
    entries: list[WalEntry] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0


@dataclass
class _Object:
    """A sealed object: its seq and bytes are fixed, so every attempt writes the same."""

    seq: int
    key: str
    data: bytes
    waiters: list[asyncio.Future[None]]
    entries: list[WalEntry] = field(default_factory=list)


class _PutFailed(Exception):
    pass


class _FenceUnknown(Exception):
    pass


class WalWriter:
    """:class:`~partitions.durability.Durability` by a write-ahead log in an object store,
    for one session of one node. :meth:`start` runs the flush loop; without it, only
    :meth:`flush` writes (tests drive it step by step)."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        node: str,
        session: str,
        check_fence: FenceCheck,
        flush_ms: int = DEFAULT_FLUSH_MS,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        first_seq: int = 1,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.node = node
        self.session = session
        self.flush_ms = flush_ms
        self.flush_bytes = flush_bytes
        self._check_fence = check_fence
        self._sleep = sleep
        self._next_seq = first_seq
        wal_key(node, session, first_seq)  # refuses node and session ids a key cannot hold
        self._pending = _Pending()
        self._unwritten: collections.deque[_Object] = collections.deque()
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fenced: SessionFencedError | None = None
        self._closing = False
        #: The highest seq written and found unfenced (0: none yet).
        self.committed_seq = 0
        # (seq, future) of wait_durable calls: settled once committed_seq reaches seq.
        self._late: list[tuple[int, asyncio.Future[None]]] = []

    # --- what callers see ------------------------------------------------------------------

    #: Appends wait for the object store after the local fsync.
    acknowledges_at_fsync = False

    @property
    def fenced(self) -> bool:
        return self._fenced is not None

    @property
    def backlog_bytes(self) -> int:
        """Bytes handed in and not yet written: pending, and sealed objects not written."""
        return self._pending.size + sum(len(o.data) for o in self._unwritten)

    async def make_durable(self, entry: WalEntry) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._closing:
            raise PartitionClosedError(f"the WAL writer of session {self.session} is closed")
        check_entry(entry)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending.entries.append(entry)
        pending.waiters.append(future)
        pending.size += len(entry.data)
        self._work.set()
        if pending.size >= self.flush_bytes:
            self._full.set()
        await future

    async def wait_durable(self, entry: WalEntry) -> None:
        """After ``make_durable(entry)`` failed: return once the entry's object is written
        and a check after that write passed (a check passing after a write covers every
        earlier write too); raise once the writer is fenced or closed first."""
        if self._fenced is not None:
            raise self._fenced
        seq = self._seq_holding(entry)
        if seq <= self.committed_seq:
            return
        if self._closing and self._task is None:
            raise PartitionClosedError(f"the WAL writer of session {self.session} is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._late.append((seq, future))
        await future

    def _seq_holding(self, entry: WalEntry) -> int:
        """The seq of the object that holds (or will hold) ``entry``; for an entry already
        written, the last seq written (its own or later)."""
        if any(e is entry for e in self._pending.entries):
            return self._next_seq
        for obj in self._unwritten:
            if any(e is entry for e in obj.entries):
                return obj.seq
        return (self._unwritten[0].seq if self._unwritten else self._next_seq) - 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"wal-writer-{self.session}")

    async def close(self) -> None:
        """Take no more entries, write what is pending (one attempt), fail what is left."""
        self._closing = True
        if self._task is not None:
            self._work.set()
            self._full.set()
            await self._task
            self._task = None
        # Once more: entries may have come in while the loop's last flush was writing.
        await self.flush()
        self._fail_all(PartitionClosedError(f"the WAL writer of session {self.session} closed"))

    async def flush(self) -> None:
        """Seal what is pending into the next object, then write every unwritten object in
        seq order, stopping at the first that cannot be written."""
        async with self._lock:
            self._seal()
            while self._unwritten and self._fenced is None:
                obj = self._unwritten[0]
                if not await self._commit(obj):
                    # Everything after it waits for it: fail their waiters now, so that no
                    # append waits on a store that is down; their bytes stay queued.
                    for later in self._unwritten:
                        self._settle(later.waiters, self._unavailable(later, "an earlier object"))
                    break

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            if not self._closing:
                await self._interval()
            await self.flush()
            if self._closing or self._fenced is not None:
                return
            if not self._pending.entries and not self._unwritten:
                self._work.clear()

    async def _interval(self) -> None:
        """Wait for ``flush_ms``, or less when enough bytes are pending."""
        if self._full.is_set():
            return
        timer = asyncio.ensure_future(self._sleep(self.flush_ms / 1000))
        full = asyncio.ensure_future(self._full.wait())
        try:
            await asyncio.wait((timer, full), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (timer, full):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- one object ----------------------------------------------------------------------------

    def _seal(self) -> None:
        pending = self._pending
        if not pending.entries:
            return
        seq = self._next_seq
        self._next_seq += 1
        data = encode_object(self.node, self.session, seq, pending.entries)
        self._unwritten.append(
            _Object(
                seq, wal_key(self.node, self.session, seq), data, pending.waiters, pending.entries
            )
        )
        self._pending = _Pending()
        self._full.clear()

    async def _commit(self, obj: _Object) -> bool:
        """Write ``obj`` and settle its waiters; False when it is still to be written."""
        try:
            alive = await self._write_then_check(obj)
        except _PutFailed as exc:
            log.warning("WAL object %s not written: %s", obj.key, exc.__cause__)
            self._settle(obj.waiters, self._unavailable(obj, "it"))
            return False
        except _FenceUnknown as exc:
            self._unwritten.popleft()
            self._settle(
                obj.waiters,
                WalUnavailableError(
                    f"WAL object {obj.key} was written, but whether this node still holds "
                    f"its session could not be checked: {exc.__cause__}"
                ),
            )
            return True
        except SessionFencedError as exc:
            self._fence(exc)
            return False
        self._unwritten.popleft()
        if not alive:
            fenced = SessionFencedError(f"session {self.session} of node {self.node} was fenced")
            self._settle(obj.waiters, fenced)
            self._fence(fenced)
            return False
        self.committed_seq = obj.seq
        self._settle(obj.waiters, None)
        landed = [future for seq, future in self._late if seq <= obj.seq]
        self._late = [(seq, future) for seq, future in self._late if seq > obj.seq]
        self._settle(landed, None)
        return True

    async def _write_then_check(self, obj: _Object) -> bool:
        """The order that makes an acknowledgement safe: write, then check the fence."""
        await self._put(obj)
        return await self._still_owner()

    async def _put(self, obj: _Object) -> None:
        try:
            result = await self.store.put(obj.key, obj.data)
            if result is PutResult.CREATED:
                return
            existing = await self.store.get(obj.key)
        except Exception as exc:
            raise _PutFailed() from exc
        if existing != obj.data:
            raise SessionFencedError(
                f"WAL object {obj.key} exists with other bytes: another writer has session "
                f"{self.session}"
            )

    async def _still_owner(self) -> bool:
        try:
            return await self._check_fence()
        except Exception as exc:
            raise _FenceUnknown() from exc

    # --- settling waiters --------------------------------------------------------------------

    def _unavailable(self, obj: _Object, what: str) -> WalUnavailableError:
        return WalUnavailableError(f"WAL object {obj.key} not written yet: {what} failed")

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], error: EventBusError | None) -> None:
        for future in waiters:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        waiters.clear()

    def _fence(self, error: SessionFencedError) -> None:
        log.warning("WAL writer stops: %s", error.message)
        self._fenced = error
        self._fail_all(error)

    def _fail_all(self, error: EventBusError) -> None:
        for obj in self._unwritten:
            self._settle(obj.waiters, error)
        self._settle(self._pending.waiters, error)
        late, self._late = [future for _, future in self._late], []
        self._settle(late, error)
        if self._fenced is not None:
            self._unwritten.clear()
            self._pending = _Pending()
