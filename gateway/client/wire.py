"""The framing of the HTTP API's bodies, shared by the client and the server's front door.

``docs/wire-format.md`` is the specification. Reads and group fetches answer JSON or, when
``Accept`` asks for it, a sequence of chunks, each ``partition u32 | from_offset u64 |
length u32`` (``CHUNK_HEADER``, big-endian) and then ``length`` bytes of whole stored
batches (:mod:`partitions.batch`). A batch may start below ``from_offset`` (batches are never
cut); a reader skips the records below it. Bodies may be compressed with gzip or zstd.

This module knows bytes only, no HTTP server: the client imports it without the server.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from collections.abc import Iterator

from partitions.batch import Record, iter_records, read_header, validate_batch
from partitions.errors import InvalidBatchError

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

JSON = "application/json"
NDJSON = "application/x-ndjson"
BATCH = "application/vnd.eventbus.batch"

CHUNK_HEADER = struct.Struct(">IQI")


def decode_chunks(body: bytes) -> Iterator[tuple[int, Record]]:
    """(partition, record) for every record of a binary answer, skipping those below each
    chunk's ``from_offset``."""
    view = memoryview(body)
    pos = 0
    while pos < len(body):
        if len(body) - pos < CHUNK_HEADER.size:
            raise InvalidBatchError("a chunk header is cut short")
        partition, from_offset, length = CHUNK_HEADER.unpack_from(body, pos)
        pos += CHUNK_HEADER.size
        end = pos + length
        if end > len(body):
            raise InvalidBatchError("a chunk runs past the end of the body")
        while pos < end:
            header = validate_batch(view[pos : pos + read_header(view, pos).total_size])
            for record in iter_records(view, pos, min_offset=from_offset):
                yield partition, record
            pos += header.total_size


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return bytes(zstd.compress(body))
    return gzip.compress(body, compresslevel=6, mtime=0)


def decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return bytes(zstd.decompress(body))
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body
