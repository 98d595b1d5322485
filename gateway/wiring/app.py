"""The app factory: one place that wires every long-lived resource.

Each resource is one ``cleanup_ctx`` entry (a module of this package) that builds its
objects with everything they need, starts its watched tasks before ``yield``, and closes
them after, in reverse order:

1. the malloc trim loop (``loops.py``);
2. the catalog and the first start's keys (``catalog.py``);
3. the object store (``storage.py``);
4. the partitions: this process's logs, tiered storage, and the topology, the one object
   that differs between one process and worker processes (``topology.py``);
5. the authenticator with the writer of the keys' last uses, the tenants' quotas, then the
   broker, then the quota book (``tenancy.py``, ``broker.py``);
6. the group sessions' sweeper, tiered storage's loops, retention and the autoscaler
   (``loops.py``, ``storage.py``, ``autoscaling.py``);
7. the meter (``metering.py``);
8. with worker processes, serving the others (``processes.py``), which stays up until
   metering's last sample and flush;
9. metering's loop (``metering.py``), closed first with a last sample and flush.

Nothing starts lazily on a first request.
"""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from gateway.config import Clocks, ServerConfig
from gateway.health import Health
from gateway.http.events import STREAMS, Streams
from gateway.http.keys import BROKER, CONFIG, HEALTH, METER, METRICS, OPENAPI, TENANCY
from gateway.http.metrics import Metrics
from gateway.http.middlewares import Forwarder, front_door
from gateway.http.openapi.document import build_document
from gateway.http.routes import ROUTES, router_order
from gateway.http.routing import index
from gateway.processes.peers import Peers
from gateway.processes.role import WorkerRole
from gateway.processes.worker import WorkerControl
from gateway.tenancy.fairness import FairScheduler
from gateway.wiring import (
    autoscaling,
    broker,
    catalog,
    loops,
    metering,
    processes,
    storage,
    tenancy,
    topology,
)
from gateway.wiring.state import AUTHENTICATOR, CLOCKS, FORWARDING, PEERS, WORKER_CONTROL


def _version() -> str:
    try:
        return metadata.version("eventbus")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(
    config: ServerConfig,
    *,
    clocks: Clocks | None = None,
    role: WorkerRole | None = None,
    control: WorkerControl | None = None,
) -> web.Application:
    """The app of one process: the whole server, or (``role``) one of its worker
    processes, which reaches the others as ``gateway/processes/`` describes."""
    scheduler = FairScheduler(
        config.max_concurrent_requests,
        config.max_queued_per_tenant,
        config.max_in_service_per_tenant,
    )
    peers = None if role is None else Peers(role)

    def forwarding() -> Forwarder:
        return app[FORWARDING]

    metrics = Metrics(gather=None if peers is None else peers.metrics_texts)
    app = web.Application(
        client_max_size=config.max_request_bytes,
        middlewares=[
            front_door(
                index(ROUTES),
                metrics=metrics,
                authenticator=lambda: app[AUTHENTICATOR],
                quotas=lambda: app[TENANCY].quotas,
                meter=lambda: app[METER],
                scheduler=scheduler,
                metrics_public=config.metrics_public,
                forwarder=None if peers is None else forwarding,
            ),
        ],
    )
    app[CONFIG] = config
    app[CLOCKS] = clocks or Clocks()
    app[HEALTH] = Health()
    app[METRICS] = metrics
    metrics.watch(loops.scheduler_collector(scheduler))
    app[STREAMS] = Streams(config.max_streams_per_tenant)
    app[OPENAPI] = build_document(_version(), ROUTES)
    for route in router_order():
        app.router.add_route(route.method, route.path, route.handler)
    if peers is not None:
        app[PEERS] = peers
    if control is not None:
        app[WORKER_CONTROL] = control
    app.cleanup_ctx.extend(
        [
            loops.trim_ctx,
            catalog.catalog_ctx,
            storage.object_store_ctx,
            topology.partitions_ctx,
            tenancy.authenticator_ctx,
            tenancy.tenant_quotas_ctx,
            broker.broker_ctx,
            tenancy.quota_book_ctx,
            loops.group_sessions_ctx,
            storage.tiering_ctx,
            loops.retention_ctx,
            autoscaling.autoscaler_ctx,
            metering.meter_ctx,
        ]
    )
    if peers is not None:
        app.cleanup_ctx.append(processes.serve_peers_ctx)
    app.cleanup_ctx.append(metering.metering_loop_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    # Release long-polls and end event streams at once, so that shutdown does not wait out
    # their timeouts.
    app[STREAMS].stop()
    if BROKER in app:
        app[BROKER].stop_waiting()
