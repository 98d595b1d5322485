"""A one-line progress display on stderr for long produce and consume runs.

The line is rewritten in place (carriage return, then erase to the end of the line) at most
every :data:`REDRAW_S` seconds: the count, the rate, and when the total is known a bar, the
share done and the time left at the rate so far. It is shown only where someone watches: by
default when stderr is a terminal that the records are not printed to
(``--progress``/``--no-progress`` decide otherwise), so logs and pipes never get control
characters.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.2
BAR_WIDTH = 20


def wanted(choice: bool | None, *, records_to: TextIO | None = None) -> bool:
    """``--progress``/``--no-progress`` if given; else whether stderr is a terminal that
    ``records_to`` (where a command prints its records) does not also write to, since the
    line would be drawn between the records."""
    if choice is not None:
        return choice
    return sys.stderr.isatty() and not (records_to is not None and records_to.isatty())


def duration(seconds: float) -> str:
    """``4s``, ``2m05s``, ``1h02m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class ProgressLine:
    """Counts done so far against an optional total and draws them on ``stream``.

    ``done`` and ``total`` are in the unit the rate is shown in (``unit``). When only
    another quantity has a known total (the bytes of an input file, for a count of
    records), the caller passes the ``fraction`` done of it: the bar and the time left
    follow that.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        unit: str = "records",
        total: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self.unit = unit
        self.total = total
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0
        self._visible = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self, done: int) -> float:
        elapsed = self.elapsed()
        return done / elapsed if elapsed > 0 else 0.0

    def render(self, done: int, *, fraction: float | None = None) -> str:
        """The line for ``done`` units; ``fraction`` done overrides done/total."""
        rate = self.rate(done)
        if fraction is None and self.total:
            fraction = done / self.total
        text = f"{done:,}"
        if self.total:
            text += f"/{self.total:,}"
        text += f" {self.unit}  {rate:,.0f} {self.unit}/s"
        if fraction is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            filled = round(fraction * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            text = f"[{bar}] {fraction * 100:3.0f}%  " + text
            if 0 < fraction < 1:
                left = self.elapsed() * (1 - fraction) / fraction
                text += f"  ETA {duration(left)}"
        return text

    def update(self, done: int, *, fraction: float | None = None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        self._visible = True
        self.stream.write("\r" + self.render(done, fraction=fraction) + "\x1b[K")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line, so that what is printed next starts on a clean line."""
        if self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._visible = False
