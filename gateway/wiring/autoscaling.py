"""The autoscaler in the app: its loop, run by the process that decides for the whole
server (the leader, with worker processes; the others send it their measurements).

The measuring, the policy and the loop live in the ``autoscaler`` package; the loop reaches
the broker only through its ``ScalingTarget`` Protocol, with the tenant's
``max_partitions`` quota as its limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from autoscaler.loop import Autoscaler
from gateway.http.collectors import AutoscaleCollector
from gateway.http.keys import BROKER, CONFIG, HEALTH, METRICS
from gateway.wiring.state import AUTOSCALER, TOPOLOGY


async def autoscaler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the autoscaler loop for as long as the app runs."""
    if not app[TOPOLOGY].leader:
        yield
        return
    broker = app[BROKER]
    autoscaler = Autoscaler(
        broker, broker.meters, broker.scaling, tenant_limit=broker.partition_limit
    )
    app[AUTOSCALER] = autoscaler
    # Public metrics are served to anyone: they must not name tenants or topics.
    public = app[CONFIG].metrics_public
    app[METRICS].watch(AutoscaleCollector(broker, name_partitions=not public))
    interval = app[CONFIG].autoscale_interval_ms / 1000
    task = app[HEALTH].start(autoscaler.run_forever(interval), "autoscaler")
    yield
    await app[HEALTH].stop(task)
