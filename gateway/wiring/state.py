"""Typed keys of what the app factory's entries build and hand to each other, and the one
Protocol every topology of the server meets."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from autoscaler.loop import Autoscaler
from gateway.broker.topology import Topology
from gateway.config import Clocks
from gateway.processes.forwarding import Forwarding
from gateway.processes.loads import Loads
from gateway.processes.peers import Peers
from gateway.processes.worker import WorkerControl
from gateway.tenancy.auth import Authenticator, TenantAnnouncer
from gateway.tenancy.key_uses import KeyUses, OtherKeyUses
from gateway.tenancy.metering import OtherMeters
from gateway.tenancy.quotas import QuotaHomes, TenantQuotas
from partitions.catalog import Catalog
from partitions.routing import RoutingPartitionWorker
from partitions.worker import LocalPartitionWorker, PartitionWorker
from tiered_storage.objects import ObjectStore
from tiered_storage.service import TieredStorage, TieringService


class ServerTopology(Topology, QuotaHomes, TenantAnnouncer, Protocol):
    """What one process, or one worker process among several, answers: the broker's
    questions, and the tenancy room's (quota homes, tenant news, the other meters and key
    uses)."""

    @property
    def other_meters(self) -> OtherMeters | None: ...

    @property
    def other_key_uses(self) -> OtherKeyUses | None: ...


CLOCKS = web.AppKey("clocks", Clocks)
CATALOG = web.AppKey("catalog", Catalog)
ADMIN_KEY_HASH = web.AppKey("admin_key_hash", str)
KEY_USES = web.AppKey("key_uses", KeyUses)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
OBJECT_STORE = web.AppKey("object_store", ObjectStore)
# This process's logs, and the partition worker the broker reaches every partition with.
LOCAL_WORKER = web.AppKey("local_worker", LocalPartitionWorker)
WORKER = web.AppKey("worker", PartitionWorker)
TOPOLOGY = web.AppKey("topology", ServerTopology)
# This process's tiered storage, and tiered storage as the broker sees it (over workers).
TIERING = web.AppKey("tiering", TieredStorage)
TIERED = web.AppKey("tiered", TieringService)
TENANT_QUOTAS = web.AppKey("tenant_quotas", TenantQuotas)
AUTOSCALER = web.AppKey("autoscaler", Autoscaler)
# Only with worker processes.
PEERS = web.AppKey("peers", Peers)
ROUTING = web.AppKey("routing", RoutingPartitionWorker)
LOADS = web.AppKey("loads", Loads)
FORWARDING = web.AppKey("forwarding", Forwarding)
WORKER_CONTROL = web.AppKey("worker_control", WorkerControl)
