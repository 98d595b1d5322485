"""The service routes: liveness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from gateway.http.keys import BROKER, HEALTH, METRICS, OPENAPI
from gateway.http.metrics import Metrics
from gateway.http.params import json_response


async def healthz(request: web.Request) -> web.Response:
    """503 once a background loop died (its work is no longer done: restart the server),
    with the loops' names."""
    reasons = []
    broker = request.app.get(BROKER)
    if broker is not None and broker.tiered.failed is not None:
        # Nothing is uploaded or cleaned any more.
        reasons.append("tiered storage stopped")
    dead = request.app[HEALTH].dead
    if dead:
        reasons.append("background loops stopped: " + ", ".join(dead))
    if reasons:
        body = {"status": "unhealthy", "reason": "; ".join(reasons), "loops": dead}
        return json_response(body, 503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    registry: Metrics = request.app[METRICS]
    body, content_type = await registry.render_all()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
