"""Watched background loops: a loop that dies makes /healthz answer 503 with its name."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from autoscaler.loop import Autoscaler
from gateway.health import Health
from gateway.processes import memory
from gateway.wiring import metering
from partitions.groups import GroupCoordinator
from tests.conftest import start_api, stop_api


class LoopBroke(RuntimeError):
    pass


async def _dies(*args: Any, **kwargs: Any) -> None:
    await asyncio.sleep(0.05)
    raise LoopBroke("the test broke this loop")


async def test_a_task_that_dies_is_named_and_one_that_is_closed_is_not() -> None:
    health = Health()
    dying = health.start(_dies(), "dying")
    closed = health.start(asyncio.sleep(3600), "closed")
    finished = health.start(asyncio.sleep(0), "finished")
    await asyncio.sleep(0.1)
    await Health.stop(closed)
    await Health.stop(dying)  # already dead: stopping it raises nothing
    assert finished.done() and closed.cancelled()
    assert health.dead == ["dying"]


# Each loop the server runs, and where the test makes it die.
LOOPS = {
    "group-sessions": (GroupCoordinator, "sweep_forever"),
    "autoscaler": (Autoscaler, "run_forever"),
    "metering": (metering, "run_metering"),
    "malloc-trim": (memory, "trim_forever"),
}


@pytest.mark.single_process("makes a loop of the server process die")
@pytest.mark.parametrize("name", sorted(LOOPS))
async def test_a_loop_that_dies_makes_the_server_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    if name == "malloc-trim" and not memory.can_trim():
        pytest.skip("no glibc: the trim loop does not run")
    owner, attribute = LOOPS[name]
    monkeypatch.setattr(owner, attribute, _dies)
    api = await start_api(tmp_path / "data")
    try:
        for _ in range(100):
            status, body = await api.call("GET", "/healthz")
            if status == 503:
                break
            await asyncio.sleep(0.02)
        assert status == 503, body
        assert body["status"] == "unhealthy" and body["loops"] == [name]
        assert name in body["reason"]
        # Everything else still answers: the server says it is unhealthy, it does not fall.
        assert (await api.call("PUT", "/v1/topics/t"))[0] == 201
    finally:
        await stop_api(api)
