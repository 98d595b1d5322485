"""The client commands of ``eventbus``: their flags, the connection to a server, and
``topics`` and ``groups``. ``produce`` and ``consume`` have modules of their own."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from gateway.cli.output import cell, fields, show, table, when
from gateway.cli.partition_tree import partition_tree, topic_summary
from gateway.cli.watch import add_watch_parser, watch
from gateway.client import Client
from gateway.tenancy.auth import CREDENTIALS_FILE

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A failure reported as one line on stderr, with exit code 1."""


def default_data_dir() -> str:
    return os.environ.get("EVENTBUS_DATA_DIR", "./data")


def _config_item(text: str) -> tuple[str, Any]:
    name, found, raw = text.partition("=")
    if not found or not name:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)  # numbers and null as JSON; anything else is a string
    except ValueError:
        value = raw
    return name, value


def _seek_target(text: str) -> str | dict[str, Any]:
    if text in ("earliest", "latest"):
        return text
    kind, _, rest = text.partition(":")
    try:
        if kind == "timestamp":
            return {"timestamp_ms": int(rest)}
        if kind == "offsets":
            pairs = [item.split("=", 1) for item in rest.split(",") if item]
            if pairs and all(len(pair) == 2 for pair in pairs):
                return {"offsets": [{"partition": int(p), "offset": int(o)} for p, o in pairs]}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected earliest, latest, timestamp:MS or offsets:P=O,P=O")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# The keys a command may use: its flag, its variable (also the name in the credentials file
# the first start writes) and what it is.
API_KEY = ("--api-key", "EVENTBUS_API_KEY", "tenant API key")
ADMIN_KEY = ("--admin-key", "EVENTBUS_ADMIN_KEY", "admin key")


