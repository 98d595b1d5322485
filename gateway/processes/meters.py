"""The autoscaler over worker processes: every worker meters the batches it appends, and
the others send theirs to the leader every tenth of a second (bytes and records per 100 ms
bucket, with a thinned, re-weighted sample of keys), which adds them into its meters, so
that its loop, which decides for the whole server, sees every worker's traffic. Topic
describe's ``autoscale`` part comes from the leader (``AUTOSCALE``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from autoscaler.measure import Geometry, MeterOutbox
from autoscaler.policy import KeySample
from gateway.broker.service import Broker
from gateway.processes.peers import AUTOSCALE, METERS, Peers
from gateway.processes.role import LEADER
from partitions.errors import EventBusError
from partitions.partition_key import PartitionKey

SHIP_INTERVAL_S = 0.1


async def ship_meters_forever(peers: Peers, outbox: MeterOutbox) -> None:
    """Send what this worker's appends measured to the leader, which decides."""
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
            await peers.ask(LEADER, METERS, body)  # the leader is restarting: lost


def serve_meters(peers: Peers, broker: Broker) -> None:
    """As the leader: take the others' measurements, and say what the autoscaler thinks."""

    async def measured(body: list[list[Any]]) -> None:
        meters = broker.meters
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

    async def autoscale(body: dict[str, Any]) -> dict[str, Any]:
        view = await broker.view(str(body["t"]), str(body["n"]))
        return broker.local_autoscale_status(view)

    peers.register_json(METERS, measured)
    peers.register_json(AUTOSCALE, autoscale)
