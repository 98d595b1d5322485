"""DynamoDB for tests: moto's server on loopback, answering one request at a time.

moto's threaded server does not lock around an operation, so two transactions sent at once
could both pass their conditions; DynamoDB itself never lets that happen. Serving requests
one after another gives the conditions the meaning they have in DynamoDB (each call about
2 to 3 ms here), which the conformance suite's races rely on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from partitions.catalog_dynamodb.tables import TableNames
from tests.s3 import FAKE_AWS_ENV


@contextlib.contextmanager
def dynamodb_server() -> Iterator[str]:
    """moto's server, single-threaded, on a free loopback port; yields its URL. Fake
    credentials are set in the environment while it runs."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    previous = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-dynamodb", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        thread.join()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def new_table_names() -> TableNames:
    """Tables of their own for one test: a fresh prefix."""
    return TableNames.from_prefix(f"eventbus-test-{uuid.uuid4().hex[:12]}")
