"""The server SIGKILLed under concurrent producers and a tailing reader, many times."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import aiohttp
import pytest

from tests.servers import ServerProcess

ROUNDS = 8
PRODUCERS = 6


async def _round(
    server: ServerProcess,
    key: str,
    round_no: int,
    rng: random.Random,
    acked: dict[int, str],
    seen: dict[int, str],
) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def produce(n: int) -> None:
            seq = 0
            while True:
                values = [f"r{round_no}-p{n}-{seq + i}" for i in range(rng.randint(1, 50))]
                async with session.post(
                    f"{server.url}/v1/topics/t/records",
                    json={"records": [{"value": v} for v in values]},
                    headers=auth,
                ) as response:
                    assert response.status == 200, await response.text()
                    offsets = (await response.json())["offsets"]
                for value, placed in zip(values, offsets, strict=True):
                    acked[placed["offset"]] = value
                seq += len(values)

        async def tail() -> None:
            offset = 0
            while True:
                async with session.get(
                    f"{server.url}/v1/topics/t/partitions/0/records",
                    params={"offset": str(offset), "wait_ms": "1000", "max_records": "1000"},
                    headers=auth,
                ) as response:
                    body = await response.json()
                for record in body["records"]:
                    seen[record["offset"]] = record["value"]
                offset = body["next_offset"]

        tasks = [asyncio.ensure_future(produce(n)) for n in range(PRODUCERS)]
        tasks.append(asyncio.ensure_future(tail()))
        await asyncio.sleep(rng.uniform(0.2, 1.2))
        server.kill()  # SIGKILL, mid-stream
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, AssertionError):
                await task


@pytest.mark.slow
async def test_acknowledged_records_survive_sigkill_and_readers_never_see_them_vanish(
    tmp_path: Path,
) -> None:
    rng = random.Random(4242)
    acked: dict[int, str] = {}
    seen: dict[int, str] = {}
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    key = server.keys["EVENTBUS_API_KEY"]
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{server.url}/v1/topics/t",
            json={"segment_bytes": 64 * 1024},
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            assert response.status == 201
    try:
        for round_no in range(ROUNDS):
            await _round(server, key, round_no, rng, acked, seen)
            server = ServerProcess(data).start()
            async with aiohttp.ClientSession() as session:
                offset, stored = 0, {}
                while True:
                    async with session.get(
                        f"{server.url}/v1/topics/t/partitions/0/records",
                        params={"offset": str(offset), "max_records": "10000"},
                        headers={"Authorization": f"Bearer {key}"},
                    ) as response:
                        body = await response.json()
                    stored.update({r["offset"]: r["value"] for r in body["records"]})
                    if body["next_offset"] >= body["high_watermark"]:
                        break
                    offset = body["next_offset"]
            assert sorted(stored) == list(range(len(stored)))
            for offset, value in acked.items():
                assert stored.get(offset) == value, f"acknowledged offset {offset} lost"
            for offset, value in seen.items():
                assert stored.get(offset) == value, f"offset {offset} was read, then taken back"
        assert len(acked) > 1000, "the producers barely ran; the test proved little"
        assert server.stop() == 0
    finally:
        server.kill()
