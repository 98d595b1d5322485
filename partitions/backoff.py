"""The pace and the log of a background writer whose writes keep failing.

Metering's flushes, the API keys' last uses, retention's passes: each is written behind the
requests, and each may fail for as long as its cause lasts (a full disk can last an hour).
:class:`Backoff` says how long to wait before the next attempt (doubling from a first wait up
to a bound, with jitter, so that the processes of a server do not retry in step), and keeps
the log to two lines per run of failures: the first failure as a warning, with its
traceback only for a failure nobody raised on purpose (not an
:class:`~partitions.errors.EventBusError` or an ``OSError``), and the first success after
it. The failures in between are logged at debug level.
"""

from __future__ import annotations

import logging
import random

from partitions.errors import EventBusError


class Backoff:
    """One background writer's run of failures: ``what`` names the writer in the log."""

    def __init__(self, what: str, logger: logging.Logger, *, first_s: float, max_s: float) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"not a backoff from {first_s} s up to {max_s} s")
        self.what = what
        self._log = logger
        self.first_s = first_s
        self.max_s = max_s
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Note a failed attempt; answers the seconds to wait before the next."""
        self.failures += 1
        if self.failures == 1:
            expected = isinstance(exc, (EventBusError, OSError))
            self._log.warning(
                "%s failed (%s); trying again, less often while it keeps failing",
                self.what,
                exc,
                exc_info=None if expected else exc,
            )
        else:
            self._log.debug("%s failed again (attempt %d): %s", self.what, self.failures, exc)
        delay = min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 32))
        return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter only

    def succeeded(self) -> None:
        """Note a successful attempt (logged only when it ends a run of failures)."""
        if self.failures:
            attempts = "attempt" if self.failures == 1 else "attempts"
            self._log.info("%s works again after %d failed %s", self.what, self.failures, attempts)
        self.failures = 0