def connection_options(*keys: tuple[str, str, str]) -> argparse.ArgumentParser:
    """The options every client command takes: the server, the ``keys`` it may use, where
    to find them, and ``--json``."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get("EVENTBUS_URL", DEFAULT_URL),
        help=f"server URL (env EVENTBUS_URL, default {DEFAULT_URL})",
    )
    for flag, variable, meaning in keys:
        group.add_argument(
            flag,
            default=os.environ.get(variable) or None,
            help=f"{meaning} (env {variable}; default: the key in DATA_DIR/credentials)",
        )
    group.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="where to find the credentials file without a key (env EVENTBUS_DATA_DIR, "
        "default ./data)",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request attempt (default 30)"
    )
    connection.add_argument(
        "--json", action="store_true", help="print the server's JSON answer, for scripts"
    )
    return connection


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line with rate and ETA on stderr (default: when stderr is a "
        "terminal the records are not printed to)",
    )


def add_client_commands(commands: Any) -> None:
    connection = connection_options(API_KEY)
    topics = commands.add_parser("topics", help="create, list, describe and delete topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser("create", parents=[connection], help="create a topic")
    create.add_argument("name")
    create.add_argument(
        "--config",
        type=_config_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a topic config key, e.g. retention_ms=86400000 (repeatable)",
    )
    topic_commands.add_parser("list", parents=[connection], help="list every topic")
    describe = topic_commands.add_parser(
        "describe", parents=[connection], help="config and partitions of a topic"
    )
    describe.add_argument("name")
    delete = topic_commands.add_parser(
        "delete", parents=[connection], help="delete a topic and all its data"
    )
    delete.add_argument("name")
    add_watch_parser(topic_commands, connection)

    produce = commands.add_parser(
        "produce",
        parents=[connection],
        help="produce stdin, one record per line",
        description="Reads stdin and produces one record per line (values are sent as text). "
        "Lines are sent in batches, in order, one request at a time; a batch goes when it is "
        "full or when --linger-ms passed since its first line.",
    )
    produce.add_argument("topic")
    produce.add_argument(
        "--key-separator",
        metavar="SEP",
        help="split each line at the first SEP into key and value; lines without it are keyless",
    )
    produce.add_argument(
        "--batch-size", type=_positive, default=1000, help="lines per request (default 1000)"
    )
    produce.add_argument(
        "--linger-ms",
        type=int,
        default=100,
        help="send a partial batch this long after its first line (default 100)",
    )
    produce.add_argument(
        "--compression", choices=("zstd", "gzip", "none"), default="none", help="request bodies"
    )
    _progress_option(produce)

    consume = commands.add_parser(
        "consume",
        parents=[connection],
        help="consume a topic as a member of a group, printing one record per line",
        description="Follows the topic as a member of GROUP and prints each record's value, "
        "one per line. What was printed is committed; on SIGINT, SIGTERM or --max-records "
        "the member commits and leaves the group.",
    )
    consume.add_argument("topic")
    consume.add_argument("--group", required=True, help="consumer group name")
    consume.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new group starts at the beginning (default: at the end)",
    )
    consume.add_argument(
        "--max-records", type=_positive, default=None, help="stop after this many records"
    )
    consume.add_argument("--print-key", action="store_true", help="print the key before the value")
    # --json (from the connection options): each record as a line of JSON instead.
    consume.add_argument(
        "--print-offset", action="store_true", help="print partition and offset first"
    )
    consume.add_argument("--separator", default="\t", help="between printed fields (default a tab)")
    consume.add_argument(
        "--wait-ms",
        type=int,
        default=20_000,
        help="long-poll of each fetch; at most the server's --max-wait-ms (default 20000)",
    )
    _progress_option(consume)

    groups = commands.add_parser("groups", help="list, describe and reset consumer groups")
    group_commands = groups.add_subparsers(dest="groups_command", required=True)
    list_groups = group_commands.add_parser(
        "list", parents=[connection], help="a topic's groups with their lag"
    )
    list_groups.add_argument("topic")
    describe_group = group_commands.add_parser(
        "describe", parents=[connection], help="members, commits and lag of a group"
    )
    describe_group.add_argument("topic")
    describe_group.add_argument("group")
    seek = group_commands.add_parser(
        "seek", parents=[connection], help="reset a group's committed offsets (no live members)"
    )
    seek.add_argument("topic")
    seek.add_argument("group")
    seek.add_argument(
        "--to",
        type=_seek_target,
        required=True,
        metavar="TARGET",
        help="earliest, latest, timestamp:MS or offsets:P=O,P=O",
    )


def find_key(args: argparse.Namespace, key: tuple[str, str, str] = API_KEY) -> str:
    """The key's flag (or its variable), else the key of that name in the credentials file
    (tenant default's key, or the admin key, as the server's first start wrote them)."""
    flag, variable, meaning = key
    given = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if given:
        return str(given)
    path = Path(args.data_dir) / CREDENTIALS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == variable and value.strip():
            return value.strip()
    raise CliError(
        f"no {meaning}: pass {flag}, set {variable}, or point --data-dir at the "
        f"server's data dir (no key in {path})"
    )


def _topic_view(described: Any) -> str:
    config = described.get("config", {})
    lines = [topic_summary(described), "", "config:"]
    lines += [f"  {name} = {cell(value)}" for name, value in sorted(config.items())]
    lines += ["", "partitions:"]
    lines += ["  " + line for line in partition_tree(described)]
    return "\n".join(lines)


def _topics_table(listed: list[dict[str, Any]]) -> str:
    return table(["TOPIC", "CREATED"], [[t["name"], when(t.get("created_ms"))] for t in listed])


def topics(args: argparse.Namespace, client: Client) -> int:
    command = args.topics_command
    if command == "create":
        show(args, client.create_topic(args.name, dict(args.config)), _topic_view)
    elif command == "list":
        show(args, client.list_topics(), _topics_table)
    elif command == "describe":
        show(args, client.describe_topic(args.name), _topic_view)
    elif command == "watch":
        return watch(args, client)
    else:
        client.delete_topic(args.name)
        show(args, {"deleted": args.name}, lambda _: f"deleted topic {args.name}")
    return 0


def _group_view(described: Any) -> str:
    members = table(
        ["MEMBER", "ASSIGNMENT"],
        [[m.get("member_id"), m.get("assignment", [])] for m in described.get("members", [])],
    )
    partitions = table(
        ["PARTITION", "STATE", "COMMITTED", "END", "LAG", "MEMBER"],
        [
            [
                p.get("partition"),
                p.get("state"),
                p.get("committed"),
                p.get("end_offset"),
                p.get("lag"),
                p.get("member_id"),
            ]
            for p in described.get("partitions", [])
        ],
    )
    head = fields(
        [
            ("group", described.get("group")),
            ("generation", described.get("generation")),
            ("lag", described.get("lag")),
        ]
    )
    return f"{head}\n\n{members}\n\n{partitions}"


def _committed_view(answer: Any) -> str:
    rows = [[c["partition"], c["offset"]] for c in answer["committed"]]
    return table(["PARTITION", "COMMITTED"], rows)


def _groups_view(answer: Any) -> str:
    rows = [[g["group"], g["lag"]] for g in answer["groups"]]
    return table(["GROUP", "LAG"], rows)


def groups(args: argparse.Namespace, client: Client) -> int:
    if args.groups_command == "list":
        show(args, {"groups": client.list_groups(args.topic)}, _groups_view)
    elif args.groups_command == "describe":
        show(args, client.describe_group(args.topic, args.group), _group_view)
    else:
        committed = client.seek_group(args.topic, args.group, args.to)
        answer = {
            "committed": [{"partition": p, "offset": o} for p, o in sorted(committed.items())]
        }
        show(args, answer, _committed_view)
    return 0
