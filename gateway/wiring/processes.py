"""A worker process among several, in the app: once everything here is up, answer the other
workers (every shared feature's remote half, and the forwarded HTTP requests), run the
loops that keep the workers in touch, and stop serving them last of all but metering's
loop, which still samples through them."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from autoscaler.measure import MeterOutbox
from gateway.http.keys import BROKER, HEALTH, METER, METRICS, TENANCY
from gateway.processes.answers import AnswerKeeper
from gateway.processes.forwarding import Forwarding, HttpForwarder
from gateway.processes.key_uses import serve_key_uses
from gateway.processes.meters import serve_meters, ship_meters_forever
from gateway.processes.peers import METRICS_TEXT
from gateway.processes.quota_home import serve_quotas
from gateway.processes.tiering import serve_tiering
from gateway.processes.topics import catch_up, serve_partitions, serve_tenants
from gateway.processes.usage import serve_usage
from gateway.wiring.state import (
    AUTHENTICATOR,
    FORWARDING,
    KEY_USES,
    LOADS,
    LOCAL_WORKER,
    PEERS,
    ROUTING,
    TIERING,
    TOPOLOGY,
)
from partitions.channel import Connection, Payload


async def serve_peers_ctx(app: web.Application) -> AsyncIterator[None]:
    peers, broker, health = app[PEERS], app[BROKER], app[HEALTH]
    serve_partitions(peers, broker, app[LOCAL_WORKER], app[ROUTING], app[TIERING])
    AnswerKeeper(broker).register(peers)
    serve_tenants(peers, app[AUTHENTICATOR], app[TENANCY].quotas)
    serve_quotas(peers, app[TENANCY].quotas)
    serve_tiering(peers, app[TIERING])
    serve_usage(peers, app[METER])
    serve_key_uses(peers, app[KEY_USES])
    app[LOADS].register(peers)
    if app[TOPOLOGY].leader:
        serve_meters(peers, broker)

    async def metrics_text(meta: bytes, blob: bytes, conn: Connection) -> Payload:
        return b"", app[METRICS].render()[0]

    peers.server.register(METRICS_TEXT, metrics_text)
    role = peers.role
    http = HttpForwarder({w: str(role.http_path(w)) for w in peers.clients})
    app[FORWARDING] = Forwarding(peers.index, peers.count, http)
    await peers.serve()
    tasks = [
        health.start(peers.watch_statuses(), "worker-status"),
        health.start(app[LOADS].measure_forever(), "worker-loads"),
    ]
    if isinstance(broker.meters, MeterOutbox):
        tasks.append(health.start(ship_meters_forever(peers, broker.meters), "worker-meters"))
    await catch_up(broker)
    try:
        yield
    finally:
        for task in tasks:
            await health.stop(task)
        await peers.close()
        await http.close()
