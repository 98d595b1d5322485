"""Real servers for tests: the app on a loopback socket, and `eventbus serve` processes."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parent.parent


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
                    *self.args,
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
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
