"""The topology of one worker process among several (``eventbus serve --workers N``).

Every worker serves the whole HTTP API on the shared port and owns some of the partitions.
This object answers the broker's and the tenancy room's questions for such a process:

- **Partitions** are owned by the worker the catalog's placement names
  (:class:`~partitions.routing.RoutingPartitionWorker` knows it). New ones go to the least
  loaded reachable worker by measured throughput (``placement.py``, ``loads.py``); keyless
  records go to partitions owned here, when this process has active ones, without a hop.
- **Topic changes** made here are told to every other worker before they are answered.
- **State with one home**: an idempotency key's answers, a tenant's quota buckets and a
  consumer group each live in one worker (``homes.py``); the others ask it
  (``answers.py``, ``quota_home.py``) or forward the group's requests there
  (``forwarding.py``).
- **The leader**, worker 0, runs the once-per-server work: the autoscaler's decisions (topic
  describe asks it), object-store cleanup, finishing interrupted deletions, sampling
  storage for metering.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.broker.topology import AnswerHome
from gateway.broker.views import TopicView
from gateway.processes.answers import RemoteAnswerHome
from gateway.processes.homes import answer_home, quota_home
from gateway.processes.key_uses import SharedKeyUses
from gateway.processes.loads import Loads, key_json
from gateway.processes.peers import AUTOSCALE, LOAD, TENANT_CHANGED, TOPIC_CHANGED, Peers
from gateway.processes.placement import Replaced, WorkerLoad, place
from gateway.processes.quota_home import RemoteQuotaHome
from gateway.processes.role import LEADER
from gateway.processes.usage import SharedMeters
from partitions.errors import EventBusError
from partitions.partition_key import PartitionKey
from partitions.routing import RoutingPartitionWorker

log = logging.getLogger(__name__)


class WorkerTopology:
    def __init__(self, peers: Peers, routing: RoutingPartitionWorker, loads: Loads) -> None:
        self._peers = peers
        self._routing = routing
        self._loads = loads
        self.index = peers.index
        self.count = peers.count
        self._answer_homes = {w: RemoteAnswerHome(peers, w) for w in peers.clients}
        self._quota_homes = {w: RemoteQuotaHome(peers, w) for w in peers.clients}
        # The other workers' meters, for metering's readings and exports.
        self.other_meters = SharedMeters(peers, leader=self.leader)
        # The keys' uses the other workers noted, for the key listing.
        self.other_key_uses = SharedKeyUses(peers)

    @property
    def leader(self) -> bool:
        return self.index == LEADER

    # --- partitions -----------------------------------------------------------------------

    def keyless_targets(self, view: TopicView) -> list[int]:
        ids = view.active_ids
        return [pid for pid in ids if self._routing.owns(view.key(pid))] or ids

    async def place(self, tenant: str, replaced: list[PartitionKey], count: int) -> list[int]:
        """Workers for ``count`` new partitions that replace ``replaced`` (none for a new
        topic): the least loaded reachable workers, by measured throughput."""
        body = {"keys": [key_json(k) for k in replaced]}

        async def load_of(worker: int) -> dict[str, Any] | None:
            if worker == self.index:
                return await self._loads.load(body)
            try:
                answer: dict[str, Any] = await self._peers.ask(worker, LOAD, body)
            except EventBusError:
                return None  # not reachable: nothing new goes there now
            return answer

        answers = await asyncio.gather(*(load_of(w) for w in range(self.count)))
        loads = {
            w: WorkerLoad(float(a["rate"]), int(a["active"]))
            for w, a in enumerate(answers)
            if a is not None
        }
        parents = []
        for n, key in enumerate(replaced):
            owner = await self._routing.owner(key)
            answer = answers[owner]
            rate = float(answer["rates"][n]) if answer is not None else 0.0
            parents.append(Replaced(owner, rate))
        chosen = place(loads, parents, count)
        log.info(
            "placing %d new partitions of tenant %s on workers %s (loads %s)",
            count,
            tenant,
            chosen,
            {w: round(load.bytes_per_s) for w, load in loads.items()},
        )
        return chosen

    async def partition_extra(self, key: PartitionKey) -> dict[str, Any]:
        return {"worker": await self._routing.owner(key)}

    # --- news for the others --------------------------------------------------------------

    async def topic_changed(self, tenant: str, name: str) -> None:
        await self._peers.broadcast(TOPIC_CHANGED, {"t": tenant, "n": name})

    async def tenant_changed(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None:
        await self._peers.broadcast(TENANT_CHANGED, {"t": tenant, "k": key_id, "d": dropped})

    # --- homes ----------------------------------------------------------------------------

    def answer_home(self, tenant: str, topic: str, key: str) -> AnswerHome | None:
        home = answer_home(tenant, topic, key, self.count)
        return None if home == self.index else self._answer_homes[home]

    def quota_home(self, tenant: str) -> RemoteQuotaHome | None:
        home = quota_home(tenant, self.count)
        return None if home == self.index else self._quota_homes[home]

    async def leader_autoscale(self, tenant: str, name: str) -> dict[str, Any] | None:
        if self.leader:
            return None
        try:
            answer: dict[str, Any] = await self._peers.ask(
                LEADER, AUTOSCALE, {"t": tenant, "n": name}
            )
        except EventBusError:
            return None  # the leader is restarting: this worker's own measurements
        return answer
