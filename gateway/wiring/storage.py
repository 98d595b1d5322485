"""Tiered storage in the app: the object store, and the tiering service's loops.

The object store opens before the broker (topic deletions finished at start delete their
objects) and closes after it. The tiering service is made with the partitions
(``topology.py``), so that rolls wake the uploader and retention, backpressure and topic
deletion reach it from the first request; its loops start in :func:`tiering_ctx`, after the
partitions are open, so the first upload pass re-uploads whatever a crash left unfinished.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.config import ServerConfig
from gateway.http.keys import CONFIG
from gateway.wiring.state import OBJECT_STORE, TIERING, TOPOLOGY
from tiered_storage.read_settings import ColdReadSettings
from tiered_storage.state import TieringSettings
from tiered_storage.store_url import open_object_store

log = logging.getLogger(__name__)

OBJECTS_DIR = "objects"


def object_store_url(config: ServerConfig) -> str:
    """``--object-store``, else ``file://`` under the data directory."""
    if config.object_store:
        return config.object_store
    return f"file://{config.data_dir / OBJECTS_DIR}"


def tiering_settings(config: ServerConfig) -> TieringSettings:
    return TieringSettings(
        upload_concurrency=config.upload_concurrency,
        max_upload_backlog_bytes=config.max_upload_backlog_bytes,
        upload_retry_ms=(min(200, config.upload_retry_max_ms), config.upload_retry_max_ms),
        orphan_grace_ms=config.orphan_grace_ms,
        orphan_check_ms=config.orphan_check_ms,
    )


def cold_read_settings(config: ServerConfig) -> ColdReadSettings:
    return ColdReadSettings(
        cache_bytes=config.read_cache_bytes,
        chunk_bytes=config.read_chunk_bytes,
        read_ahead_chunks=config.read_ahead_chunks,
    )


async def object_store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_object_store(
        object_store_url(config),
        s3_endpoint=config.s3_endpoint,
        timeout_s=config.object_store_timeout_ms / 1000,
    )
    log.info("object store: %s", store.url)
    app[OBJECT_STORE] = store
    try:
        yield
    finally:
        await store.close()


async def tiering_ctx(app: web.Application) -> AsyncIterator[None]:
    tiering = app[TIERING]
    # Cleanup assumes one writer per store prefix: with worker processes, the leader runs it.
    tiering.start(cleanup=app[TOPOLOGY].leader)
    try:
        yield
    finally:
        await tiering.close()
