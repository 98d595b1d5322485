"""The state that the parts of one partition log share: the loader fills it, the writer and
retention change it on the drain's thread, reads look at it, and the log answers from it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from partitions.errors import EventBusError
from partitions.fileio import FileOps
from partitions.log.segment import Segment
from partitions.log.values import LogConfig

log = logging.getLogger(__name__)


class LogState:
    """One partition log's place, settings, segments, and two views of how far it got.

    The event loop's view (``high_watermark``, ``sealed``, ``log_start``) is what readers
    see and wait on: it moves only on the loop, in callbacks the writer posts once a step is
    durable, in the order it posted them. The writer's view (``w_sealed``, ``w_end``,
    ``w_log_start``) is what is on disk; it belongs to the drain's thread. ``segments`` is
    replaced, never changed in place, so that a reader iterating it is never upset.

    A *gated* log (cluster mode) shows readers less than is fsync'd: ``high_watermark`` and
    each segment's ``durable_size`` then move only when the partition worker says an append
    is durable beyond this machine too (``VisibleEnd.advance``), under
    ``visible_lock``, which the reopen after a storage failure also takes to size the
    segments it loads.
    """

    __slots__ = (
        "directory",
        "config",
        "ops",
        "clock_ms",
        "loop",
        "segments",
        "sealed",
        "high_watermark",
        "log_start",
        "start_lock",
        "closing",
        "closed",
        "unavailable",
        "recovery_failed",
        "w_sealed",
        "w_end",
        "w_log_start",
        "data_event",
        "gated",
        "visible_lock",
    )

    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        ops: FileOps,
        clock_ms: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
        *,
        gated: bool = False,
    ) -> None:
        self.directory = directory
        self.config = config
        # Read at every use, never kept: replacing it reaches every part of the log.
        self.ops = ops
        self.clock_ms = clock_ms
        self.loop = loop
        self.segments: list[Segment] = []
        self.sealed = False
        self.high_watermark = 0
        # Only rises; written from the loop and from the drain, under start_lock.
        self.log_start = 0
        self.start_lock = threading.Lock()
        self.closing = False
        self.closed = False
        # Set while the partition recovers from a storage failure (reads refuse meanwhile);
        # recovery_failed once an attempt failed (appends then fail fast).
        self.unavailable: EventBusError | None = None
        self.recovery_failed = False
        self.w_sealed = False
        self.w_end = 0
        self.w_log_start = 0
        # Replaced at each publish: waiters of the old one wake, later ones wait anew.
        self.data_event = asyncio.Event()
        self.gated = gated
        self.visible_lock = threading.Lock()

    @property
    def start_offset(self) -> int:
        return min(self.log_start, self.high_watermark)

    @property
    def local_start_offset(self) -> int:
        segments = self.segments
        return segments[0].base_offset if segments else self.high_watermark

    def raise_log_start(self, offset: int) -> None:
        with self.start_lock:
            if offset > self.log_start:
                self.log_start = offset

    def notify_data(self) -> None:
        """Wake every reader waiting for data (event loop side)."""
        event, self.data_event = self.data_event, asyncio.Event()
        event.set()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the event loop, in the order posted."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            log.warning("partition %s: the event loop is gone; dropped %s", self.directory, fn)
