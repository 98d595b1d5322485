"""How a partition's directory names its segments.

A segment is named by its base offset, zero-padded to 20 digits, so that a directory listing
is offset order; its three files share the name and differ in suffix. Only ``.log`` files
make segments: an index without its log, or a temporary file, is a crash's leftover.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


def list_segment_bases(directory: Path) -> list[int]:
    """Base offsets of the ``.log`` files in ``directory``, in order."""
    bases = []
    for path in directory.iterdir():
        if path.suffix == LOG_SUFFIX and path.stem.isdigit() and len(path.stem) == 20:
            bases.append(int(path.stem))
    return sorted(bases)


def remove_strays(directory: Path, bases: Sequence[int]) -> list[Path]:
    """Delete index files without their log and temporary files (left by a crash)."""
    keep = {segment_name(b) for b in bases}
    removed = []
    for path in directory.iterdir():
        if path.suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX) and path.stem not in keep:
            path.unlink()
            removed.append(path)
        elif path.suffix == ".tmp":
            path.unlink()
            removed.append(path)
    return removed
