"""What the ``eventbus`` command draws: the live partition tree, progress lines, and the
shell completion scripts made from its parser."""

from __future__ import annotations

import argparse
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

from gateway.cli.main import build_parser
from tests.cli_tools import api, client_env, eventbus, ok, split_first_partition, stop_process, text
from tests.servers import ROOT, ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.client_side("the terminal views, progress lines and completion scripts"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("cli-views") / "data").start()
    yield process
    assert process.stop() == 0


def _command(server: ServerProcess, *args: str) -> list[str]:
    connect = ["--url", server.url, "--data-dir", str(server.data_dir)]
    return [sys.executable, "-m", "gateway.cli", *args, *connect]


def _read_until(fd: int, wanted: bytes, seconds: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while seen.count(wanted) < 1:
        assert time.monotonic() < deadline, seen
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 1 << 16)
    return seen


def test_watch_once_draws_the_tree_after_a_split(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "watched"))
    ok(eventbus(server, "produce", "watched", stdin=b"a\nb\nc\n"))
    split_first_partition(server, "watched")
    lines = text(server, "topics", "watch", "watched", "--once").splitlines()
    assert lines[0].startswith("topic watched: 2 active, 1 sealed partitions  (at ")
    assert lines[1].startswith("0  sealed  hash 0%-100%  offsets 0..3")
    assert lines[2].startswith("├─ 1  active  hash 0%-50%  offsets 0..0")
    assert lines[3].startswith("└─ 2  active  hash 50%-100%  offsets 0..0")
    assert len(lines) == 4
    described = api(server, "topics", "watch", "watched", "--once")
    assert [(p["id"], p["state"], p["children"]) for p in described["partitions"]] == [
        (0, "sealed", [1, 2]),
        (1, "active", []),
        (2, "active", []),
    ]


def test_watch_into_a_pipe_prints_plain_snapshots_until_interrupted(
    server: ServerProcess,
) -> None:
    ok(eventbus(server, "topics", "create", "piped"))
    watcher = subprocess.Popen(
        _command(server, "topics", "watch", "piped", "--interval", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )
    try:
        assert watcher.stdout is not None and watcher.stderr is not None
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"topic piped:") < 2:
            assert time.monotonic() < deadline, seen
            if select.select([watcher.stdout], [], [], 0.1)[0]:
                seen += os.read(watcher.stdout.fileno(), 1 << 16)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0
        assert b"Traceback" not in watcher.stderr.read()
    finally:
        stop_process(watcher)
    assert b"\x1b" not in seen
    assert b"\n\ntopic piped: 1 active, 0 sealed partitions" in seen


def test_watch_on_a_terminal_redraws_in_place_and_restores_the_cursor(
    server: ServerProcess,
) -> None:
    ok(eventbus(server, "topics", "create", "drawn"))
    primary, secondary = pty.openpty()
    watcher = subprocess.Popen(
        _command(server, "topics", "watch", "drawn", "--interval", "0.2"),
        stdout=secondary,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=client_env(),
    )
    try:
        seen = _read_until(primary, b"0  active  hash 0%-100%")
        seen += _read_until(primary, b"\x1b[H")  # the next frame starts at the top again
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(30) == 0
        seen += _read_until(primary, b"\x1b[?25h")
    finally:
        stop_process(watcher)
        os.close(primary)
        os.close(secondary)
    assert b"\x1b[?25l" in seen and b"topic drawn: 1 active" in seen


