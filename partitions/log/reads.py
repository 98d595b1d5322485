"""Reading a partition log: pinning the segments a read needs, and the work a read does on
a reader thread.

A read checks its offset against the log start, the local start and the high watermark on
the event loop, pins the segments from the one holding it (so that retention cannot close
their files underneath), and reads on a thread only below each segment's durable size as it
was when pinned: bytes past the high watermark are never served. Retention that deletes a
pinned segment unlinks its files at once; the descriptors close when the last reader lets go.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from partitions import tag_sidecar
from partitions.batch import (
    BATCH_HEADER,
    BatchBytes,
    Record,
    checksum_ok,
    iter_records,
    read_header,
)
from partitions.errors import (
    CorruptLogError,
    OffsetNotLocalError,
    OffsetOutOfRangeError,
    PartitionClosedError,
    PartitionUnavailableError,
)
from partitions.fileio import pread_exact
from partitions.log.segment import Segment, read_batch_span
from partitions.log.state import LogState
from partitions.log.values import SegmentInfo


def check_readable(state: LogState) -> None:
    if state.closed:
        raise PartitionClosedError(f"partition log {state.directory} is closed")
    if state.unavailable is not None:
        raise PartitionUnavailableError(
            f"the partition is recovering from a storage failure: {state.unavailable}"
        )


def check_range(state: LogState, offset: int) -> None:
    start, hw = state.start_offset, state.high_watermark
    if offset < start or offset > hw:
        raise OffsetOutOfRangeError(
            f"offset {offset} is outside the partition's range [{start}, {hw}]",
            offset=offset,
            start_offset=start,
            high_watermark=hw,
        )
    local = state.local_start_offset
    if offset < local:
        raise OffsetNotLocalError(
            f"offset {offset} is in tiered storage only (local data starts at {local})",
            offset=offset,
            start_offset=start,
            local_start_offset=local,
            high_watermark=hw,
        )


def pin_from(state: LogState, offset: int) -> list[tuple[Segment, int]]:
    """Pin the segments holding ``offset`` onwards, with each one's durable size.

    If retention deleted the segment holding ``offset`` since the range was checked,
    this raises :class:`OffsetOutOfRangeError` rather than read from a later offset.
    """
    pinned: list[tuple[Segment, int]] = []
    for segment in state.segments:
        if segment.next_offset <= offset:
            continue
        if not segment.pin():
            break
        pinned.append((segment, segment.durable_size))
    if pinned and pinned[0][0].base_offset <= offset:
        return pinned
    for done, _ in pinned:
        done.unpin()
    check_range(state, offset)
    if offset < state.high_watermark:
        start, hw = state.start_offset, state.high_watermark
        raise OffsetOutOfRangeError(
            f"offset {offset} was removed by retention while it was being read",
            offset=offset,
            start_offset=start,
            high_watermark=hw,
        )
    return []


# The functions below run on a reader thread, over segments pinned on the event loop.


def read_stored_batches(
    pinned: Sequence[tuple[Segment, int]], offset: int, max_bytes: int
) -> tuple[BatchBytes, int, int]:
    """(batches, first offset, next offset) from the segment holding ``offset`` on:
    everything up to a segment's durable end when the budget allows, going on into the
    next segments, else the whole batches that fit (the first batch even when it alone
    does not), so an answer passes ``max_bytes`` only by that first batch."""
    plan: list[tuple[Segment, int, int]] = []
    room = max(max_bytes, BATCH_HEADER.size)
    last_limit = 0
    for n, (segment, limit) in enumerate(pinned):
        position = segment.locate(offset, limit) if n == 0 else 0
        if position >= limit:
            continue
        stop = min(limit, position + room)
        plan.append((segment, position, stop))
        last_limit = limit
        room -= stop - position
        if room <= 0:
            break
    if not plan:
        return b"", offset, offset
    if len(plan) == 1:
        segment, position, _ = plan[0]
        data, after = segment.read_batch_run(position, last_limit, max_bytes)
    else:
        data, after = read_batch_span(plan, max_bytes)
    if not data:
        return b"", offset, offset
    return data, read_header(data).base_offset, after


_RECORD_READ_CHUNK = 256 * 1024


def collect_records(
    pinned: Sequence[tuple[Segment, int]], offset: int, max_records: int, max_bytes: int
) -> list[Record]:
    """Decode records from ``offset`` until either limit is reached (executor thread).

    ``max_bytes`` counts record payload (keys, values, headers); the first record is
    returned even when it alone is larger.
    """
    records: list[Record] = []
    size = 0
    for n, (segment, limit) in enumerate(pinned):
        position = segment.locate(offset, limit) if n == 0 else 0
        while position < limit:
            data = segment.read_batches(position, limit, _RECORD_READ_CHUNK)
            if not data:
                break
            pos = 0
            while pos < len(data):
                header = read_header(data, pos)
                if header.next_offset > offset:
                    if not checksum_ok(data, pos, header):
                        raise CorruptLogError(
                            f"stored batch at offset {header.base_offset} fails its CRC"
                        )
                    for record in iter_records(data, pos, min_offset=offset):
                        payload = record.payload_bytes
                        if records and size + payload > max_bytes:
                            return records
                        records.append(record)
                        size += payload
                        if len(records) >= max_records:
                            return records
                pos += header.total_size
            position += len(data)
    return records


def describe_segments(
    pinned: Sequence[tuple[Segment, int]], open_: Sequence[Segment]
) -> list[SegmentInfo]:
    out = []
    for segment, size in pinned:
        final = segment not in open_
        newest = segment.ensure_max_timestamp() if final else None
        first = segment.first_timestamp
        if first is None and size and final:
            first = next(segment.scan(0, size, segment.base_offset, verify_crc=False))[
                1
            ].first_timestamp
            segment.first_timestamp = first
        out.append(
            SegmentInfo(
                segment.base_offset,
                segment.next_offset,
                size,
                not final,
                first,
                newest,
            )
        )
    return out


def collect_tags(
    pinned: Sequence[tuple[Segment, int]], since_ms: int, directory: Path
) -> list[tuple[int, bytes]]:
    tags: dict[int, bytes] = {}
    for segment, limit in pinned:
        # By the open file: retention may unlink a pinned segment's name meanwhile.
        if tag_sidecar.segment_modified_ms(segment.log_fd) < since_ms:
            continue
        tags.update(segment_tags(segment, limit))
    # A crash between saving a segment's tags and deleting it leaves both: the segment's win.
    for base_offset, tag in tag_sidecar.read_recent(directory, since_ms):
        tags.setdefault(base_offset, tag)
    return sorted(tags.items())


def segment_tags(segment: Segment, limit: int) -> list[tuple[int, bytes]]:
    tags: list[tuple[int, bytes]] = []
    for position, header in segment.scan(0, limit, segment.base_offset, verify_crc=False):
        if header.producer_tag_length:
            tag = pread_exact(
                segment.log_fd, header.producer_tag_length, position + BATCH_HEADER.size
            )
            tags.append((header.base_offset, tag))
    return tags


def find_timestamp(pinned: Sequence[tuple[Segment, int]], timestamp_ms: int) -> int | None:
    for segment, limit in pinned:
        newest = segment.ensure_max_timestamp()
        if newest is None or newest < timestamp_ms:
            continue
        position, expected = segment.timestamp_position(timestamp_ms)
        for pos, header in segment.scan(position, limit, expected, verify_crc=False):
            if header.max_timestamp < timestamp_ms:
                continue
            data = segment.read_batches(pos, limit, header.total_size)
            for record in iter_records(data):
                if record.timestamp_ms >= timestamp_ms:
                    return record.offset
    return None
