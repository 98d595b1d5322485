"""One server as several worker processes: what each runs, and how they reach each other.

``eventbus serve --workers N`` runs N worker processes under a supervisor
(``gateway/supervisor.py``). Every worker serves the whole HTTP API on the shared port and
owns some of the partitions: their logs, appends, reads, waits, uploads and retention. A
:class:`Cluster` is one worker's view of the others:

- **Partitions** are reached through :class:`~partitions.routing.RoutingPartitionWorker`:
  a partition owned here is served by the local worker, one owned elsewhere through its
  owner's channel socket. New partitions are placed on the least loaded worker
  (``gateway/placement.py``), in the same catalog step that creates them.
- **Topic views** are shared truth from the catalog; a worker that changes a topic (creates,
  reconfigures, splits, merges) tells every other before it answers, and each reads the
  topic again; a deletion has every worker let go of the topic before its files go.
- **State with one owner**: a consumer group's requests are served by one worker
  (forwarded there: ``gateway/forwarding.py``); an idempotency key's answers are kept by one
  worker, which the worker that writes a produce asks what to write and tells where it
  went; a tenant's quota buckets are kept by its home worker (``gateway/quota_home.py``);
  the once-per-server work (the autoscaler's decisions, object-store cleanup, finishing
  interrupted deletions, sampling storage for metering) is done by worker 0, the leader.
  The others send the leader what their appends measured, every tenth of a second.
- **What the API reports** is the server's, not one process's: ``/metrics`` sums every
  worker's numbers, topic describe asks the leader for the autoscaler's view and each
  partition's owner for its tiered storage, and ``/healthz`` looks at every worker.

Workers reach each other over Unix sockets in the server's run directory: one for the
channel (``partitions/channel.py``) and one for forwarded HTTP requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from autoscaler.measure import Geometry, MeterOutbox
from autoscaler.policy import KeySample
from gateway.auth import PRINCIPAL, Authenticator
from gateway.autoscaling import autoscale_json
from gateway.broker.service import AnswerClaim, AnswerTicket, Broker, TopicView, key_hash
from gateway.forwarding import HttpForwarder, stable_hash
from gateway.logs import log_if_died
from gateway.metrics import Metrics
from gateway.placement import Replaced, WorkerLoad, place
from gateway.processes.role import LEADER, WorkerRole
from gateway.quota_home import SharedQuotaBook
from gateway.quotas import Quotas
from partitions.catalog import Catalog
from partitions.channel import ChannelClient, ChannelServer, Connection, Payload
from partitions.errors import (
    EventBusError,
    PartitionUnavailableError,
    StorageBackpressureError,
    WorkerUnreachableError,
)
from partitions.partition_key import PartitionKey
from partitions.routing import RoutingPartitionWorker
from partitions.worker import LocalPartitionWorker
from partitions.worker_remote import RemotePartitionWorker, WorkerService
from tiered_storage.service import PartitionTiering, TieredStorage

if TYPE_CHECKING:
    from gateway.metering import Meter, UsageExporter

log = logging.getLogger(__name__)

# The channel ops of the gateway (the partition worker's are below 32).
TOPIC_CHANGED = 32
TENANT_CHANGED = 33
QUOTA = 34
METERS = 35
AUTOSCALE = 36
METRICS_TEXT = 37
STATUS = 38
TIERING_STATUS = 39
WILL_RETRY = 40
LOAD = 41
USAGE_SETTLE = 42
USAGE_SETTLED = 43
ANSWER_CLAIM = 44
ANSWER_SETTLE = 45

STATUS_INTERVAL_S = 0.25
SHIP_INTERVAL_S = 0.1
LOAD_INTERVAL_S = 1.0
# A worker that does not answer a broadcast within this long is left to catch up by itself.
BROADCAST_TIMEOUT_S = 10.0


JsonOp = Callable[[Any], Awaitable[Any]]


def _json_handler(op: JsonOp) -> Callable[[bytes, bytes, Connection], Awaitable[Payload]]:
    async def handler(meta: bytes, blob: bytes, conn: Connection) -> Payload:
        answer = await op(orjson.loads(meta) if meta else None)
        return orjson.dumps(answer), b""

    return handler


def _key(item: list[Any]) -> PartitionKey:
    return PartitionKey(str(item[0]), str(item[1]), int(item[2]))


def _key_json(key: PartitionKey) -> list[Any]:
    return [key.tenant, key.incarnation, key.partition_id]


class Cluster:
    """One worker process's part in the server (see the module's docstring)."""

    def __init__(self, role: WorkerRole, local: LocalPartitionWorker, catalog: Catalog) -> None:
        self.role = role
        self.index = role.index
        self.count = role.count
        self.local = local
        self.catalog = catalog
        self.server = ChannelServer(role.channel_path(role.index))
        self.clients = {
            worker: ChannelClient(role.channel_path(worker), name=f"worker {worker}")
            for worker in range(role.count)
            if worker != role.index
        }
        self.routing = RoutingPartitionWorker(
            local,
            {w: RemotePartitionWorker(c) for w, c in self.clients.items()},
            index=role.index,
            count=role.count,
            placements=catalog.list_placements,
        )
        WorkerService(local, on_drop_topic=self._let_go_of_topic).register(self.server)
        for op, handler in (
            (TOPIC_CHANGED, self._topic_changed),
            (TENANT_CHANGED, self._tenant_changed),
            (QUOTA, self._quota),
            (METERS, self._meters),
            (AUTOSCALE, self._autoscale),
            (STATUS, self._status),
            (TIERING_STATUS, self._tiering_status),
            (WILL_RETRY, self._will_retry),
            (LOAD, self._load),
            (USAGE_SETTLE, self._usage_settle),
            (USAGE_SETTLED, self._usage_settled),
            (ANSWER_SETTLE, self._answer_settle),
        ):
            self.server.register(op, _json_handler(handler))
        self.server.register(ANSWER_CLAIM, self._answer_claim)
        self.server.register(METRICS_TEXT, self._metrics_text)
        self.forwarder = HttpForwarder(
            {w: str(role.http_path(w)) for w in range(role.count) if w != role.index}
        )
        # Wired by the app as its resources come up.
        self.broker: Broker | None = None
        self.tiering: TieredStorage | None = None
        self.quotas: SharedQuotaBook | None = None
        self.authenticator: Authenticator | None = None
        self.metrics: Metrics | None = None
        self.meter: Meter | None = None
        # What the others said of themselves lately: upload backlog, health.
        self._peers: dict[int, dict[str, Any]] = {}
        # Bytes per second appended to each partition owned here (a moving average).
        self._rates: dict[PartitionKey, float] = {}
        self._counted: dict[PartitionKey, int] = {}
        self.bytes_per_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # Attempts at idempotent requests whose answers are kept here, run by another
        # process: the claim, and the topic's partitions (all unsure if it goes away).
        self._claims: dict[int, tuple[AnswerClaim, list[int]]] = {}
        self._claims_of: dict[Connection, set[int]] = {}
        self._claim_ids = itertools.count(1)

    # --- calls to the others -----------------------------------------------------------------

    async def ask(self, worker: int, op: int, body: Any = None) -> Any:
        meta, _ = await self.clients[worker].call(op, orjson.dumps(body))
        return orjson.loads(meta) if meta else None

    async def broadcast(self, op: int, body: Any) -> None:
        """Tell every other worker, and wait until each has taken it in (or is down)."""

        async def one(worker: int) -> None:
            try:
                async with asyncio.timeout(BROADCAST_TIMEOUT_S):
                    await self.ask(worker, op, body)
            except WorkerUnreachableError:
                pass  # down: it reads everything afresh when it starts
            except (EventBusError, TimeoutError) as exc:
                log.warning("worker %d did not take in op %d: %s", worker, op, exc)

        await asyncio.gather(*(one(w) for w in self.clients))

    # --- hooks the broker, tenancy and handlers call -------------------------------------------

    def tenant_of(self, request: web.Request) -> str | None:
        principal = request.get(PRINCIPAL)
        if principal is None or principal.admin:
            return None
        tenant: str | None = principal.tenant
        return tenant

    async def forward(self, owner: int, request: web.Request) -> web.StreamResponse:
        return await self.forwarder.forward(owner, request)

    async def announce_topic(self, tenant: str, name: str) -> None:
        await self.broadcast(TOPIC_CHANGED, {"t": tenant, "n": name})

    async def tenant_changed(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None:
        await self.broadcast(TENANT_CHANGED, {"t": tenant, "k": key_id, "d": dropped})

    async def ask_quota(self, worker: int, request: dict[str, Any]) -> None:
        await self.ask(worker, QUOTA, request)

    def quota_book(self, catalog: Catalog, defaults: Quotas, **kwargs: Any) -> SharedQuotaBook:
        self.quotas = SharedQuotaBook(
            catalog, defaults, index=self.index, count=self.count, ask=self.ask_quota, **kwargs
        )
        return self.quotas

    async def place(self, tenant: str, replaced: list[PartitionKey], count: int) -> list[int]:
        """Workers for ``count`` new partitions that replace ``replaced`` (none for a new
        topic): the least loaded reachable workers, by measured throughput."""
        body = {"keys": [_key_json(k) for k in replaced]}

        async def load_of(worker: int) -> dict[str, Any] | None:
            if worker == self.index:
                return await self._load(body)
            try:
                answer: dict[str, Any] = await self.ask(worker, LOAD, body)
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
            owner = await self.routing.owner(key)
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

    def share_meter(self, meter: Meter, exporter: UsageExporter) -> None:
        """Metering over the workers: each counts its own requests and flushes them (the
        catalog adds them up); the leader alone samples what tenants store and exports
        completed hours, once every worker's counts of them are in the catalog; a reading
        first has every other worker flush."""
        self.meter = meter
        meter.before_reading = self.settle_usage
        exporter.settled = self.usage_settled if self.role.leader else _never

    async def settle_usage(self) -> None:
        await self.broadcast(USAGE_SETTLE, None)

    async def usage_settled(self, end_ms: int) -> bool:
        if self.meter is None or not self.meter.settled_before(end_ms):
            return False
        for worker in self.clients:
            try:
                if not await self.ask(worker, USAGE_SETTLED, end_ms):
                    return False
            except EventBusError:
                return False  # not reachable: its counts may still come
        return True

    # --- idempotent produce: the answers of a key are kept by one worker -------------------

    def serves(self, tenant: str, topic: str, key: str) -> bool:
        return answer_home_of(tenant, topic, key, self.count) == self.index

    async def claim(
        self,
        tenant: str,
        topic: str,
        incarnation: str,
        key: str,
        request_hash: bytes,
        total: int,
    ) -> AnswerTicket:
        home = answer_home_of(tenant, topic, key, self.count)
        body = {"t": tenant, "n": topic, "i": incarnation, "k": key, "h": request_hash.hex()}
        answer: dict[str, Any] = await self.ask(home, ANSWER_CLAIM, {**body, "c": total})
        if answer.get("answer") is not None:
            return AnswerTicket([(int(p), int(o)) for p, o in answer["answer"]])
        return AnswerTicket(
            None,
            missing=[int(i) for i in answer["missing"]],
            request_hash=bytes.fromhex(answer["h"]),
            accepted_ms=int(answer["a"]),
            total_records=int(answer["c"]),
            token=int(answer["token"]) * self.count + home,
        )

    async def settle(
        self,
        ticket: AnswerTicket,
        placed: Sequence[tuple[int, tuple[int, int]]],
        lost: Collection[int],
    ) -> list[tuple[int, int]] | None:
        token, home = divmod(ticket.token, self.count)
        body = {
            "token": token,
            "placed": [[i, p, o] for i, (p, o) in placed],
            "lost": sorted(lost),
        }
        answer = await self.ask(home, ANSWER_SETTLE, body)
        if answer is None:
            return None
        return [(int(p), int(o)) for p, o in answer]

    async def _answer_claim(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        body = orjson.loads(meta)
        broker = self.broker
        if broker is None:
            raise WorkerUnreachableError("this worker is still starting; retry")
        tenant, topic, incarnation = str(body["t"]), str(body["n"]), str(body["i"])
        view = await broker.view(tenant, topic)
        if view.record.incarnation != incarnation:
            await broker.refresh_topic(tenant, topic)
            view = await broker.view(tenant, topic)
            if view.record.incarnation != incarnation:
                raise PartitionUnavailableError(
                    f"topic {topic!r} changed while producing; retry", topic=topic
                )
        claim = await broker.claim_answer(
            tenant, view, str(body["k"]), bytes.fromhex(body["h"]), int(body["c"])
        )
        entry = claim.entry
        if claim.busy is None:
            return orjson.dumps({"answer": entry.answer()}), b""
        token = next(self._claim_ids)
        self._claims[token] = (claim, sorted(view.partitions))
        tokens = self._claims_of.get(conn)
        if tokens is None:
            tokens = self._claims_of[conn] = set()
            conn.on_close.append(lambda: self._claimer_gone(conn))
        tokens.add(token)
        answer = {
            "token": token,
            "missing": entry.missing(),
            "h": entry.request_hash.hex(),
            "a": entry.accepted_ms,
            "c": entry.total_records,
        }
        return orjson.dumps(answer), b""

    def _claimer_gone(self, conn: Connection) -> None:
        """The process writing attempts went away: what they wrote is unknown."""
        for token in self._claims_of.pop(conn, set()):
            found = self._claims.pop(token, None)
            if found is not None and self.broker is not None:
                claim, partitions = found
                self.broker.settle_answer(claim, [], partitions)

    async def _answer_settle(self, body: dict[str, Any]) -> list[list[int]] | None:
        token = int(body["token"])
        for tokens in self._claims_of.values():
            tokens.discard(token)
        found = self._claims.pop(token, None)
        if found is None or self.broker is None:
            return None  # its writer was taken for gone: the next attempt looks it up
        claim, _ = found
        placed = [(int(i), (int(p), int(o))) for i, p, o in body["placed"]]
        self.broker.settle_answer(claim, placed, [int(p) for p in body["lost"]])
        if not claim.entry.complete:
            return None
        return [[p, o] for p, o in claim.entry.answer()]

    async def describe_extra(self, key: PartitionKey) -> dict[str, Any]:
        return {"worker": await self.routing.owner(key)}

    async def leader_autoscale(self, view: TopicView) -> dict[str, Any]:
        """The autoscaler's view of a topic, from the leader that decides."""
        record = view.record
        try:
            answer: dict[str, Any] = await self.ask(
                LEADER, AUTOSCALE, {"t": record.tenant, "n": record.name}
            )
        except EventBusError:
            if self.broker is None:
                raise
            return autoscale_json(self.broker, view)  # the leader is restarting
        return answer

    async def peer_metrics(self) -> list[bytes]:
        async def one(worker: int) -> bytes:
            try:
                _, blob = await self.clients[worker].call(METRICS_TEXT)
            except EventBusError:
                return b""
            return blob

        return list(await asyncio.gather(*(one(w) for w in self.clients)))

    def peer_failure(self) -> BaseException | None:
        for worker, status in sorted(self._peers.items()):
            if status.get("failed"):
                return RuntimeError(f"worker {worker}: tiered storage stopped")
        return None

    def peer_backlog_bytes(self) -> int:
        return sum(int(status.get("backlog", 0)) for status in self._peers.values())

    async def will_retry(self, key: PartitionKey, base_offset: int) -> bool:
        owner = await self.routing.owner(key)
        if owner == self.index:
            return self.tiering is not None and self.tiering.uploader.will_retry(key, base_offset)
        try:
            return bool(await self.ask(owner, WILL_RETRY, [_key_json(key), base_offset]))
        except EventBusError:
            return True  # its owner is restarting: it retries its own uploads after

    async def tiering_status(self, key: PartitionKey) -> dict[str, Any]:
        owner = await self.routing.owner(key)
        if owner == self.index:
            return await self._tiering_status(_key_json(key))
        answer: dict[str, Any] = await self.ask(owner, TIERING_STATUS, _key_json(key))
        return answer

    # --- what the others ask of this one ---------------------------------------------------------

    async def _let_go_of_topic(self, tenant: str, incarnation: str) -> None:
        if self.broker is not None:
            self.broker.forget_topic(tenant, incarnation)
        if self.tiering is not None:
            self.tiering.reader.forget_topic(tenant, incarnation)
            await self.tiering.uploader.cancel_topic(tenant, incarnation)
        await self.local.release_topic(tenant, incarnation)
        self.routing.forget_topic(tenant, incarnation)

    async def _topic_changed(self, body: dict[str, Any]) -> None:
        if self.broker is not None:
            await self.broker.refresh_topic(str(body["t"]), str(body["n"]))

    async def _tenant_changed(self, body: dict[str, Any]) -> None:
        tenant = str(body["t"])
        if self.authenticator is not None:
            self.authenticator.forget(tenant, body.get("k"))
        if self.quotas is not None:
            if body.get("d"):
                self.quotas.drop(tenant)
            else:
                self.quotas.forget(tenant)

    async def _quota(self, body: dict[str, Any]) -> None:
        if self.quotas is None:
            raise WorkerUnreachableError("this worker is still starting; retry")
        await self.quotas.serve(body)

    async def _meters(self, body: list[list[Any]]) -> None:
        if self.broker is None:
            return
        meters = self.broker.meters
        for item in body:
            tenant, incarnation, pid, slice_ms, keep, at_ms, nbytes, nrecords, samples = item
            meters.add_measured(
                PartitionKey(tenant, incarnation, pid),
                Geometry(slice_ms, keep),
                at_ms,
                nbytes,
                nrecords,
                [
                    KeySample(h, b, r, None if k is None else bytes.fromhex(k))
                    for h, b, r, k in samples
                ],
            )

    async def _autoscale(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.broker is None:
            raise WorkerUnreachableError("the leader is still starting; retry")
        view = await self.broker.view(str(body["t"]), str(body["n"]))
        return autoscale_json(self.broker, view)

    async def _metrics_text(self, meta: bytes, blob: bytes, conn: Connection) -> Payload:
        if self.metrics is None:
            return b"", b""
        return b"", self.metrics.render()[0]

    async def _status(self, body: Any) -> dict[str, Any]:
        tiering = self.tiering
        return {
            "backlog": 0 if tiering is None else tiering.counters.backlog_bytes,
            "failed": tiering is not None and tiering.failed is not None,
        }

    async def _tiering_status(self, body: list[Any]) -> dict[str, Any]:
        if self.tiering is None:
            raise WorkerUnreachableError("this worker is still starting; retry")
        key = _key(body)
        status = await self.tiering.partition_status(key)
        return {
            "remote_start_offset": status.remote_start_offset,
            "remote_end_offset": status.remote_end_offset,
            "remote_bytes": status.remote_bytes,
            "remote_segments": status.remote_segments,
            "segments_pending_upload": status.segments_pending_upload,
            "bytes_pending_upload": status.bytes_pending_upload,
            "remote_only_bytes": await self.tiering.remote_only_bytes(key),
        }

    async def _usage_settle(self, body: Any) -> None:
        if self.meter is not None:
            await self.meter.sample()
            await self.meter.flush()

    async def _usage_settled(self, body: int) -> bool:
        return self.meter is not None and self.meter.settled_before(int(body))

    async def _will_retry(self, body: list[Any]) -> bool:
        key = _key(body[0])
        return self.tiering is not None and self.tiering.uploader.will_retry(key, int(body[1]))

    async def _load(self, body: dict[str, Any]) -> dict[str, Any]:
        active = 0
        for key in self.local.partition_keys():
            with contextlib.suppress(EventBusError):
                if not self.local.log(key).sealed:
                    active += 1
        keys = [_key(item) for item in body.get("keys", [])]
        return {
            "rate": self.bytes_per_s,
            "active": active,
            "rates": [self._rates.get(key, 0.0) for key in keys],
        }

    # --- background ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the others, and start the background work (after the broker started)."""
        await self.server.start()
        loop = asyncio.get_running_loop()
        work: list[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = [
            (self._watch_peers, "worker-status"),
            (self._measure_loads, "worker-loads"),
        ]
        if self.broker is not None and isinstance(self.broker.meters, MeterOutbox):
            work.append((self._ship_meters, "worker-meters"))
        for run, name in work:
            task = loop.create_task(run(), name=name)
            task.add_done_callback(partial(log_if_died, log))
            self._tasks.append(task)
        if self.broker is not None:
            # Changes broadcast while this worker was starting reached nobody here.
            for view in self.broker.live_views():
                with contextlib.suppress(EventBusError):
                    await self.broker.refresh_topic(view.record.tenant, view.record.name)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.server.close()
        for client in self.clients.values():
            await client.close()
        await self.forwarder.close()

    async def _watch_peers(self) -> None:
        while True:
            for worker in self.clients:
                try:
                    self._peers[worker] = await self.ask(worker, STATUS)
                except EventBusError:
                    self._peers.pop(worker, None)
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _measure_loads(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(LOAD_INTERVAL_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            counted = dict(self.local.appended_bytes)
            rates: dict[PartitionKey, float] = {}
            for key, nbytes in counted.items():
                rate = (nbytes - self._counted.get(key, 0)) / elapsed
                previous = self._rates.get(key)
                rates[key] = rate if previous is None else (rate + previous) / 2
            self._rates, self._counted = rates, counted
            self.bytes_per_s = sum(rates.values())

    async def _ship_meters(self) -> None:
        """Send what this worker's appends measured to the leader, which decides."""
        outbox = self.broker.meters if self.broker is not None else None
        if not isinstance(outbox, MeterOutbox):
            return
        while True:
            await asyncio.sleep(SHIP_INTERVAL_S)
            taken = outbox.take()
            if not taken:
                continue
            body = [
                [
                    key.tenant,
                    key.incarnation,
                    key.partition_id,
                    bucket.geometry.slice_ms,
                    bucket.geometry.keep,
                    at_ms,
                    bucket.nbytes,
                    bucket.nrecords,
                    [
                        [s.hash, s.nbytes, s.nrecords, None if s.key is None else s.key.hex()]
                        for s in bucket.samples
                    ],
                ]
                for key, at_ms, bucket in taken
            ]
            with contextlib.suppress(EventBusError):
                await self.ask(LEADER, METERS, body)  # the leader is restarting: lost


def answer_home_of(tenant: str, topic: str, key: str, count: int) -> int:
    """The worker that keeps an idempotency key's answers."""
    return stable_hash(tenant, topic, "idempotency", key) % count


async def _never(end_ms: int) -> bool:
    return False


class ClusterTiering:
    """Tiered storage seen from one worker process: uploads and retention of the partitions
    owned here by the local service; the others' state asked of their owners."""

    def __init__(self, local: TieredStorage, cluster: Cluster) -> None:
        self.local = local
        self.cluster = cluster
        local.retention.reader = cluster.routing
        local.cleaner.will_retry = cluster.will_retry

    @property
    def failed(self) -> BaseException | None:
        return self.local.failed or self.cluster.peer_failure()

    def check_backpressure(self) -> None:
        """Refuse produce while the server's upload backlog, over every worker, is over the
        cap (the others' backlogs as they last reported them)."""
        self.local.check_backpressure()
        counters = self.local.counters
        backlog = counters.backlog_bytes + self.cluster.peer_backlog_bytes()
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
        config: Any,
        partition_ids: Any,
    ) -> int:
        routing = self.cluster.routing
        owned = [
            pid
            for pid in partition_ids
            if await routing.owner(PartitionKey(tenant, incarnation, pid)) == self.cluster.index
        ]
        if not owned:
            return 0
        return await self.local.retention.retain_topic(
            tenant, name, incarnation, config, partition_ids, owned=owned
        )

    async def delete_topic_objects(self, tenant: str, incarnation: str) -> None:
        await self.local.delete_topic_objects(tenant, incarnation)

    async def remote_only_bytes(self, key: PartitionKey) -> int:
        if await self.cluster.routing.owner(key) == self.cluster.index:
            return await self.local.remote_only_bytes(key)
        return int((await self.cluster.tiering_status(key))["remote_only_bytes"])

    async def partition_status(self, key: PartitionKey) -> PartitionTiering:
        if await self.cluster.routing.owner(key) == self.cluster.index:
            return await self.local.partition_status(key)
        status = dict(await self.cluster.tiering_status(key))
        status.pop("remote_only_bytes", None)
        return PartitionTiering(**status)


# --- wiring into the app -------------------------------------------------------------------------

CLUSTER = web.AppKey("cluster", Cluster)
WORKER_ROLE = web.AppKey("worker_role", WorkerRole)


def join(app: web.Application, local: LocalPartitionWorker, catalog: Catalog) -> Cluster:
    """Make this process's :class:`Cluster` (from the broker's cleanup_ctx entry)."""
    cluster = Cluster(app[WORKER_ROLE], local, catalog)
    app[CLUSTER] = cluster
    return cluster


def attach(cluster: Cluster, broker: Broker, tiering: TieredStorage, metrics: Metrics) -> None:
    """Wire the broker, tiered storage and metrics of this process to the others."""
    cluster.broker = broker
    cluster.tiering = tiering
    cluster.metrics = metrics
    broker.placer = cluster.place
    broker.announce = cluster.announce_topic
    broker.leader = cluster.role.leader
    broker.describe_extra = cluster.describe_extra
    broker.answer_home = cluster
    broker.owns = cluster.routing.owns
    broker.tiered = ClusterTiering(tiering, cluster)
    if not cluster.role.leader:
        broker.meters = MeterOutbox(key_hash, clock_ms=broker.meters.clock_ms)
        broker.remote_autoscale = cluster.leader_autoscale
    metrics.gather = cluster.peer_metrics


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the other workers once everything here is up; stop serving them last."""
    cluster = app[CLUSTER]
    await cluster.start()
    try:
        yield
    finally:
        await cluster.close()
