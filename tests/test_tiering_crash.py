"""A real ``eventbus serve`` SIGKILLed in the middle of segment uploads, over and over,
against moto's S3: nothing acknowledged is lost, no segment has a second copy, and what the
crashes leave behind is cleaned up after the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from partitions.catalog import RemoteSegmentState
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from tests.s3 import bucket_objects, create_bucket
from tests.servers import ServerProcess
from tests.tiering_tools import records_of_segment, wait_for

PREFIX = "eb"
# Kill after this many object puts, round by round: after a segment's first, second and
# third (last) object, so every step of one upload is interrupted at least once.
KILL_AFTER_PUTS = (7, 11, 15, 12)
VALUE = "c" * 150
CONFIG = {"segment_bytes": 1024, "local_retention_bytes": 4096, "retention_bytes": 12_000}
GRACE_MS = 1500


def _args(bucket: str, endpoint: str) -> list[str]:
    return [
        "--object-store",
        f"s3://{bucket}/{PREFIX}",
        "--s3-endpoint",
        endpoint,
        "--object-store-timeout-ms",
        "2000",
        "--retention-check-ms",
        "100",
        "--upload-retry-max-ms",
        "300",
        "--orphan-grace-ms",
        str(GRACE_MS),
        "--orphan-check-ms",
        "300",
    ]


async def _produce_until_killed(server: ServerProcess, key: str, acked: dict[int, str]) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    counter = itertools.count(len(acked) * 10)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def producer() -> None:
            while True:
                values = [f"{next(counter):07d}-{VALUE}" for _ in range(3)]
                async with session.post(
                    f"{server.url}/v1/topics/t/records",
                    json={"records": [{"value": v} for v in values]},
                    headers=auth,
                ) as response:
                    body = await response.json()
                    if response.status == 503:
                        await asyncio.sleep(0.05)  # backpressure: retry later
                        continue
                    assert response.status == 200, body
                for value, placed in zip(values, body["offsets"], strict=True):
                    acked[placed["offset"]] = value

        tasks = [asyncio.ensure_future(producer()) for _ in range(3)]
        assert server.process is not None
        await asyncio.wait_for(asyncio.to_thread(server.process.wait), 120)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                await task
    server.kill()


async def _describe(session: aiohttp.ClientSession, server: ServerProcess, key: str) -> Any:
    async with session.get(
        f"{server.url}/v1/topics/t", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200
        return (await response.json())["partitions"][0]


@pytest.mark.slow
@pytest.mark.single_process("the server kills itself whole; test_workers.py kills a worker")
async def test_sigkill_during_uploads_loses_nothing_duplicates_nothing_and_cleans_up(
    tmp_path: Path, s3_endpoint: str
) -> None:
    bucket = await create_bucket(s3_endpoint)
    data = tmp_path / "data"
    acked: dict[int, str] = {}
    key = ""
    for round_no, limit in enumerate(KILL_AFTER_PUTS):
        server = ServerProcess(
            data,
            args=_args(bucket, s3_endpoint),
            env={"EVENTBUS_TEST_DIE_AFTER_PUTS": str(limit)},
            module="tests.tiering_crash_child",
        ).start()
        try:
            key = server.keys["EVENTBUS_API_KEY"]
            if round_no == 0:
                async with (
                    aiohttp.ClientSession() as session,
                    session.put(
                        f"{server.url}/v1/topics/t",
                        json=CONFIG,
                        headers={"Authorization": f"Bearer {key}"},
                    ) as response,
                ):
                    assert response.status == 201
            before = len(acked)
            await _produce_until_killed(server, key, acked)
            assert server.process is not None and server.process.returncode == -9
            assert len(acked) > before, f"round {round_no}: nothing was produced"
        finally:
            server.kill()
        # The kill fell inside an upload: its row says copy-started, objects may exist.
        catalog = await SqliteCatalog.open(data / CATALOG_FILE)
        try:
            unfinished = await catalog.list_remote_segments_in_state(
                RemoteSegmentState.COPY_STARTED
            )
        finally:
            await catalog.close()
        assert unfinished, f"round {round_no}: no upload was cut short"
    # A crash between an object's put and its row (or a retention deletion cut short) can
    # leave an object that no row names: one is planted here, as such a crash leaves it.
    objects_before = await bucket_objects(s3_endpoint, bucket, f"{PREFIX}/default/")
    incarnation = next(iter(objects_before)).split("/")[2]
    stray = f"{PREFIX}/default/{incarnation}/0/{10**12:020d}.log"
    await _put_raw(s3_endpoint, bucket, stray, b"left behind")

    server = ServerProcess(data, args=_args(bucket, s3_endpoint)).start()
    try:
        async with aiohttp.ClientSession() as session:
            # Enough more that total retention must delete remote segments too.
            for n in range(60):
                value = f"final-{n:04d}-{VALUE}"
                async with session.post(
                    f"{server.url}/v1/topics/t/records",
                    json={"records": [{"value": value}]},
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    assert response.status == 200, await response.text()
                    acked[(await response.json())["offsets"][0]["offset"]] = value

            async def settled() -> bool:
                part = await _describe(session, server, key)
                return bool(
                    part["segments_pending_upload"] == 0 and part["local_bytes"] < 4096 + 1024
                )

            await wait_for(settled, within=60, what="uploads and local retention to settle")
            await wait_for(
                lambda: _gone(s3_endpoint, bucket, stray), within=30, what="the orphan cleanup"
            )
            catalog = await SqliteCatalog.open(data / CATALOG_FILE)
            try:

                async def remote_settled() -> bool:
                    # Remote retention has caught up with the log start.
                    start = (await _describe(session, server, key))["start_offset"]
                    rows = await catalog.list_remote_segments("default", incarnation, 0)
                    return bool(rows) and rows[0].last_offset >= start

                await wait_for(remote_settled, within=30, what="remote retention")
                part = await _describe(session, server, key)
                rows = await catalog.list_remote_segments("default", incarnation, 0)
            finally:
                await catalog.close()
            local = await _read_local(session, server, key, part["local_start_offset"])
        objects = await bucket_objects(s3_endpoint, bucket, f"{PREFIX}/default/")
    finally:
        assert server.stop() == 0
    # No duplicates: each segment is exactly its three objects, and every object belongs to
    # a segment whose copy finished; the segments chain without gaps or overlaps.
    by_segment: dict[str, set[str]] = defaultdict(set)
    for name in objects:
        match = re.fullmatch(rf"{PREFIX}/default/{incarnation}/0/(\d{{20}})(\.\w+)", name)
        assert match, name
        by_segment[match.group(1)].add(match.group(2))
    assert all(s == {".log", ".index", ".timeindex"} for s in by_segment.values()), by_segment
    assert {int(b) for b in by_segment} == {r.base_offset for r in rows}
    assert all(r.state is RemoteSegmentState.COPY_FINISHED for r in rows)
    for earlier, later in itertools.pairwise(rows):
        assert later.base_offset == earlier.last_offset + 1
    remote: dict[int, str] = {}
    for row in rows:
        held = records_of_segment(objects[f"{PREFIX}/{row.object_key}"])
        assert sorted(held) == list(range(row.base_offset, row.last_offset + 1))
        assert len(objects[f"{PREFIX}/{row.object_key}"]) == row.size_bytes
        remote.update(held)
    # Nothing lost: every acknowledged record at or after the log start is held, remote or
    # local, exactly as produced.
    start = part["start_offset"]
    assert rows[0].base_offset <= start <= rows[0].last_offset
    held = {**remote, **local}
    for offset, value in acked.items():
        if offset >= start:
            assert held.get(offset) == value, f"acknowledged offset {offset} lost"
    assert start > 0, "total retention never ran: the test proved less than it claims"
    assert part["remote_bytes"] == sum(r.size_bytes for r in rows)


async def _put_raw(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    import aioboto3

    async with aioboto3.Session().client("s3", endpoint_url=endpoint) as client:
        await client.put_object(Bucket=bucket, Key=key, Body=data)


async def _gone(endpoint: str, bucket: str, key: str) -> bool:
    return key not in await bucket_objects(endpoint, bucket, key)


async def _read_local(
    session: aiohttp.ClientSession, server: ServerProcess, key: str, start: int
) -> dict[int, str]:
    out: dict[int, str] = {}
    offset = start
    while True:
        async with session.get(
            f"{server.url}/v1/topics/t/partitions/0/records",
            params={"offset": str(offset), "max_records": "10000"},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            body = await response.json()
        assert response.status == 200, body
        out.update({r["offset"]: r["value"] for r in body["records"]})
        if body["next_offset"] >= body["high_watermark"]:
            return out
        offset = body["next_offset"]
