"""Running the ``eventbus`` command as a user does: a subprocess against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from typing import Any

from tests.servers import ROOT, ServerProcess


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without any EVENTBUS_ setting of the one running the tests."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    return {**clean, "PYTHONPATH": str(ROOT), **(extra or {})}


def eventbus(
    server: ServerProcess,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    connect: Sequence[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``eventbus ARGS`` against ``server``; by default it finds the key in the data dir."""
    if connect is None:
        connect = ["--url", server.url, "--data-dir", str(server.data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, *connect],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=client_env(env),
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    """The output of a command that must have succeeded."""
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def api(server: ServerProcess, *args: str, **options: Any) -> Any:
    """The JSON a command prints with ``--json``."""
    return json.loads(ok(eventbus(server, *args, "--json", **options)))


def text(server: ServerProcess, *args: str, **options: Any) -> str:
    """What a command prints for people (its default)."""
    return ok(eventbus(server, *args, **options)).decode()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Kill a consumer a test left running and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def split_first_partition(server: ServerProcess, topic: str) -> None:
    """Split partition 0 once, so that keys really spread over two partitions."""
    split = urllib.request.Request(  # noqa: S310 - an http URL on loopback
        f"{server.url}/v1/topics/{topic}/partitions/0/split",
        method="POST",
        headers={"Authorization": f"Bearer {server.keys['EVENTBUS_API_KEY']}"},
    )
    with urllib.request.urlopen(split, timeout=30) as answer:  # noqa: S310 - loopback
        assert answer.status == 200
