"""Helpers for the tiered-storage tests: a server wired to moto through a proxy, and the
records held locally and in the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partitions.batch import decode_records, read_header
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from tests.conftest import Api, start_api, stop_api
from tests.s3 import S3FaultProxy, bucket_objects, create_bucket
from tiered_storage.objects import ObjectStore
from tiered_storage.store_url import open_object_store

PREFIX = "eb"


@dataclass
class TieredServer:
    api: Api
    proxy: S3FaultProxy
    endpoint: str
    bucket: str
    config: dict[str, Any] = field(default_factory=dict)

    opened: list[SqliteCatalog | ObjectStore] = field(default_factory=list)

    async def close(self) -> None:
        self.proxy.thaw()
        self.proxy.release()
        for handle in self.opened:
            await handle.close()
        await stop_api(self.api)
        await self.proxy.close()

    async def restart(self) -> None:
        """Stop the server and start it again on the same data directory and bucket."""
        data_dir = self.api.data_dir
        await stop_api(self.api)
        self.api = await start_api(data_dir, **self.config)

    async def open_catalog(self) -> SqliteCatalog:
        """The server's catalog, opened by the test (closed with the server)."""
        catalog = await SqliteCatalog.open(self.api.data_dir / CATALOG_FILE)
        self.opened.append(catalog)
        return catalog

    async def open_store(self) -> ObjectStore:
        """The server's object store, opened by the test (closed with the server)."""
        store = await open_object_store(
            f"s3://{self.bucket}/{PREFIX}", s3_endpoint=self.endpoint, timeout_s=10
        )
        self.opened.append(store)
        return store

    @contextlib.asynccontextmanager
    async def catalog(self) -> AsyncIterator[SqliteCatalog]:
        """The server's catalog, opened by the test (SQLite takes several handles)."""
        catalog = await SqliteCatalog.open(self.api.data_dir / CATALOG_FILE)
        try:
            yield catalog
        finally:
            await catalog.close()

    async def incarnation(self, topic: str) -> str:
        async with self.catalog() as catalog:
            return (await catalog.get_topic("default", topic)).incarnation

    async def partition_dir(self, topic: str, pid: int = 0) -> Path:
        return self.api.data_dir / "topics" / "default" / await self.incarnation(topic) / str(pid)

    async def objects(self, prefix: str = "") -> dict[str, bytes]:
        """The bucket's objects under the server's prefix, keyed without it (read straight
        from moto, not through the proxy)."""
        found = await bucket_objects(self.endpoint, self.bucket, f"{PREFIX}/{prefix}")
        return {key.removeprefix(f"{PREFIX}/"): data for key, data in found.items()}

    async def describe(self, topic: str) -> dict[str, Any]:
        status, body = await self.api.call("GET", f"/v1/topics/{topic}")
        assert status == 200, body
        return dict(body)

    async def partition(self, topic: str, pid: int = 0) -> dict[str, Any]:
        body = await self.describe(topic)
        return next(p for p in body["partitions"] if p["id"] == pid)


async def start_tiered(tmp_path: Path, endpoint: str, **settings: Any) -> TieredServer:
    bucket = await create_bucket(endpoint)
    proxy = await S3FaultProxy(endpoint).start()
    config: dict[str, Any] = {
        "object_store": f"s3://{bucket}/{PREFIX}",
        "s3_endpoint": proxy.url,
        "object_store_timeout_ms": 1_000,
        "retention_check_ms": 100,
        "upload_retry_max_ms": 300,
        **settings,
    }
    api = await start_api(tmp_path / "data", **config)
    return TieredServer(api, proxy, endpoint, bucket, config)


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def produce(
    api: Api, topic: str, values: list[str], *, timestamp_ms: int | None = None
) -> tuple[int, Any]:
    records: list[dict[str, Any]] = [{"value": v} for v in values]
    if timestamp_ms is not None:
        for record in records:
            record["timestamp_ms"] = timestamp_ms
    return await api.call("POST", f"/v1/topics/{topic}/records", json={"records": records})


def records_of_segment(data: bytes) -> dict[int, str]:
    """offset -> value of every record in the bytes of a ``.log`` object."""
    out: dict[int, str] = {}
    pos = 0
    while pos < len(data):
        header = read_header(data, pos)
        for record in decode_records(data, pos):
            out[record.offset] = record.value.decode()
        pos += header.total_size
    return out


def remote_records(objects: dict[str, bytes]) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, data in objects.items():
        if key.endswith(".log"):
            out.update(records_of_segment(data))
    return out


async def local_records(api: Api, topic: str, start: int, pid: int = 0) -> dict[int, str]:
    """Records read over HTTP from ``start`` to the high watermark (offsets local retention
    moves into tiered storage meanwhile are read from there)."""
    out: dict[int, str] = {}
    offset = start
    while True:
        status, body = await api.call(
            "GET",
            f"/v1/topics/{topic}/partitions/{pid}/records",
            params={"offset": str(offset), "max_records": "10000"},
        )
        assert status == 200, body
        out.update({r["offset"]: r["value"] for r in body["records"]})
        if body["next_offset"] >= body["high_watermark"]:
            return out
        offset = body["next_offset"]
