"""What the broker knows of each live topic: its views, and the locks and gates around them.

A :class:`TopicView` is a topic as the catalog last said it (incarnation, config,
partitions, the hash ranges of the active ones), with every partition's log opened before
the view is seen. :class:`TopicViews` holds one per topic this process has touched,
reloads a view whenever this process (or, told by it, another) changes the topic, and
keeps a lock per topic for the changes themselves.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.broker.names import key_hash, validate_topic_name
from gateway.broker.topic_config import log_config
from partitions.catalog import Catalog, PartitionRecord, TopicRecord
from partitions.errors import TopicNotFoundError
from partitions.incoming import Key
from partitions.partition_key import PartitionKey
from partitions.worker import PartitionWorker


@dataclass(slots=True)
class TopicGate:
    """Produce to a topic waits on ``open``; a split or merge clears it, waits for
    ``in_flight`` to reach zero (``idle``), reshapes the topic, and opens it again.

    One gate serves every view of a topic incarnation: a view reloaded while requests still
    run on an older one counts them too, so no append to a parent can slip past a change.
    """

    open: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.open.set()
        self.idle.set()


@dataclass(slots=True)
class TopicView:
    """What the broker knows of one live topic."""

    record: TopicRecord
    partitions: dict[int, PartitionRecord]
    active_starts: list[int] = field(default_factory=list)
    active_ids: list[int] = field(default_factory=list)
    keyless: itertools.count[int] = field(default_factory=itertools.count)
    gate: TopicGate = field(default_factory=TopicGate)

    def __post_init__(self) -> None:
        active = sorted(
            (p for p in self.partitions.values() if p.active), key=lambda p: p.hash_range.start
        )
        self.active_starts = [p.hash_range.start for p in active]
        self.active_ids = [p.partition_id for p in active]

    def route(self, key: Key) -> int:
        return self.active_ids[bisect.bisect_right(self.active_starts, key_hash(key)) - 1]

    def key(self, partition_id: int) -> PartitionKey:
        return PartitionKey(self.record.tenant, self.record.incarnation, partition_id)


class TopicViews:
    """The views of the topics this process has touched, by (tenant, name)."""

    def __init__(self, catalog: Catalog, worker: PartitionWorker) -> None:
        self._catalog = catalog
        self._worker = worker
        self._views: dict[tuple[str, str], TopicView] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- reading ------------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> TopicView | None:
        """The current view, without reading anything."""
        return self._views.get((tenant, name))

    def live(self) -> list[TopicView]:
        """The views of every live topic this process knows."""
        return list(self._views.values())

    def items(self) -> list[tuple[tuple[str, str], TopicView]]:
        return list(self._views.items())

    @property
    def lock_count(self) -> int:
        """Locks held for topic names (only names that exist keep one)."""
        return len(self._locks)

    async def view(self, tenant: str, name: str) -> TopicView:
        """The topic's view, read from the catalog the first time."""
        found = self._views.get((tenant, name))
        if found is not None:
            return found  # only a valid name is ever loaded
        validate_topic_name(name)
        lock = self.lock(tenant, name)
        try:
            async with lock:
                found = self._views.get((tenant, name))
                return found if found is not None else await self.load(tenant, name)
        except TopicNotFoundError:
            # Keep no lock for a name that does not exist: lookups cannot grow memory.
            if not lock.locked() and (tenant, name) not in self._views:
                self._locks.pop((tenant, name), None)
            raise

    async def current(self, tenant: str, name: str) -> TopicView:
        """The view, read now if there is none; for a caller holding the topic's lock."""
        validate_topic_name(name)
        found = self._views.get((tenant, name))
        return found if found is not None else await self.load(tenant, name)

    async def load(self, tenant: str, name: str) -> TopicView:
        """Read the topic from the catalog, open its logs, make it the current view."""
        record = await self._catalog.get_topic(tenant, name)
        partitions = await self._catalog.list_partitions(tenant, name)
        config = log_config(record.config)
        # Every log is open before the view is seen: a reader of a new child must find it.
        for partition in partitions:
            key = PartitionKey(tenant, record.incarnation, partition.partition_id)
            await self._worker.open_partition(key, config)
        old = self._views.get((tenant, name))
        gate = (
            old.gate if old is not None and old.record.incarnation == record.incarnation else None
        )
        view = TopicView(record, {p.partition_id: p for p in partitions}, gate=gate or TopicGate())
        self._views[(tenant, name)] = view
        return view

    async def reload_if_current(self, tenant: str, name: str, view: TopicView) -> None:
        """Read the topic again unless another request already replaced ``view``."""
        async with self.lock(tenant, name):
            if self._views.get((tenant, name)) is view:
                await self.load(tenant, name)

    # --- forgetting ---------------------------------------------------------------------

    def drop(self, tenant: str, name: str) -> None:
        """Forget the view: the next request reads the catalog again."""
        self._views.pop((tenant, name), None)

    def forget_incarnation(self, tenant: str, incarnation: str) -> None:
        """Forget the views of a deleted incarnation (and their locks, unless held)."""
        for (owner, name), view in list(self._views.items()):
            if owner == tenant and view.record.incarnation == incarnation:
                self._views.pop((owner, name), None)
                lock = self._locks.get((owner, name))
                if lock is not None and not lock.locked():  # delete_topic holds it: keep it
                    self._locks.pop((owner, name), None)

    # --- the topic's lock ---------------------------------------------------------------

    def lock(self, tenant: str, name: str) -> asyncio.Lock:
        """The lock that changes of the topic (create, config, split, merge) hold."""
        return self._locks.setdefault((tenant, name), asyncio.Lock())

    @contextlib.asynccontextmanager
    async def existing_lock(self, tenant: str, name: str) -> AsyncIterator[None]:
        """Hold the topic's lock; drop it again when the topic turns out not to exist, so
        that requests naming missing topics cannot grow memory."""
        lock = self.lock(tenant, name)
        try:
            async with lock:
                yield
        except TopicNotFoundError:
            idle = not lock.locked() and (tenant, name) not in self._views
            if idle and self._locks.get((tenant, name)) is lock:
                del self._locks[(tenant, name)]
            raise
