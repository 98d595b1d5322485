"""The app factory: one place that wires every long-lived resource.

Each resource is one ``cleanup_ctx`` entry that starts before ``yield`` and is closed after
it, in reverse order: the malloc trim loop (``gateway/memory.py``), the catalog, the object
store, the partitions and the broker, the group sessions, tiered storage's loops
(``gateway/tiering.py``), then the retention loop.
Nothing starts lazily on a first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from importlib import metadata

from aiohttp import web

from gateway import admin, autoscaling, cluster, handlers, usage
from gateway.auth import PRINCIPAL, Authenticator, auth_middleware, bootstrap
from gateway.broker.service import Broker
from gateway.config import Clocks, ServerConfig
from gateway.fairness import FairScheduler
from gateway.forwarding import came_from_peer, forwarding_middleware
from gateway.http_errors import Handler, error_middleware
from gateway.keys import BROKER, CLOCKS, CONFIG, METRICS, OPENAPI
from gateway.logs import log_if_died, request_id
from gateway.metering import METER, metering_ctx, metering_middleware
from gateway.metrics import Metrics
from gateway.openapi import build_document
from gateway.processes import memory
from gateway.processes.role import WorkerRole
from gateway.processes.worker import WorkerControl
from gateway.quotas import QuotaBook
from gateway.tenancy import SCHEDULER, TENANCY, Tenancy, tenancy_middleware
from gateway.tiering import attach_tiering, object_store_ctx, tiering_ctx
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.worker import LocalPartitionWorker, PartitionWorker

log = logging.getLogger("eventbus.http")

# Metric labels take only these methods, so that clients cannot add series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
CATALOG = web.AppKey("catalog", SqliteCatalog)
RETENTION_TASK = web.AppKey("retention_task", asyncio.Task[None])


def _version() -> str:
    try:
        return metadata.version("eventbus")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _new_id_prefix() -> None:
    global _id_prefix
    _id_prefix = uuid.uuid4().hex[:16]


# Request ids made here: a random prefix per process (made again in a forked child) and a
# counter, unique without a random draw per request.
_id_prefix = ""
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)
_request_numbers = itertools.count()


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, structured request log and metrics, around everything else."""
    rid = request.headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
        rid = f"{_id_prefix}{next(_request_numbers):016x}"
    token = request_id.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        if not came_from_peer(request):  # counted once, where it was accepted
            request.app[METRICS].observe_request(method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": None if principal is None else principal.tenant,
                },
            )
        request_id.reset(token)


async def _catalog_ctx(app: web.Application) -> AsyncIterator[None]:
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


async def _broker_ctx(app: web.Application) -> AsyncIterator[None]:
    local = LocalPartitionWorker(app[CONFIG].data_dir)
    worker: PartitionWorker = local
    peers = None
    if cluster.WORKER_ROLE in app:  # one of several worker processes
        peers = cluster.join(app, local, app[CATALOG])
        worker = peers.routing
    broker = Broker(app[CATALOG], worker, meters=autoscaling.new_meters(app))
    tiering = attach_tiering(app, app[CATALOG], broker, local)
    if peers is not None:
        cluster.attach(peers, broker, tiering, app[METRICS])
    try:
        await broker.start()
        app[BROKER] = broker
        app[METRICS].watch_worker(worker.totals, lambda: broker.long_polls_waiting)
        app[METRICS].watch_idempotency(broker)
        yield
    finally:
        # Everything appended is durable before the logs close.
        await worker.close()


async def _tenancy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Quotas per tenant, wired into the broker (limits on topics and partitions)."""
    config, broker = app[CONFIG], app[BROKER]
    peers = app.get(cluster.CLUSTER)
    quotas = (QuotaBook if peers is None else peers.quota_book)(
        app[CATALOG],
        config.default_quotas,
        max_request_bytes=config.max_request_bytes,
        stored_bytes=broker.stored_bytes,
        storage_retry_s=config.retention_check_ms / 1000,
        clock=app[CLOCKS].quota_s,
    )
    broker.limits = quotas.limits
    announce = None
    if peers is not None:
        peers.authenticator = app[AUTHENTICATOR]
        announce = peers.tenant_changed
    app[TENANCY] = Tenancy(app[CATALOG], broker, app[AUTHENTICATOR], quotas, announce)
    yield


async def _group_sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expire consumer-group members whose sessions ran out, so their partitions move; at
    shutdown, finish writing the groups' automatic commits."""
    task = asyncio.get_running_loop().create_task(
        app[BROKER].groups.sweep_forever(), name="group-sessions"
    )
    task.add_done_callback(partial(log_if_died, log))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # Automatic commits are written behind fetches: all of them before the catalog closes.
    await app[BROKER].groups.write_all()


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    interval = app[CONFIG].retention_check_ms / 1000

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await broker.apply_retention()
            except Exception:
                log.exception("retention pass failed; trying again next time")
                continue
            if removed:
                log.info("retention removed %d segments", removed)

    task = asyncio.get_running_loop().create_task(loop(), name="retention")
    task.add_done_callback(partial(log_if_died, log))
    app[RETENTION_TASK] = task
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _on_shutdown(app: web.Application) -> None:
    # Release long-polls at once, so that shutdown does not wait out their timeouts.
    if BROKER in app:
        app[BROKER].stopping.set()
        app[BROKER].groups.stopping.set()


def create_app(
    config: ServerConfig,
    *,
    clocks: Clocks | None = None,
    role: WorkerRole | None = None,
    control: WorkerControl | None = None,
) -> web.Application:
    """The app of one process: the whole server, or (``role``) one of its worker
    processes, which reaches the others as ``gateway/cluster.py`` describes."""
    workers = role
    clocks = clocks or Clocks()
    scheduler = FairScheduler(
        config.max_concurrent_requests,
        config.max_queued_per_tenant,
        config.max_in_service_per_tenant,
    )
    app = web.Application(
        client_max_size=config.max_request_bytes,
        middlewares=[
            request_middleware,
            error_middleware,
            auth_middleware(lambda: app[AUTHENTICATOR], metrics_public=config.metrics_public),
            # A request served by another worker is forwarded before it is metered or
            # charged: its owner does both, once.
            *([forwarding_middleware(lambda: app[cluster.CLUSTER])] if workers else []),
            metering_middleware(lambda: app[METER]),
            tenancy_middleware(lambda: app[TENANCY], scheduler),
        ],
    )
    app[CONFIG] = config
    if workers is not None:
        app[cluster.WORKER_ROLE] = workers
    app[METRICS] = Metrics()
    app[METRICS].watch_scheduler(scheduler)
    app[SCHEDULER] = scheduler
    app[OPENAPI] = build_document(_version())
    for method, path, handler in handlers.ROUTES + admin.ROUTES + usage.ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.extend(
        [
            memory.trim_ctx,
            _catalog_ctx,
            object_store_ctx,
            _broker_ctx,
            _tenancy_ctx,
            _group_sessions_ctx,
            tiering_ctx,
            _retention_ctx,
        ]
    )
    app[CLOCKS] = clocks
    app.cleanup_ctx.append(autoscaling.autoscaler_ctx)
    if workers is not None:
        # The other workers stay reachable until metering's last sample and flush.
        app.cleanup_ctx.append(cluster.cluster_ctx)
    app.cleanup_ctx.append(metering_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app
