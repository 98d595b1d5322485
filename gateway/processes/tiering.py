"""Tiered storage seen from one worker process among several: uploads, retention and
cleanup run where each partition's files are (its owner), and what the others hold is
asked of them: their partitions' remote state for topic describe and stored bytes, whether
an upload of a segment is still tried there, their upload backlog and health (as they last
reported it, within a quarter second)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.processes.loads import key_json, key_of
from gateway.processes.peers import STATUS, TIERING_STATUS, WILL_RETRY, Peers
from partitions.errors import EventBusError, StorageBackpressureError
from partitions.partition_key import PartitionKey
from partitions.routing import RoutingPartitionWorker
from tiered_storage.service import PartitionTiering, TieredStorage


class OtherUploaders:
    """What the local tiering service asks of the other workers (its ``others``)."""

    def __init__(self, peers: Peers, routing: RoutingPartitionWorker) -> None:
        self._peers = peers
        self._routing = routing

    @property
    def everywhere(self) -> RoutingPartitionWorker:
        """Every worker's partitions: a topic's size is worked out over all of them."""
        return self._routing

    async def will_retry(self, key: PartitionKey, base_offset: int) -> bool | None:
        """Whether the partition's owner still tries that upload (None: this process is
        the owner)."""
        owner = await self._routing.owner(key)
        if owner == self._peers.index:
            return None
        try:
            return bool(await self._peers.ask(owner, WILL_RETRY, [key_json(key), base_offset]))
        except EventBusError:
            return True  # its owner is restarting: it retries its own uploads after


class SharedTiering:
    """The broker's tiered storage over every worker: the local service for the partitions
    owned here, the owners for the rest."""

    def __init__(self, local: TieredStorage, peers: Peers, routing: RoutingPartitionWorker) -> None:
        self.local = local
        self._peers = peers
        self._routing = routing

    @property
    def failed(self) -> BaseException | None:
        if self.local.failed is not None:
            return self.local.failed
        for worker, status in sorted(self._peers.statuses.items()):
            if status.get("failed"):
                return RuntimeError(f"worker {worker}: tiered storage stopped")
        return None

    def check_backpressure(self) -> None:
        """Refuse produce while the server's upload backlog, over every worker, is over the
        cap (the others' backlogs as they last reported them)."""
        self.local.check_backpressure()
        counters = self.local.counters
        others = sum(int(s.get("backlog", 0)) for s in self._peers.statuses.values())
        backlog = counters.backlog_bytes + others
        cap = self.local.settings.max_upload_backlog_bytes
        if backlog > cap:
            counters.backpressure_rejections += 1
            raise StorageBackpressureError(
                f"{backlog} bytes wait for upload to object storage, more than the cap of "
                f"{cap}; produce resumes once uploads catch up",
                backlog_bytes=backlog,
                cap_bytes=cap,
            )

    async def retain_topic(
        self,
        tenant: str,
        name: str,
        incarnation: str,
        config: Mapping[str, Any],
        partition_ids: Sequence[int],
    ) -> int:
        owned = [
            pid
            for pid in partition_ids
            if await self._routing.owner(PartitionKey(tenant, incarnation, pid))
            == self._peers.index
        ]
        if not owned:
            return 0
        return await self.local.retention.retain_topic(
            tenant, name, incarnation, config, partition_ids, owned=owned
        )

    async def delete_topic_objects(self, tenant: str, incarnation: str) -> None:
        await self.local.delete_topic_objects(tenant, incarnation)

    async def remote_only_bytes(self, key: PartitionKey) -> int:
        owner = await self._routing.owner(key)
        if owner == self._peers.index:
            return await self.local.remote_only_bytes(key)
        status = await self._peers.ask(owner, TIERING_STATUS, key_json(key))
        return int(status["remote_only_bytes"])

    async def partition_status(self, key: PartitionKey) -> PartitionTiering:
        owner = await self._routing.owner(key)
        if owner == self._peers.index:
            return await self.local.partition_status(key)
        status = dict(await self._peers.ask(owner, TIERING_STATUS, key_json(key)))
        status.pop("remote_only_bytes", None)
        return PartitionTiering(**status)


def serve_tiering(peers: Peers, tiering: TieredStorage) -> None:
    """Answer the others about this worker's tiered storage and its partitions."""

    async def status(body: Any) -> dict[str, Any]:
        return {"backlog": tiering.counters.backlog_bytes, "failed": tiering.failed is not None}

    async def partition(body: list[Any]) -> dict[str, Any]:
        key = key_of(body)
        found = await tiering.partition_status(key)
        return {
            "remote_start_offset": found.remote_start_offset,
            "remote_end_offset": found.remote_end_offset,
            "remote_bytes": found.remote_bytes,
            "remote_segments": found.remote_segments,
            "segments_pending_upload": found.segments_pending_upload,
            "bytes_pending_upload": found.bytes_pending_upload,
            "remote_only_bytes": await tiering.remote_only_bytes(key),
        }

    async def will_retry(body: list[Any]) -> bool:
        return tiering.uploader.will_retry(key_of(body[0]), int(body[1]))

    peers.register_json(STATUS, status)
    peers.register_json(TIERING_STATUS, partition)
    peers.register_json(WILL_RETRY, will_retry)
