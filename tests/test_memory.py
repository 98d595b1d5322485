"""The malloc settings each server process makes (gateway/processes/memory.py)."""

from __future__ import annotations

import asyncio
import platform

import pytest
from aiohttp import web

from gateway.health import Health
from gateway.http.keys import HEALTH
from gateway.processes import memory
from gateway.wiring import loops


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_takes_the_arena_limit_and_trims() -> None:
    assert memory.limit_arenas()
    assert memory.trim() in (True, False)


async def test_the_trim_loop_trims_until_the_app_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    if not memory.can_trim():
        pytest.skip("no glibc: the loop does not run")
    calls: list[None] = []
    monkeypatch.setattr(memory, "TRIM_INTERVAL_S", 0.01)
    monkeypatch.setattr(memory, "trim", lambda: calls.append(None) or True)
    app = web.Application()
    app[HEALTH] = Health()
    context = loops.trim_ctx(app)
    await anext(context)
    await asyncio.sleep(0.2)
    assert len(calls) >= 3
    with pytest.raises(StopAsyncIteration):
        await anext(context)
    seen = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == seen  # stopped with the app
    assert app[HEALTH].dead == []  # stopped, not dead
