"""The partitions of this process, its tiered storage, and its topology: the one place where
one process and a worker process among several are told apart.

One process keeps every log here: the broker's partition worker is the local one, its
tiered storage this process's, its topology the null object
(:class:`~gateway.broker.topology.SingleProcess`). A worker process reaches the partitions
other workers own through the channel (:class:`~partitions.routing.RoutingPartitionWorker`),
sees tiered storage over every worker (``gateway/processes/tiering.py``), and answers the
broker's and tenancy's questions with :class:`~gateway.processes.topology.WorkerTopology`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.broker.topology import SINGLE_PROCESS
from gateway.http.collectors import ColdReadCollector, TieringCollector
from gateway.http.keys import CONFIG, METRICS
from gateway.processes.loads import Loads
from gateway.processes.peers import Peers
from gateway.processes.tiering import OtherUploaders, SharedTiering
from gateway.processes.topology import WorkerTopology
from gateway.wiring.state import (
    CATALOG,
    LOADS,
    LOCAL_WORKER,
    OBJECT_STORE,
    PEERS,
    ROUTING,
    TIERED,
    TIERING,
    TOPOLOGY,
    WORKER,
)
from gateway.wiring.storage import cold_read_settings, tiering_settings
from partitions.routing import RoutingPartitionWorker
from partitions.worker import LocalPartitionWorker
from partitions.worker_remote import RemotePartitionWorker
from tiered_storage.service import ColdPath, TieredStorage


async def partitions_ctx(app: web.Application) -> AsyncIterator[None]:
    config, catalog, store = app[CONFIG], app[CATALOG], app[OBJECT_STORE]
    cold = ColdPath(catalog, store, cold_read_settings(config))
    local = LocalPartitionWorker(config.data_dir, on_roll=cold.notify_roll, remote=cold.reader)
    app[LOCAL_WORKER] = local
    peers = app.get(PEERS)
    if peers is None:
        app[WORKER] = local
        app[TOPOLOGY] = SINGLE_PROCESS
        app[TIERING] = app[TIERED] = TieredStorage(
            catalog, local, store, tiering_settings(config), cold=cold
        )
    else:
        app[WORKER] = routing = _routing(peers, local, app)
        app[LOADS] = loads = Loads(local)
        app[TOPOLOGY] = WorkerTopology(peers, routing, loads)
        app[TIERING] = shared = TieredStorage(
            catalog,
            local,
            store,
            tiering_settings(config),
            cold=cold,
            others=OtherUploaders(peers, routing),
        )
        app[TIERED] = SharedTiering(shared, peers, routing)
    tiering = app[TIERING]
    app[METRICS].watch(TieringCollector(lambda: tiering.counters, tiering.index.remote_bytes))
    app[METRICS].watch(ColdReadCollector(cold.reader))
    yield


def _routing(
    peers: Peers, local: LocalPartitionWorker, app: web.Application
) -> RoutingPartitionWorker:
    routing = RoutingPartitionWorker(
        local,
        {w: RemotePartitionWorker(client) for w, client in peers.clients.items()},
        index=peers.index,
        count=peers.count,
        placements=app[CATALOG].list_placements,
    )
    app[ROUTING] = routing
    return routing
