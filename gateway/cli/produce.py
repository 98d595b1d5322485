"""``eventbus produce``: stdin, one record per line, in batches, in order."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import BinaryIO

from gateway.cli.progress import ProgressLine, wanted
from gateway.client import Client
from partitions.batch import NewRecord

# Bounds of one produce request built from stdin.
MAX_BATCH_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, for loops that stop at a safe point."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _read_lines(source: BinaryIO, out: queue.Queue[list[bytes] | None]) -> None:
    """Put stdin's lines on ``out`` as they arrive (whatever one read returns), then None.

    A bounded queue holds the reader back while the server is slower than the input."""
    fd = source.fileno()
    tail = b""
    try:
        while data := os.read(fd, 1 << 16):
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            if lines:
                out.put(lines)
        if tail:
            out.put([tail])
    finally:
        out.put(None)


def _is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _line_record(line: bytes, separator: bytes | None) -> NewRecord:
    """A line (without its LF or CRLF) as a record; text unless it is not UTF-8."""
    line = line.removesuffix(b"\r")
    key = None
    if separator is not None:
        head, found, rest = line.partition(separator)
        if found:
            key, line = head, rest
    return NewRecord(
        value=line,
        key=key,
        key_is_text=key is not None and _is_text(key),
        value_is_text=_is_text(line),
    )


def _input_size(source: BinaryIO) -> int | None:
    """The size of stdin when it is a regular file (``< FILE``), for the progress bar."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) and status.st_size else None


def produce(args: argparse.Namespace, client: Client) -> int:
    separator = args.key_separator.encode() if args.key_separator else None
    linger_s = max(args.linger_ms, 0) / 1000
    chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=64)
    reader = threading.Thread(
        target=_read_lines, args=(sys.stdin.buffer, chunks), name="stdin", daemon=True
    )
    progress = ProgressLine(enabled=wanted(args.progress))
    input_size = _input_size(sys.stdin.buffer)
    produced = sent_bytes = 0
    pending: list[bytes] = []
    pending_bytes = 0
    deadline = 0.0

    def send(lines: list[bytes]) -> None:
        nonlocal produced, sent_bytes
        client.produce(args.topic, [_line_record(line, separator) for line in lines])
        produced += len(lines)
        sent_bytes += sum(len(line) + 1 for line in lines)  # each with its newline
        progress.update(produced, fraction=sent_bytes / input_size if input_size else None)

    with _stop_on_signals() as stop:
        reader.start()
        try:
            ended = False
            while not ended:
                wait = max(0.0, deadline - time.monotonic()) if pending else 0.2
                try:
                    chunk = chunks.get(timeout=min(wait, 0.2))
                except queue.Empty:
                    chunk = []
                if chunk is None:
                    ended = True
                elif chunk:
                    if not pending:
                        deadline = time.monotonic() + linger_s
                    pending.extend(chunk)
                    pending_bytes += sum(len(line) for line in chunk)
                ended = ended or stop.is_set()
                # Full batches go now; a partial one at its deadline or at the end.
                while len(pending) >= args.batch_size or pending_bytes >= MAX_BATCH_BYTES:
                    take = _batch_length(pending, args.batch_size)
                    send(pending[:take])
                    del pending[:take]
                    pending_bytes = sum(len(line) for line in pending)
                    deadline = time.monotonic() + linger_s
                if pending and (ended or time.monotonic() >= deadline):
                    send(pending)
                    pending, pending_bytes = [], 0
        except BaseException:
            progress.clear()
            if produced:
                # Where to resume: the lines before this point are stored, in order.
                print(
                    f"eventbus: the first {produced:,} lines were produced before the failure",
                    file=sys.stderr,
                )
            raise
    progress.clear()
    elapsed, rate = progress.elapsed(), progress.rate(produced)
    if args.json:
        summary = {"topic": args.topic, "records": produced, "seconds": round(elapsed, 3)}
        print(json.dumps(summary))
    else:
        print(
            f"eventbus: produced {produced:,} records to {args.topic} in {elapsed:.2f} s "
            f"({rate:,.0f} records/s)",
            file=sys.stderr,
        )
    return 0


def _batch_length(lines: list[bytes], batch_size: int) -> int:
    """How many leading lines make one request: at most batch_size and about
    MAX_BATCH_BYTES, at least one."""
    size = 0
    for count, line in enumerate(lines[:batch_size], 1):
        size += len(line)
        if size >= MAX_BATCH_BYTES:
            return count
    return min(len(lines), batch_size)
