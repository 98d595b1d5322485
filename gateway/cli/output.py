"""How client commands print: a view for people by default, the API's JSON with ``--json``.

The human views are aligned text: tables with a header row, and ``name: value`` blocks.
Times are UTC, sizes binary (KiB, MiB), and ``-`` stands for "none" or "unlimited" where
the column says so. Scripts should use ``--json``: the human layout may change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def show(args: Any, answer: Any, human: Callable[[Any], str]) -> None:
    """Print ``answer`` as JSON with ``--json``, else as ``human`` renders it."""
    if getattr(args, "json", False):
        print_json(answer)
    else:
        print(human(answer))


_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _aligns_right(value: object) -> bool:
    """Numbers, and decimals sent as strings (prices, quantities), line up on the right."""
    return _is_number(value) or (isinstance(value, str) and bool(_DECIMAL.fullmatch(value)))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; columns of numbers right-aligned. No rows: a ``(none)``
    line under the header, so an empty answer still says what it lists."""
    cells = [[str(c) for c in header]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    right = [
        bool(rows) and all(_aligns_right(row[i]) or row[i] in (None, "") for row in rows)
        for i in range(len(header))
    ]
    lines = []
    for line in cells:
        padded = [
            text.rjust(width) if align else text.ljust(width)
            for text, width, align in zip(line, widths, right, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines, the values aligned."""
    width = max((len(name) for name, _ in pairs), default=0) + 1
    return "\n".join(f"{(name + ':').ljust(width)} {cell(value)}" for name, value in pairs)


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_number(value):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def when(ms: int | None) -> str:
    """A time in ms since the epoch, in UTC to the second; ``never`` for none."""
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size(count: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
