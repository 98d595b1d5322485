"""What one worker process changes, the others hear: topic views are shared truth from the
catalog, and a worker that creates, reconfigures, splits or merges a topic tells every
other before it answers (``TOPIC_CHANGED``), and each reads the topic again; a deletion has
every worker let go of the incarnation (close its logs, cancel its uploads, forget its
cache, groups and answers) before the files go. A tenant's keys revoked or quotas changed
are forgotten everywhere the same way (``TENANT_CHANGED``). A worker that is down misses
nothing: it reads everything when it starts.

This module also answers the partition worker interface for the partitions owned here
(:class:`~partitions.worker_remote.WorkerService`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from gateway.broker.service import Broker
from gateway.processes.peers import TENANT_CHANGED, TOPIC_CHANGED, Peers
from gateway.tenancy.auth import Authenticator
from gateway.tenancy.quotas import QuotaBook
from partitions.errors import EventBusError
from partitions.routing import RoutingPartitionWorker
from partitions.worker import LocalPartitionWorker
from partitions.worker_remote import WorkerService
from tiered_storage.service import TieredStorage


def serve_partitions(
    peers: Peers,
    broker: Broker,
    local: LocalPartitionWorker,
    routing: RoutingPartitionWorker,
    tiering: TieredStorage,
) -> None:
    """Answer the partition worker interface for the partitions owned here, and the
    others' news of topics."""

    async def let_go_of_topic(tenant: str, incarnation: str) -> None:
        broker.forget_topic(tenant, incarnation)
        tiering.reader.forget_topic(tenant, incarnation)
        await tiering.uploader.cancel_topic(tenant, incarnation)
        await local.release_topic(tenant, incarnation)
        routing.forget_topic(tenant, incarnation)

    async def topic_changed(body: dict[str, Any]) -> None:
        await broker.refresh_topic(str(body["t"]), str(body["n"]))

    WorkerService(local, on_drop_topic=let_go_of_topic).register(peers.server)
    peers.register_json(TOPIC_CHANGED, topic_changed)


def serve_tenants(peers: Peers, authenticator: Authenticator, quotas: QuotaBook) -> None:
    """Forget what this worker cached of a tenant another one changed."""

    async def tenant_changed(body: dict[str, Any]) -> None:
        tenant = str(body["t"])
        authenticator.forget(tenant, body.get("k"))
        if body.get("d"):
            quotas.drop(tenant)
        else:
            quotas.forget(tenant)

    peers.register_json(TENANT_CHANGED, tenant_changed)


async def catch_up(broker: Broker) -> None:
    """Changes broadcast while this worker was starting reached nobody here: read every
    topic it knows again."""
    for view in broker.live_views():
        with contextlib.suppress(EventBusError):
            await broker.refresh_topic(view.record.tenant, view.record.name)
