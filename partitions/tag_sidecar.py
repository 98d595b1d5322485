"""Producer tags saved from deleted segments, so that idempotent retries outlive retention.

The table of answered idempotent requests is rebuilt after a start from the producer tags of
recent batches (``partitions.idempotency``). Retention (local, total, or an advanced log
start) may delete a segment well within the ten minutes an answer is kept; its tags would
then be gone, and a retry after a restart would append again. So before the log deletes a
segment that was written to within :data:`KEEP_MS` and holds tagged batches, it saves those
tags in a small file next to the segments, named after the deleted segment::

    00000000000000004711.tags

Byte layout, format version 1 (big-endian; offsets from the ``struct.Struct`` definitions,
never counted by hand). The header (``HEADER``)::

    magic        4 bytes  b"EBPT"
    version      u16      1
    entry_count  u32      entries that follow
    crc          u32      CRC-32 (zlib) of every byte after the header

then ``entry_count`` entries, each an ``ENTRY`` followed by the tag::

    base_offset  u64      base offset of the batch that carried the tag
    tag_length   u16      length of the producer tag
    tag          bytes    the producer tag, exactly as the batch held it

A file is written once, before its segment is deleted (temporary file, fsync, rename, fsync
of the directory), and never rewritten: a crash between the two leaves both, and a reader
prefers the segment's own tags. Its modification time is the time of the deletion, which is
after every tag in it was written; files older than :data:`KEEP_MS` are removed by later
deletions and at open. A file that fails its checks is skipped with a warning: it can only
cost an answer, never data.

Everything here is blocking file I/O and runs on executor or writer threads.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from partitions.fileio import FileOps
from partitions.idempotency import ANSWER_TTL_MS

log = logging.getLogger(__name__)

TAGS_SUFFIX = ".tags"
MAGIC = b"EBPT"
VERSION = 1
HEADER = struct.Struct(">4sHII")
ENTRY = struct.Struct(">QH")
# Answers are kept ANSWER_TTL_MS after acceptance; a minute more covers the gap between a
# request's acceptance and its batch reaching the disk, and coarse file times.
KEEP_MS = ANSWER_TTL_MS + 60_000


def wall_ms() -> int:
    """Now, on the clock file modification times are stamped with."""
    return time.time_ns() // 1_000_000


def sidecar_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:020d}{TAGS_SUFFIX}"


def encode(entries: Sequence[tuple[int, bytes]]) -> bytes:
    body = bytearray()
    for base_offset, tag in entries:
        body += ENTRY.pack(base_offset, len(tag))
        body += tag
    return HEADER.pack(MAGIC, VERSION, len(entries), zlib.crc32(body)) + bytes(body)


def decode(data: bytes) -> list[tuple[int, bytes]]:
    """The entries of one file; ``ValueError`` when it is not a whole, valid one."""
    if len(data) < HEADER.size:
        raise ValueError("shorter than its header")
    magic, version, count, crc = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a version {VERSION} tag file")
    if zlib.crc32(data[HEADER.size :]) != crc:
        raise ValueError("fails its CRC")
    entries: list[tuple[int, bytes]] = []
    pos = HEADER.size
    for _ in range(count):
        if pos + ENTRY.size > len(data):
            raise ValueError("an entry runs past the end")
        base_offset, length = ENTRY.unpack_from(data, pos)
        pos += ENTRY.size
        tag = data[pos : pos + length]
        if len(tag) != length:
            raise ValueError("a tag runs past the end")
        entries.append((base_offset, tag))
        pos += length
    if pos != len(data):
        raise ValueError("bytes after the last entry")
    return entries


def save(
    ops: FileOps, directory: Path, base_offset: int, entries: Sequence[tuple[int, bytes]]
) -> None:
    """Save the tags of segment ``base_offset`` (before it is deleted); an existing file for
    it is kept (the same segment's tags, saved by an attempt cut short)."""
    path = sidecar_path(directory, base_offset)
    if not path.exists():
        ops.replace_file(path, encode(entries))


def _sidecars(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == TAGS_SUFFIX)


def read_recent(directory: Path, since_ms: int) -> list[tuple[int, bytes]]:
    """The entries of every file written at or after ``since_ms`` (wall clock)."""
    out: list[tuple[int, bytes]] = []
    for path in _sidecars(directory):
        try:
            if path.stat().st_mtime_ns // 1_000_000 < since_ms:
                continue
            out += decode(path.read_bytes())
        except FileNotFoundError:
            continue  # expired and removed meanwhile
        except ValueError as exc:
            log.warning("skipping the unreadable tag file %s: %s", path, exc)
    return out


def remove_expired(directory: Path, now_ms: int) -> int:
    """Remove the files older than :data:`KEEP_MS`; answers how many went. Failures are
    logged, not raised: an old file left behind costs a few bytes, not correctness."""
    removed = 0
    try:
        paths = _sidecars(directory)
    except OSError as exc:
        log.warning("could not list the tag files of %s: %s", directory, exc)
        return 0
    for path in paths:
        try:
            if path.stat().st_mtime_ns // 1_000_000 >= now_ms - KEEP_MS:
                continue
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove the old tag file %s: %s", path, exc)
    # No directory fsync: a removal a crash takes back is done again by a later one.
    return removed


def segment_modified_ms(fd: int) -> int:
    """When the segment open as ``fd`` was last written to (wall clock)."""
    return os.fstat(fd).st_mtime_ns // 1_000_000
