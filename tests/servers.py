"""Real servers for tests: the app on a loopback socket, and `eventbus serve` processes."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Clocks
from tests.clocks import QUOTA_CLOCK_FILE_ENV, USAGE_CLOCK_FILE_ENV

ROOT = Path(__file__).resolve().parent.parent

# EVENTBUS_TEST_WORKERS=N runs every server the suite starts as `eventbus serve --workers N`
# (real worker processes); unset or 0, as one process (`--workers 0`).
WORKERS = int(os.environ.get("EVENTBUS_TEST_WORKERS", "0") or 0)


def run_until_killed(
    module: str,
    args: Sequence[str],
    *,
    ready: bytes,
    prefix: str,
    rng: random.Random,
    kill_after: tuple[float, float],
) -> list[str]:
    """Run ``python -m module args``, wait for its ``ready`` line, SIGKILL it at a random
    moment within ``kill_after`` seconds, and answer the whole lines it printed that start
    with ``prefix`` (a line cut by the kill was never completely reported).

    Everything is read with os.read on the raw descriptor, so no bytes hide in a buffer.
    """
    with subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as child:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        chunks: list[bytes] = []
        while ready not in b"".join(chunks):
            data = os.read(fd, 1 << 16)
            assert data, "the child exited before it was ready"
            chunks.append(data)
        deadline = time.monotonic() + rng.uniform(*kill_after)
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.01)[0]:
                chunks.append(os.read(fd, 1 << 16))
        child.send_signal(signal.SIGKILL)
        while data := os.read(fd, 1 << 16):
            chunks.append(data)
        child.wait()
    lines = b"".join(chunks).decode().split("\n")[:-1]
    return [line for line in lines if line.startswith(prefix)]


def read_credentials(data_dir: Path) -> dict[str, str]:
    out = {}
    for line in (data_dir / "credentials").read_text().splitlines():
        name, _, value = line.partition("=")
        out[name] = value
    return out


@dataclass
class ServerProcess:
    """An `eventbus serve` child process; stop it with :meth:`stop` or :meth:`kill`."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    stderr_path: Path | None = None
    # The module run as ``python -m``: a test may wrap the server in a child of its own.
    module: str = "gateway.cli"
    # False: no EVENTBUS_ setting of the test's environment reaches the server.
    inherit_settings: bool = True

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}-stderr.log"
        stderr = self.stderr_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    "0",
                    *([] if "--workers" in self.args else ["--workers", str(WORKERS)]),
                    *self.args,
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**self._environment(), "PYTHONPATH": str(ROOT), **self.env},
            )
        finally:
            stderr.close()
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"the server did not start: {self.stderr()}")
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 4096)
                line += chunk
        text = line.decode().strip()
        assert text.startswith("eventbus listening on "), text
        self.url = text.removeprefix("eventbus listening on ")
        return self

    def _environment(self) -> dict[str, str]:
        if self.inherit_settings:
            return dict(os.environ)
        return {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}

    def stderr(self) -> str:
        return (
            self.stderr_path.read_text() if self.stderr_path and self.stderr_path.exists() else ""
        )

    @property
    def keys(self) -> dict[str, str]:
        return read_credentials(self.data_dir)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: answers the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        finally:
            self._close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


# Clocks a test moves, shared with server processes through a file (see FakeClock.share):
# a server given one runs as tests.clocked_server, which reads them.
CLOCK_FILES = {"quota_clock": QUOTA_CLOCK_FILE_ENV, "usage_clock_ms": USAGE_CLOCK_FILE_ENV}
CLOCKED_SERVER = "tests.clocked_server"


def split_clocks(settings: dict[str, Any]) -> tuple[Clocks, dict[str, Any]]:
    """The clocks among a test's server settings (``quota_clock``, ``usage_clock_ms``), and
    the settings without them."""
    rest = dict(settings)
    defaults = Clocks()
    quota = rest.pop("quota_clock", None)
    usage = rest.pop("usage_clock_ms", None)
    clocks = Clocks(quota_s=quota or defaults.quota_s, usage_ms=usage or defaults.usage_ms)
    return clocks, rest


def serve_flags(settings: dict[str, Any], scratch: Path) -> tuple[list[str], dict[str, str]]:
    """``eventbus serve`` flags and environment for ServerConfig settings given by name;
    a clock the test moves is shared through a file in ``scratch``."""
    args: list[str] = []
    env: dict[str, str] = {}
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if name in CLOCK_FILES:
            path = scratch / f"{scratch.name}-{name}"
            value.share(path)
            env[CLOCK_FILES[name]] = str(path)
        elif name == "admin_key":
            env["EVENTBUS_ADMIN_KEY"] = str(value)
        elif name == "default_plan":
            for price, amount in value.to_json().items():
                if price != "name" and amount is not None:
                    args += ["--default-" + price.replace("_", "-"), str(amount)]
        elif name == "default_quotas":
            for quota, limit in value.to_json().items():
                if limit is not None:
                    args += ["--default-" + quota.replace("_", "-"), str(limit)]
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args, env


class ProcessApp:
    """What ``Api.server`` is when the suite runs servers as worker processes: the process,
    its address, and no in-process internals (tests that need them are single-process)."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        parts = urlsplit(process.url)
        self.host = parts.hostname
        self.port = parts.port

    @property
    def app(self) -> Any:
        raise RuntimeError("in-process internals: mark this test single_process")

    async def close(self) -> None:
        code = await asyncio.to_thread(self.process.stop)
        assert code == 0, f"the server exited with {code}: {self.process.stderr()[-2000:]}"


async def start_process(data_dir: Path, settings: dict[str, Any]) -> ProcessApp:
    args, env = serve_flags(settings, data_dir.parent)
    clocked = any(name in settings for name in CLOCK_FILES)
    process = ServerProcess(
        data_dir, args=args, env=env, module=CLOCKED_SERVER if clocked else "gateway.cli"
    )
    await asyncio.to_thread(process.start)
    return ProcessApp(process)
