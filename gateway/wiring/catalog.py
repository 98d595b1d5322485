"""The catalog: opened first, closed last, with the first start's keys made in it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.keys import CONFIG
from gateway.tenancy.auth import Authenticator, bootstrap
from gateway.wiring.state import AUTHENTICATOR, CATALOG
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = await SqliteCatalog.open(config.data_dir / CATALOG_FILE)
    try:
        admin_hash = await bootstrap(catalog, config.data_dir, config.admin_key)
        app[CATALOG] = catalog
        app[AUTHENTICATOR] = Authenticator(catalog, admin_hash)
        yield
    finally:
        await catalog.close()
