"""``partition.json``: what a partition's directory says about its log as a whole.

::

    {"format_version": 1, "sealed": bool, "end_offset": int | null, "log_start_offset": int}

- ``sealed``, and once sealed ``end_offset``: the final end, which survives restarts.
- ``log_start_offset``: the first offset a reader may ask for. It is written before any
  segment below it is deleted, so a crash in between leaves segments the next open deletes,
  never a start that went back down. A file without it (written before tiered storage)
  means the first segment's base offset, and gets the field at the next open.

The file is replaced atomically (temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from partitions.errors import CorruptLogError
from partitions.fileio import FileOps

META_FILE = "partition.json"
META_FORMAT_VERSION = 1


class PartitionMeta(NamedTuple):
    """The fields of ``partition.json`` as stored (``log_start_offset`` None when absent)."""

    sealed: bool
    end_offset: int | None
    log_start_offset: int | None


def read_meta(directory: Path) -> PartitionMeta | None:
    """The partition's ``partition.json``, or None when there is none yet."""
    meta_path = directory / META_FILE
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_bytes())
    if meta.get("format_version") != META_FORMAT_VERSION:
        raise CorruptLogError(f"{meta_path}: unknown format version {meta.get('format_version')}")
    return PartitionMeta(bool(meta["sealed"]), meta.get("end_offset"), meta.get("log_start_offset"))


def write_meta(
    ops: FileOps, directory: Path, *, sealed: bool, end_offset: int | None, log_start: int
) -> None:
    body = {
        "format_version": META_FORMAT_VERSION,
        "sealed": sealed,
        "end_offset": end_offset,
        "log_start_offset": log_start,
    }
    ops.replace_file(directory / META_FILE, json.dumps(body).encode())