def test_progress_is_quiet_when_piped_and_shown_when_asked(
    server: ServerProcess, tmp_path: Path
) -> None:
    ok(eventbus(server, "topics", "create", "progressed"))
    lines = b"".join(b"%d\n" % n for n in range(2000))
    quiet = eventbus(server, "produce", "progressed", "--batch-size", "100", stdin=lines)
    ok(quiet)
    assert b"\r" not in quiet.stderr and b"\x1b" not in quiet.stderr
    assert b"produced 2,000 records" in quiet.stderr

    # A file on stdin has a size: the forced line has a bar, a share and the time left.
    source = tmp_path / "lines.txt"
    source.write_bytes(lines)
    with source.open("rb") as stdin:
        forced = subprocess.run(
            _command(server, "produce", "progressed", "--batch-size", "100", "--progress"),
            stdin=stdin,
            capture_output=True,
            cwd=ROOT,
            env=client_env(),
            timeout=120,
            check=False,
        )
    assert forced.returncode == 0, forced.stderr
    first = forced.stderr.split(b"\r")[1]
    assert first.startswith(b"[#") and b"%" in first and b"ETA " in first

    consumed = eventbus(
        server,
        "consume",
        "progressed",
        "--group",
        "p",
        "--from-beginning",
        "--max-records",
        "4000",
        "--progress",
    )
    assert ok(consumed).count(b"\n") == 4000
    assert b"/4,000 records" in consumed.stderr


def test_no_progress_keeps_a_terminal_clean(server: ServerProcess) -> None:
    ok(eventbus(server, "topics", "create", "unprogressed"))
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            _command(server, "produce", "unprogressed", "--no-progress"),
            input=b"x\n" * 500,
            stdout=subprocess.PIPE,
            stderr=secondary,
            cwd=ROOT,
            env=client_env(),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0
        shown = _read_until(primary, b"produced 500 records")
    finally:
        os.close(primary)
        os.close(secondary)
    assert b"\r\x1b" not in shown and b"records/s\x1b[K" not in shown


def _paths(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, list[str]]]:
    """Every command of the parser with its subcommand names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path, list(action.choices)
            for name, sub in action.choices.items():
                yield from _paths(sub, f"{path} {name}".strip())


def _completion(shell: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "completion", shell],
        capture_output=True,
        cwd=ROOT,
        env=client_env(),
        timeout=60,
        check=True,
    )
    return result.stdout.decode()


def _complete_in_bash(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _eventbus; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "-c", program], capture_output=True, timeout=30, check=True, cwd=ROOT
    )
    return result.stdout.decode().split()


def test_bash_completion_is_valid_and_follows_the_parser(tmp_path: Path) -> None:
    script = tmp_path / "eventbus.bash"
    script.write_text(_completion("bash"))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    for path, names in _paths(build_parser()):
        assert f'"{path}") echo "{" ".join(names)}"' in script.read_text()
    assert _complete_in_bash(script, "eventbus", "") == [
        "serve",
        "catalog",
        "topics",
        "produce",
        "consume",
        "groups",
        "tenants",
        "usage",
        "completion",
    ]
    assert _complete_in_bash(script, "eventbus", "tenants", "k") == ["keys"]
    assert _complete_in_bash(script, "eventbus", "tenants", "keys", "") == [
        "create",
        "list",
        "revoke",
    ]
    assert _complete_in_bash(script, "eventbus", "topics", "watch", "--in") == ["--interval"]
    assert _complete_in_bash(script, "eventbus", "tenants", "keys", "create", "--role", "") == [
        "full",
        "produce",
        "consume",
    ]
    # A topic named like a command is not taken for one.
    assert "--once" in _complete_in_bash(script, "eventbus", "topics", "watch", "list", "--")


def test_zsh_and_fish_completion_name_every_command_and_flag() -> None:
    zsh, fish = _completion("zsh"), _completion("fish")
    assert zsh.startswith("#compdef eventbus\n") and "compdef _eventbus eventbus" in zsh
    for path, names in _paths(build_parser()):
        assert f'"{path}") echo "{" ".join(names)}"' in zsh
        assert f"case '{path}'" in fish or path == ""
        for name in names:
            assert f"-n '__eventbus_at \\'{path}\\'' -a {name} " in fish
    assert "-l interval -r -d " in fish
    assert "-l role -x -a 'full produce consume'" in fish
    assert "-l progress -l no-progress -d " in fish
