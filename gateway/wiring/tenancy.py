"""Tenancy in the app: the keys' authenticator and the writer of their last uses, the
tenants' quotas (read by the broker for its limits), then, once the broker can measure what
tenants store, the quota book the front door charges."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.keys import BROKER, CONFIG, HEALTH, TENANCY, Tenancy
from gateway.tenancy.auth import Authenticator
from gateway.tenancy.key_uses import KeyUses
from gateway.tenancy.quotas import QuotaBook, TenantQuotas
from gateway.wiring.state import (
    ADMIN_KEY_HASH,
    AUTHENTICATOR,
    CATALOG,
    CLOCKS,
    KEY_USES,
    TENANT_QUOTAS,
    TOPOLOGY,
)


async def authenticator_ctx(app: web.Application) -> AsyncIterator[None]:
    """The authenticator, and the loop that writes the keys' last uses behind the
    requests; after the last request, what is left of them is written if it can be."""
    catalog = app[CATALOG]
    uses = KeyUses(catalog, others=app[TOPOLOGY].other_key_uses)
    app[KEY_USES] = uses
    app[AUTHENTICATOR] = Authenticator(catalog, app[ADMIN_KEY_HASH], uses=uses)
    health = app[HEALTH]
    task = health.start(uses.run(), "key-uses")
    yield
    await health.stop(task)
    await uses.write_remaining()


async def tenant_quotas_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[TENANT_QUOTAS] = TenantQuotas(
        app[CATALOG], config.default_quotas, clock=app[CLOCKS].quota_s
    )
    yield


async def quota_book_ctx(app: web.Application) -> AsyncIterator[None]:
    config, topology = app[CONFIG], app[TOPOLOGY]
    quotas = QuotaBook(
        app[TENANT_QUOTAS],
        stored_bytes=app[BROKER].stored_bytes,
        storage_retry_s=config.retention_check_ms / 1000,
        homes=topology,
    )
    app[TENANCY] = Tenancy(
        app[CATALOG], app[AUTHENTICATOR], quotas, announcer=topology, key_uses=app[KEY_USES]
    )
    yield
