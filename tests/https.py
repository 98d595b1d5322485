"""The gateway app served over HTTPS on loopback, with a certificate from a test authority."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp.test_utils import TestServer

from gateway.config import ServerConfig
from gateway.wiring.app import create_app
from gateway.wiring.serve import tls_context
from tests.clocks import FileClock
from tests.conftest import ADMIN_KEY, Api
from tests.servers import WORKERS, read_credentials, split_clocks, start_process


class FakeClock:
    """A monotonic clock in seconds that only the test moves. Bound to a file
    (:meth:`share`), it is also the clock of server processes, which read that file."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.path: Path | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._write()

    def share(self, path: Path) -> None:
        self.path = path
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            FileClock.write(self.path, self.now)


def certificates(directory: Path, name: str = "server") -> tuple[Path, Path, ssl.SSLContext]:
    """A server certificate and key (PEM files in ``directory``) for 127.0.0.1, issued by a
    fresh test authority, and a client context that trusts only that authority."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    issued.private_key_pem.write_to_path(str(key_path))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return cert_path, key_path, client_context


async def start_https_api(data_dir: Path, **settings: Any) -> Api:
    """The app as ``eventbus serve --tls-cert --tls-key`` runs it, and a client that trusts
    only the test authority."""
    cert_path, key_path, client_context = certificates(data_dir.parent, f"{data_dir.name}-tls")
    if WORKERS:
        process = await start_process(
            data_dir,
            {"admin_key": ADMIN_KEY, "tls_cert": cert_path, "tls_key": key_path, **settings},
        )
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context))
        key = read_credentials(data_dir)["EVENTBUS_API_KEY"]
        return Api(session, process.process.url, key, process, data_dir)  # type: ignore[arg-type]
    clocks, settings = split_clocks(settings)
    config = ServerConfig(
        data_dir=data_dir, admin_key=ADMIN_KEY, tls_cert=cert_path, tls_key=key_path, **settings
    )
    server = TestServer(create_app(config, clocks=clocks), host="127.0.0.1")
    await server.start_server(ssl=tls_context(config))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context))
    key = read_credentials(data_dir)["EVENTBUS_API_KEY"]
    base = str(server.make_url(""))
    assert base.startswith("https://127.0.0.1:")
    return Api(session, base, key, server, data_dir)
