"""A broker made by hand, with real parts: the local partition worker and tiered storage
over a ``file://`` object store in the test's directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.broker.service import Broker
from partitions.catalog import Catalog
from partitions.worker import LocalPartitionWorker
from tiered_storage.service import TieredStorage
from tiered_storage.store_url import open_object_store


@asynccontextmanager
async def local_broker(
    catalog: Catalog, worker: LocalPartitionWorker, directory: Path
) -> AsyncIterator[Broker]:
    """A broker over ``worker``, its objects under ``directory``; its logs are closed after."""
    store = await open_object_store(f"file://{directory / 'objects'}")
    try:
        yield Broker(catalog, worker, TieredStorage(catalog, worker, store))
    finally:
        await worker.close()
        await store.close()
