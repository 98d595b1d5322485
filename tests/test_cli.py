"""The ``eventbus`` command line against a real ``eventbus serve`` process."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_tools import (
    api,
    client_env,
    eventbus,
    ok,
    split_first_partition,
    stop_process,
    text,
)
from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("cli") / "data").start()
    yield process
    assert process.stop() == 0


def test_topics_create_list_describe_delete(server: ServerProcess) -> None:
    created = api(server, "topics", "create", "cli-topics", "--config", "retention_ms=60000")
    assert created["name"] == "cli-topics" and created["config"]["retention_ms"] == 60000
    listed = api(server, "topics", "list")
    assert "cli-topics" in [t["name"] for t in listed]
    described = api(server, "topics", "describe", "cli-topics")
    assert [p["id"] for p in described["partitions"]] == [0]
    assert api(server, "topics", "delete", "cli-topics") == {"deleted": "cli-topics"}
    missing = eventbus(server, "topics", "describe", "cli-topics")
    assert missing.returncode == 1
    assert b"topic_not_found" in missing.stderr


def test_topics_and_groups_print_for_people_by_default(server: ServerProcess) -> None:
    created = text(server, "topics", "create", "cli-human", "--config", "retention_ms=60000")
    assert created.splitlines()[0] == "topic cli-human: 1 active, 0 sealed partitions"
    assert "  retention_ms = 60,000" in created.splitlines()
    listed = text(server, "topics", "list").splitlines()
    assert listed[0].split() == ["TOPIC", "CREATED"]
    assert any(line.startswith("cli-human ") for line in listed)
    ok(eventbus(server, "produce", "cli-human", stdin=b"a\nb\n"))
    described = text(server, "topics", "describe", "cli-human")
    assert "0  active  hash 0%-100%  offsets 0..2" in described
    ok(
        eventbus(
            server, "consume", "cli-human", "--group", "h", "--from-beginning", "--max-records", "1"
        )
    )
    group = text(server, "groups", "describe", "cli-human", "h").splitlines()
    assert group[0].split() == ["group:", "h"] and group[2].split() == ["lag:", "1"]
    header = next(n for n, line in enumerate(group) if line.startswith("PARTITION"))
    assert group[header].split() == ["PARTITION", "STATE", "COMMITTED", "END", "LAG", "MEMBER"]
    table = group[header + 1]
    assert table.split() == ["0", "active", "1", "2", "1", "-"]
    listed = text(server, "groups", "list", "cli-human").splitlines()
    assert [line.split() for line in listed] == [["GROUP", "LAG"], ["h", "1"]]
    as_json = api(server, "groups", "list", "cli-human")
    assert [(g["group"], g["lag"]) for g in as_json["groups"]] == [("h", 1)]
    assert text(server, "topics", "delete", "cli-human") == "deleted topic cli-human\n"


def test_produce_and_consume_ten_thousand_lines(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "cli-lines"))
    split_first_partition(server, "cli-lines")
    lines = [f"key-{n % 97}:line {n}" for n in range(10_000)]
    produced = eventbus(
        server,
        "produce",
        "cli-lines",
        "--key-separator",
        ":",
        "--batch-size",
        "700",
        stdin=("\n".join(lines) + "\n").encode(),
    )
    ok(produced)
    assert b"produced 10,000 records to cli-lines" in produced.stderr

    consumed = eventbus(
        server,
        "consume",
        "cli-lines",
        "--group",
        "g",
        "--from-beginning",
        "--max-records",
        "10000",
        "--print-key",
        "--separator",
        ":",
    )
    out = ok(consumed).decode().splitlines()
    assert sorted(out) == sorted(lines)
    described = api(server, "topics", "describe", "cli-lines")
    ends = {p["id"]: p["end_offset"] for p in described["partitions"]}
    assert ends[1] > 1000 and ends[2] > 1000 and ends[1] + ends[2] == 10_000
    # Per-key order holds.
    by_key: dict[str, list[int]] = {}
    for line in out:
        key, _, value = line.partition(":")
        by_key.setdefault(key, []).append(int(value.split()[1]))
    assert all(numbers == sorted(numbers) for numbers in by_key.values())

    # What was printed was committed: the group has no lag, and goes on from there.
    described = api(server, "groups", "describe", "cli-lines", "g")
    assert sum(p["lag"] for p in described["partitions"]) == 0
    ok(eventbus(server, "produce", "cli-lines", stdin=b"later 1\nlater 2\n"))
    more = eventbus(server, "consume", "cli-lines", "--group", "g", "--max-records", "2")
    assert ok(more).decode().splitlines() == ["later 1", "later 2"]


def test_groups_seek_replays_from_the_beginning(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "cli-seek"))
    ok(eventbus(server, "produce", "cli-seek", stdin=b"a\nb\nc\n"))
    first = eventbus(
        server, "consume", "cli-seek", "--group", "s", "--from-beginning", "--max-records", "3"
    )
    assert ok(first).decode().splitlines() == ["a", "b", "c"]
    seeked = api(server, "groups", "seek", "cli-seek", "s", "--to", "offsets:0=1")
    assert seeked == {"committed": [{"partition": 0, "offset": 1}]}
    again = eventbus(
        server, "consume", "cli-seek", "--group", "s", "--max-records", "2", "--print-offset"
    )
    assert ok(again).decode().splitlines() == ["0\t1\tb", "0\t2\tc"]
    bad = eventbus(server, "groups", "seek", "cli-seek", "s", "--to", "sideways")
    assert bad.returncode == 2 and b"expected earliest" in bad.stderr


def test_max_records_inside_a_stored_batch_commits_only_what_was_printed(
    server: ServerProcess,
) -> None:
    ok(eventbus(server, "topics", "create", "cli-cut"))
    # One request, so one stored batch: a fetch hands out all ten at once.
    ok(eventbus(server, "produce", "cli-cut", stdin=b"".join(b"r%d\n" % n for n in range(10))))
    first = eventbus(
        server, "consume", "cli-cut", "--group", "c", "--from-beginning", "--max-records", "3"
    )
    assert ok(first).decode().splitlines() == ["r0", "r1", "r2"]
    described = api(server, "groups", "describe", "cli-cut", "c")
    assert described["partitions"][0]["committed"] == 3
    assert described["members"] == []  # it left
    rest = eventbus(server, "consume", "cli-cut", "--group", "c", "--max-records", "7")
    assert ok(rest).decode().splitlines() == [f"r{n}" for n in range(3, 10)]


def test_consume_follows_until_interrupted_and_commits(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "cli-follow"))
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "consume",
            "cli-follow",
            "--group",
            "f",
            "--from-beginning",
            "--url",
            server.url,
            "--data-dir",
            str(server.data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )
    try:
        assert consumer.stdout is not None
        seen = b""
        for n in range(3):
            ok(eventbus(server, "produce", "cli-follow", stdin=f"wave {n}\n".encode()))
            deadline = time.monotonic() + 30
            while f"wave {n}\n".encode() not in seen:
                assert time.monotonic() < deadline, seen
                if select.select([consumer.stdout], [], [], 0.1)[0]:
                    seen += os.read(consumer.stdout.fileno(), 1 << 16)
        consumer.send_signal(signal.SIGINT)
        assert consumer.wait(30) == 0
    finally:
        stop_process(consumer)
    assert seen.decode().splitlines() == ["wave 0", "wave 1", "wave 2"]
    described = api(server, "groups", "describe", "cli-follow", "f")
    assert described["partitions"][0]["committed"] == 3
    assert described["members"] == []  # it left


def test_keys_come_from_flags_environment_or_the_data_dir(
    server: ServerProcess, tmp_path: Path
) -> None:
    key = server.keys["EVENTBUS_API_KEY"]
    elsewhere = ["--url", server.url, "--data-dir", str(tmp_path)]
    assert (
        eventbus(server, "topics", "list", connect=[*elsewhere, "--api-key", key]).returncode == 0
    )
    from_env = eventbus(server, "topics", "list", connect=elsewhere, env={"EVENTBUS_API_KEY": key})
    assert from_env.returncode == 0
    from_url_env = eventbus(
        server,
        "topics",
        "list",
        connect=["--data-dir", str(server.data_dir)],
        env={"EVENTBUS_URL": server.url},
    )
    assert from_url_env.returncode == 0
    none = eventbus(server, "topics", "list", connect=elsewhere)
    assert none.returncode == 1 and b"no tenant API key" in none.stderr
    wrong = eventbus(server, "topics", "list", connect=[*elsewhere, "--api-key", "ebk_wrong"])
    assert wrong.returncode == 1 and b"unauthorized" in wrong.stderr


def test_produce_shows_a_live_rate_on_a_terminal(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "cli-tty"))
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "produce",
                "cli-tty",
                "--batch-size",
                "100",
                "--url",
                server.url,
                "--data-dir",
                str(server.data_dir),
            ],
            input=b"".join(b"%d\n" % n for n in range(2000)),
            stdout=subprocess.PIPE,
            stderr=secondary,
            cwd=ROOT,
            env=client_env(),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0
        shown = b""
        while select.select([primary], [], [], 0.5)[0]:
            shown += os.read(primary, 1 << 16)
    finally:
        os.close(primary)
        os.close(secondary)
    assert b"records/s\x1b[K" in shown  # the rewritten progress line
    assert b"produced 2,000 records" in shown


def _consumer(server: ServerProcess, topic: str, group: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "consume", topic, "--group", group]
        + ["--from-beginning", "--wait-ms", "500", "--url", server.url]
        + ["--data-dir", str(server.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )


def test_two_consumers_rebalance_and_both_stop_cleanly(server: ServerProcess) -> None:
    """A second `eventbus consume` joins the group of a first: a partition moves, the first
    drops what it had not committed there, and neither crashes; every record is printed."""
    ok(eventbus(server, "topics", "create", "cli-two"))
    split_first_partition(server, "cli-two")

    def produce(numbers: range) -> None:
        lines = "\n".join(f"k{n}:v{n}" for n in numbers)
        ok(eventbus(server, "produce", "cli-two", "--key-separator", ":", stdin=lines.encode()))

    produce(range(200))
    consumers = [_consumer(server, "cli-two", "two")]
    printed: list[bytes] = [b""]
    try:
        deadline = time.monotonic() + 60
        while printed[0].count(b"\n") < 50:
            assert time.monotonic() < deadline, printed
            if select.select([consumers[0].stdout], [], [], 0.1)[0]:
                assert consumers[0].stdout is not None
                printed[0] += os.read(consumers[0].stdout.fileno(), 1 << 16)
        consumers.append(_consumer(server, "cli-two", "two"))
        printed.append(b"")
        # Once the second is a member (and has a partition), more records come.
        while True:
            assert time.monotonic() < deadline, "the second consumer did not join"
            described = api(server, "groups", "describe", "cli-two", "two")
            if len(described["members"]) == 2 and all(
                m["assignment"] for m in described["members"]
            ):
                break
            time.sleep(0.1)
        produce(range(200, 400))
        wanted = {f"v{n}" for n in range(400)}
        while not wanted <= {line for text in printed for line in text.decode().splitlines()}:
            assert time.monotonic() < deadline, "not every record was printed"
            streams = [c.stdout for c in consumers if c.stdout is not None]
            for stream in select.select(streams, [], [], 0.1)[0]:
                index = [c.stdout for c in consumers].index(stream)
                printed[index] += os.read(stream.fileno(), 1 << 16)
        for consumer in consumers:
            consumer.send_signal(signal.SIGINT)
        for consumer in consumers:
            assert consumer.wait(30) == 0
            assert consumer.stderr is not None
            assert b"Traceback" not in consumer.stderr.read()
    finally:
        for consumer in consumers:
            stop_process(consumer)
    assert printed[1], "the second consumer never got a partition"
