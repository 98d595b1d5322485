"""Typed keys of the application's state and of each request's, and reading them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.broker.service import Broker
from gateway.config import ServerConfig
from gateway.health import Health
from gateway.http.metrics import Metrics
from gateway.tenancy.auth import Authenticator, ForbiddenError, Principal, TenantAnnouncer
from gateway.tenancy.key_uses import KeyUses
from gateway.tenancy.metering import Meter
from gateway.tenancy.quotas import QuotaBook
from gateway.tenancy.usage_export import Metering
from partitions.catalog import Catalog


@dataclass(frozen=True, slots=True)
class Tenancy:
    """What the admin routes and the front door work with."""

    catalog: Catalog
    authenticator: Authenticator
    quotas: QuotaBook
    announcer: TenantAnnouncer
    key_uses: KeyUses


CONFIG = web.AppKey("config", ServerConfig)
BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", dict[str, Any])
HEALTH = web.AppKey("health", Health)
TENANCY = web.AppKey("tenancy", Tenancy)
METER = web.AppKey("meter", Meter)
METERING = web.AppKey("metering", Metering)

# Who is calling: set by the front door for every request that is not public.
PRINCIPAL = web.RequestKey("principal", Principal)


ADMIN_ON_TENANT_ROUTE = "the admin key cannot use tenant routes; use a tenant's key"


def tenant_of(request: web.Request) -> str:
    """The calling tenant of a tenant route (the gate lets only tenants' keys through)."""
    tenant = request[PRINCIPAL].tenant
    if tenant is None:
        raise ForbiddenError(ADMIN_ON_TENANT_ROUTE)
    return tenant
