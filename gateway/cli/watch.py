"""``eventbus topics watch NAME``: the topic's partition tree, redrawn as it changes.

It asks for the topic (``GET /v1/topics/{topic}``) every ``--interval`` seconds. On a
terminal each answer replaces the last one on the screen; elsewhere (a pipe, a file) each
is printed after the last, separated by a blank line, with no control characters. With
``--json`` each answer is one line of JSON. ``--once`` prints one and exits. Ctrl-C ends it
with status 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gateway.cli.arguments import positive_seconds
from gateway.cli.output import when
from gateway.cli.partition_tree import partition_tree, topic_summary
from gateway.client import Client

# Home the cursor, draw, then erase what an earlier, longer frame left below.
_HOME = "\x1b[H"
_ERASE_BELOW = "\x1b[J"
_HIDE_CURSOR, _SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def add_watch_parser(topic_commands: Any, connection: argparse.ArgumentParser) -> None:
    watch_parser = topic_commands.add_parser(
        "watch",
        parents=[connection],
        help="the live partition tree of a topic",
        description="Shows the topic's partitions as a tree of their lineage (id, state, hash "
        "range, offsets, measured throughput), redrawn every --interval seconds until Ctrl-C. "
        "When stdout is not a terminal, prints one snapshot per interval.",
    )
    watch_parser.add_argument("name")
    watch_parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="between two looks at the topic (default 1)",
    )
    watch_parser.add_argument("--once", action="store_true", help="print one snapshot and exit")


def snapshot(described: Any, now_ms: int) -> str:
    head = f"{topic_summary(described)}  (at {when(now_ms)})"
    return "\n".join([head, *partition_tree(described)])


def watch(args: argparse.Namespace, client: Client) -> int:
    out = sys.stdout
    live = out.isatty() and not args.once and not args.json
    if live:
        out.write(_HIDE_CURSOR + "\x1b[2J")
    try:
        while True:
            described = client.describe_topic(args.name)
            if args.json:
                out.write(json.dumps(described, separators=(",", ":")) + "\n")
            else:
                text = snapshot(described, int(time.time() * 1000))
                if live:
                    out.write(_HOME + text.replace("\n", "\x1b[K\n") + "\x1b[K\n" + _ERASE_BELOW)
                else:
                    out.write(text + ("\n" if args.once else "\n\n"))
            out.flush()
            if args.once:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if live:
            out.write(_SHOW_CURSOR)
            out.flush()
