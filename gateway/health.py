"""Watched background loops: a loop that dies marks the process unhealthy, by name.

Every long-lived task of the server (the group sessions' sweeper, retention, the
autoscaler, metering, the worker processes' peer loops, ...) is started through
:meth:`Health.start`, whose done-callback records a task that ended other than by being
cancelled: ``/healthz`` then answers 503 with the loop's name, and the log has its
traceback. :meth:`Health.stop` cancels a task and waits for it, as closing must.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("eventbus.health")


class Health:
    def __init__(self) -> None:
        # Loops that died, by name, with what ended them.
        self._died: dict[str, BaseException] = {}

    def start(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` as a watched task."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.watch(task)
        return task

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Watch a task started elsewhere."""
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return  # done with its work (metering's last pass at shutdown)
        log.error("background task %s died", task.get_name(), exc_info=error)
        self._died[task.get_name()] = error

    @property
    def dead(self) -> list[str]:
        """The names of the loops that died, in order."""
        return sorted(self._died)

    @staticmethod
    async def stop(task: asyncio.Task[Any] | None) -> None:
        """Cancel ``task`` and wait until it is done (an error it ended with is logged
        already by its watch)."""
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
