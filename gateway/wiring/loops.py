"""The server's background loops, each a ``cleanup_ctx`` entry with a watched task: a loop
that dies marks ``/healthz`` unhealthy with its name (``gateway/health.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client.registry import Collector

from gateway.http.collectors import SchedulerCollector
from gateway.http.keys import BROKER, CONFIG, HEALTH
from gateway.processes import memory
from gateway.tenancy.fairness import FairScheduler
from partitions.backoff import Backoff

log = logging.getLogger("eventbus.server")


def scheduler_collector(scheduler: FairScheduler) -> Collector:
    return SchedulerCollector(scheduler)


async def trim_ctx(app: web.Application) -> AsyncIterator[None]:
    """Give free heap pages back to the kernel every ``memory.TRIM_INTERVAL_S`` (glibc
    only: elsewhere there is no loop)."""
    if not memory.can_trim():
        yield
        return
    task = app[HEALTH].start(memory.trim_forever(), "malloc-trim")
    yield
    await app[HEALTH].stop(task)


async def group_sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Expire consumer-group members whose sessions ran out, so their partitions move; at
    shutdown, finish writing the groups' automatic commits."""
    groups = app[BROKER].groups
    task = app[HEALTH].start(groups.sweep_forever(), "group-sessions")
    yield
    await app[HEALTH].stop(task)
    # Automatic commits are written behind fetches: all of them before the catalog closes.
    await groups.write_all()


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    interval = app[CONFIG].retention_check_ms / 1000

    async def apply_forever() -> None:
        # Every pass at its time; one that fails is logged once per run of failures.
        failures = Backoff("a retention pass", log, first_s=interval, max_s=interval)
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await broker.apply_retention()
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                failures.failed(exc)
                continue
            failures.succeeded()
            if removed:
                log.info("retention removed %d segments", removed)

    task = app[HEALTH].start(apply_forever(), "retention")
    yield
    await app[HEALTH].stop(task)
