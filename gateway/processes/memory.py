"""Keeping a server process's resident memory close to what it holds.

Where the C library is glibc, its ``malloc`` gives threads that allocate arenas of their
own (up to eight per core), and memory freed into an arena stays resident in it. The
server's threads allocate much of what the event loop later frees: the log's readers read
whole runs of batches, the catalog and the object store's calls run on threads too. Under a
steady load the workers' resident size then kept growing, with their live Python objects
flat (``make soak``; numbers in docs/benchmarks.md). So each server process, before it
starts a thread:

- limits ``malloc`` to :data:`ARENAS` arenas (``mallopt(M_ARENA_MAX)``), so that freed
  memory is found again by the next allocation of any thread;
- and, every :data:`TRIM_INTERVAL_S`, asks ``malloc_trim(0)`` to give free pages back.

Elsewhere (another C library, another system) both do nothing.

And once a process has started (modules loaded, the app set up), :func:`freeze_startup`
moves every object it holds then out of the garbage collector's way: a full collection
walked all of them (aiohttp, botocore's service models, ...) and stopped the event loop
for about 60 ms, which at 1,000 records/s was the whole end-to-end p99. It also has the
youngest generation collected less often (:data:`YOUNG_COLLECTION`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)

ARENAS = 2
TRIM_INTERVAL_S = 30.0
# A collection of the youngest generation walks the young objects still alive, and under
# load those are mostly the requests in flight (a few hundred objects each): at Python's
# 700 allocations it walked them again every few requests. Most objects are freed by their
# reference counts, so waiting longer leaves no more garbage, only fewer walks.
YOUNG_COLLECTION = 10_000
_M_ARENA_MAX = -8  # glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # musl and others: neither call exists
    return libc


_LIBC = _glibc()


def limit_arenas() -> bool:
    """At most :data:`ARENAS` malloc arenas from now on; call before threads start.
    Answers whether the C library took it."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_ARENA_MAX, ARENAS))


def freeze_startup() -> None:
    """Leave what exists now out of every garbage collection from here on; call once the
    process has loaded everything it runs with (``gc.freeze``). From then on, collect the
    youngest generation every :data:`YOUNG_COLLECTION` allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])


def trim() -> bool:
    """Give free heap pages back to the kernel; answers whether any were."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


def can_trim() -> bool:
    """Whether :func:`trim` does anything here (glibc)."""
    return _LIBC is not None


async def trim_forever() -> None:
    """:func:`trim` every :data:`TRIM_INTERVAL_S` (a loop)."""
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        # A trim of a large heap takes milliseconds: not on the event loop.
        await asyncio.to_thread(trim)
