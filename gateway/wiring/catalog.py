"""The catalog: opened first, closed last, with the first start's keys made in it.

Which store it is comes from ``--catalog`` (:mod:`partitions.catalog_url`): the SQLite file
in the data directory by default, or DynamoDB tables. Every process opens its own: worker
processes share a SQLite file as they share a DynamoDB table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.keys import CONFIG
from gateway.tenancy.auth import bootstrap
from gateway.wiring.state import ADMIN_KEY_HASH, CATALOG
from partitions.catalog_url import open_catalog


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = await open_catalog(
        config.catalog, config.data_dir, timeout_s=config.catalog_timeout_ms / 1000
    )
    try:
        app[ADMIN_KEY_HASH] = await bootstrap(catalog, config.data_dir, config.admin_key)
        app[CATALOG] = catalog
        yield
    finally:
        await catalog.close()
