"""The catalog: opened first, closed last, with the first start's keys made in it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.keys import CONFIG
from gateway.tenancy.auth import bootstrap
from gateway.wiring.state import ADMIN_KEY_HASH, CATALOG
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = await SqliteCatalog.open(config.data_dir / CATALOG_FILE)
    try:
        app[ADMIN_KEY_HASH] = await bootstrap(catalog, config.data_dir, config.admin_key)
        app[CATALOG] = catalog
        yield
    finally:
        await catalog.close()
