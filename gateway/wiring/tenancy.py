"""Tenancy in the app: the tenants' quotas (read by the broker for its limits), then, once
the broker can measure what tenants store, the quota book the tenant gate charges."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http.keys import BROKER, CONFIG, TENANCY, Tenancy
from gateway.tenancy.quotas import QuotaBook, TenantQuotas
from gateway.wiring.state import AUTHENTICATOR, CATALOG, CLOCKS, TENANT_QUOTAS, TOPOLOGY


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
    app[TENANCY] = Tenancy(app[CATALOG], app[AUTHENTICATOR], quotas, announcer=topology)
    yield
