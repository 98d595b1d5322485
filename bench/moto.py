"""moto's server in a process of its own, for the benchmarks that measure S3 or DynamoDB
code paths on loopback (so its CPU is not the benchmark's), with fake credentials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.peers import free_port

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# moto's application behind a single-threaded server: its threaded one does not lock
# around an operation (DynamoDB's conditions need one at a time, as the tests run it).
_ONE_AT_A_TIME = """
import sys
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from werkzeug.serving import make_server
app = DomainDispatcherApplication(create_backend_app)
make_server("127.0.0.1", int(sys.argv[1]), app, threaded=False,
            request_handler=MotoRequestHandler).serve_forever()
"""


def start_moto(
    scratch: Path, *, one_at_a_time: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server; answers it and its endpoint once it listens."""
    port = free_port()
    if one_at_a_time:
        command = [sys.executable, "-c", _ONE_AT_A_TIME, str(port)]
    else:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with (scratch / "moto.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **FAKE_AWS_ENV}
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)
        else:
            return process, f"http://127.0.0.1:{port}"
