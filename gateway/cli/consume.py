"""``eventbus consume``: follow a topic as one member of a group, printing its records."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
from typing import Any

from gateway.cli.progress import ProgressLine, wanted
from gateway.client import ApiError, AsyncClient, ClientError, FetchResult
from partitions.batch import Record

# Bounds of one fetch.
MAX_FETCH_RECORDS = 10_000
FETCH_MAX_BYTES = 4 * 1024 * 1024


def _json_line(pid: int, record: Record) -> bytes:
    """The record as one line of JSON, with the fields of the API's JSON record object."""
    out: dict[str, Any] = {"partition": pid, "offset": record.offset}
    out["timestamp_ms"] = record.timestamp_ms
    for name, data, is_text in (
        ("key", record.key, record.key_is_text),
        ("value", record.value, record.value_is_text),
    ):
        if data is None or is_text:
            out[name] = None if data is None else data.decode()
        else:
            out[name + "_b64"] = base64.b64encode(data).decode()
    out["headers"] = dict(record.headers)
    return json.dumps(out, ensure_ascii=False).encode() + b"\n"


def _format(pid: int, record: Record, args: argparse.Namespace, separator: bytes) -> bytes:
    if args.json:
        return _json_line(pid, record)
    fields: list[bytes] = []
    if args.print_offset:
        fields += [str(pid).encode(), str(record.offset).encode()]
    if args.print_key:
        fields.append(record.key if record.key is not None else b"")
    fields.append(record.value)
    return separator.join(fields) + b"\n"


async def consume(args: argparse.Namespace, url: str, key: str) -> int:
    """Follow the topic as one group member; see the command's description.

    Commits: every fetch uses auto_commit, which commits what the member's previous fetch
    delivered; this loop has printed and flushed all of it before it fetches again. On exit
    it commits the positions after the records it printed (fewer than delivered when
    --max-records cut an answer, or when a signal cancelled a fetch) and leaves with
    ``commit: false``, so that the leave commits nothing more. A fetch whose answer may have
    been lost is never followed by another fetch as the same member, so nothing unprinted is
    ever committed.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout.buffer
    separator = args.separator.encode()
    limit: int | None = args.max_records
    printed: dict[int, int] = {}  # partition -> offset after the last record printed
    count = 0
    progress = ProgressLine(enabled=wanted(args.progress, records_to=sys.stdout), total=limit)
    member: str | None = None
    answer: FetchResult | None = None
    async with AsyncClient(url, key, timeout=args.timeout) as client:
        try:
            while not stop.is_set() and (limit is None or count < limit):
                want = MAX_FETCH_RECORDS if limit is None else min(MAX_FETCH_RECORDS, limit - count)
                fetch = asyncio.ensure_future(
                    client.fetch(
                        args.topic,
                        args.group,
                        member,
                        max_records=want,
                        max_bytes=FETCH_MAX_BYTES,
                        wait_ms=args.wait_ms,
                        auto_commit=True,
                        auto_offset_reset="earliest" if args.from_beginning else None,
                    )
                )
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ClientError):
                        await fetch
                    break
                try:
                    answer = fetch.result()
                except ApiError as exc:
                    if exc.code != "unknown_member":
                        raise
                    member = answer = None  # the session ended: join again
                    continue
                member = answer.member_id
                records = answer.records
                if limit is not None:
                    records = records[: limit - count]
                out.write(b"".join(_format(pid, r, args, separator) for pid, r in records))
                out.flush()
                count += len(records)
                progress.update(count)
                for pid, record in records:
                    printed[pid] = max(printed.get(pid, 0), record.offset + 1)
        finally:
            progress.clear()
            if member is not None and answer is not None:
                await _commit_and_leave(client, args, answer, printed)
    return 0


async def _commit_and_leave(
    client: AsyncClient, args: argparse.Namespace, answer: FetchResult, printed: dict[int, int]
) -> None:
    """Commit what was printed in the member's partitions, then leave without committing
    more (leaving would otherwise commit all the last fetch delivered, printed or not).

    Partitions a rebalance moved to another member meanwhile are dropped from the commit
    (the client does so); their printed records will be delivered to their new owner again,
    which is said as a warning, as is a commit refused whole (the session had ended)."""
    offsets = {p: o for p, o in printed.items() if p in answer.assignment}
    if offsets:
        try:
            committed = await client.commit(
                args.topic, args.group, answer.member_id, answer.generation, offsets
            )
        except ClientError as exc:
            print(
                f"eventbus: warning: could not commit ({exc}); "
                "the uncommitted records will be delivered again",
                file=sys.stderr,
            )
        else:
            moved = sorted(p for p, o in offsets.items() if committed.get(p, -1) < o)
            if moved:
                print(
                    f"eventbus: warning: partitions {moved} moved to another member before "
                    "the commit; their uncommitted records will be delivered to it again",
                    file=sys.stderr,
                )
    # Refused (unknown_member: the session had already ended) or unreachable: the session
    # expires on its own.
    with contextlib.suppress(ClientError):
        await client.leave(args.topic, args.group, answer.member_id, commit=False)
