"""Peer brokers for the comparison benchmark: Redis Streams and RabbitMQ Streams on loopback.

Each peer is installed from the system's packages when missing (``apt-get``, as root; the
package's own service is kept from starting), started in the foreground as a child of this
process with every listener bound to 127.0.0.1 and its files in a scratch directory, and
stopped afterwards by the PID it was given (RabbitMQ's port mapper too, on its own port).

- Redis: ``appendonly yes`` with ``appendfsync always``, so that an ``XADD`` is answered only
  after its append-only-file write was fsync'd (Redis fsyncs once per event-loop turn, so a
  pipeline of commands shares one fsync: its group commit).
- RabbitMQ (3.9+): the ``rabbitmq_stream`` plugin; the AMQP, stream and distribution
  listeners and the Erlang port mapper all on loopback (``RABBITMQ_NODE_IP_ADDRESS``,
  ``stream.listeners.tcp.1``, ``ERL_EPMD_ADDRESS`` and ``-kernel inet_dist_use_interface``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

POLICY_RC = Path("/usr/sbin/policy-rc.d")
RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBIT_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


class PeerUnavailableError(RuntimeError):
    """A peer could not be installed or started; the report says so instead of a number."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerUnavailableError(f"the peer exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise PeerUnavailableError(f"nothing listens on port {port} after {deadline_s:.0f} s")


@contextlib.contextmanager
def _services_kept_down() -> Iterator[None]:
    """While packages install, their services must not start (they would listen on every
    interface): Debian asks ``policy-rc.d``, and exit code 101 means "do not"."""
    if POLICY_RC.exists():
        yield
        return
    POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
    POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC.unlink(missing_ok=True)


def ensure_installed(binary: str | Path, package: str) -> None:
    """Install ``package`` with apt-get when ``binary`` is missing."""
    if Path(binary).is_file() or shutil.which(str(binary)):
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise PeerUnavailableError(f"{package} is not installed and cannot be (needs root apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _services_kept_down():
        for args in ([apt, "update", "-q"], [apt, "install", "-y", "-q", package]):
            done = subprocess.run(args, env=env, capture_output=True, check=False, timeout=900)
            if done.returncode != 0 and args[1] == "install":
                tail = done.stderr.decode(errors="replace")[-500:]
                raise PeerUnavailableError(f"apt-get install {package} failed: {tail}")
    if not (Path(binary).is_file() or shutil.which(str(binary))):
        raise PeerUnavailableError(f"{package} installed but {binary} is not there")


def _stop(process: subprocess.Popen[bytes] | None, timeout_s: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RedisPeer:
    """``redis-server`` with the append-only file fsync'd on every write."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisPeer:
        ensure_installed("redis-server", "redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = (self.directory / "redis.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--bind", "127.0.0.1",
                    "--port", str(self.port),
                    "--protected-mode", "yes",
                    "--dir", str(self.directory),
                    "--appendonly", "yes",
                    "--appendfsync", "always",
                    "--save", "",
                    "--daemonize", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        wait_for_port(self.port, 30, self.process)
        return self

    def version(self) -> str:
        out = subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out.split(" v=")[1].split()[0] if " v=" in out else out.strip()

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class RabbitStreamPeer:
    """A RabbitMQ node of its own (name, ports, files) with the stream plugin, on loopback."""

    directory: Path
    stream_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    node: str = ""

    def start(self, timeout_s: float = 120) -> RabbitStreamPeer:
        ensure_installed(RABBIT_SERVER, "rabbitmq-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        amqp_port, dist_port, epmd_port = free_port(), free_port(), free_port()
        self.stream_port = free_port()
        self.node = f"bench{os.getpid()}@localhost"
        config = self.directory / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.1 = 127.0.0.1:{amqp_port}\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{self.stream_port}\n"
            "stream.advertised_host = 127.0.0.1\n"
            f"stream.advertised_port = {self.stream_port}\n"
        )
        plugins = self.directory / "enabled_plugins"
        plugins.write_text("[rabbitmq_stream].\n")
        self.env = {
            **os.environ,
            "HOME": str(self.directory),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbit.pid"),
            "RABBITMQ_LOGS": "-",
        }
        log = (self.directory / "rabbit.log").open("wb")
        try:
            self.process = subprocess.Popen(
                [str(RABBIT_SERVER)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        wait_for_port(self.stream_port, timeout_s, self.process)
        return self

    def version(self) -> str:
        out = subprocess.run(
            [
                shutil.which("dpkg-query") or "/usr/bin/dpkg-query",
                "-W",
                "-f=${Version}",
                "rabbitmq-server",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out.strip() or "unknown"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [str(RABBIT_CTL), "-n", self.node, "stop"],
                env=self.env,
                capture_output=True,
                check=False,
                timeout=60,
            )
        _stop(self.process)
        # The node started its own port mapper on its own port: stop that one too.
        epmd = shutil.which("epmd")
        if epmd and self.env:
            subprocess.run([epmd, "-kill"], env=self.env, capture_output=True, check=False)
