"""Fixtures: the gateway app served on a real loopback socket."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.config import ServerConfig
from gateway.wiring.app import create_app
from partitions.catalog_dynamodb.tables import create_tables
from partitions.catalog_url import CatalogUrl, parse_catalog_url
from tests.dynamodb import dynamodb_server, new_table_names
from tests.s3 import moto_server
from tests.servers import WORKERS, read_credentials, split_clocks, start_process

ADMIN_KEY = "ebk_test-admin-key-for-the-suite-only"


@dataclass
class Api:
    """A client bound to one server and one key."""

    session: aiohttp.ClientSession
    base: str
    key: str
    server: TestServer
    data_dir: Path

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        json: Any = None,
        data: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        extra = dict(headers or {})
        body: io.BytesIO | None = None
        if json is not None:
            body = io.BytesIO(orjson.dumps(json))
            extra.setdefault("Content-Type", "application/json")
        elif data is not None:
            # A stream, not raw bytes: aiohttp warns on raw bodies over 1 MiB.
            body = io.BytesIO(data)
        url = URL(self.base + path, encoded=True)  # as sent: '..' stays '..'
        if params:
            url = url.update_query(params)
        async with self.session.request(
            method, url, headers={**self.headers(key), **extra}, data=body
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def raw(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """A call answering the status, headers and body bytes exactly as they came (no
        decompression)."""
        url = URL(self.base + path, encoded=True)
        if params:
            url = url.update_query(params)
        async with self.session.request(
            method,
            url,
            headers={**self.headers(), "Accept-Encoding": "identity", **(headers or {})},
            # A stream only when large: aiohttp warns on raw bodies over 1 MiB.
            data=io.BytesIO(data) if data is not None and len(data) > 1 << 20 else data,
            auto_decompress=False,
        ) as response:
            return response.status, dict(response.headers), await response.read()

    def with_key(self, key: str) -> Api:
        return Api(self.session, self.base, key, self.server, self.data_dir)


# EVENTBUS_TEST_CATALOG=dynamodb runs the servers the suite starts on a DynamoDB catalog:
# moto's, one request at a time, in this process, with tables of their own for each data
# directory (a server started again on the same directory finds its catalog again).
CATALOG = os.environ.get("EVENTBUS_TEST_CATALOG", "sqlite")
_DYNAMODB: dict[str, Any] = {}


async def _dynamodb_catalog(data_dir: Path) -> CatalogUrl:
    if "url" not in _DYNAMODB:
        stack = contextlib.ExitStack()
        _DYNAMODB["stack"] = stack
        _DYNAMODB["url"] = stack.enter_context(dynamodb_server())
        _DYNAMODB["prefixes"] = {}
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = _DYNAMODB["url"]
    prefixes: dict[Path, str] = _DYNAMODB["prefixes"]
    where = data_dir.resolve()
    if where not in prefixes:
        names = new_table_names()
        async with aioboto3.Session().client("dynamodb", endpoint_url=_DYNAMODB["url"]) as client:
            await create_tables(client, names)
        prefixes[where] = names.catalog.removesuffix("-catalog")
    return parse_catalog_url(f"dynamodb://{prefixes[where]}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if "stack" in _DYNAMODB:
        _DYNAMODB.pop("stack").close()


async def start_api(data_dir: Path, **settings: Any) -> Api:
    if CATALOG == "dynamodb" and "catalog" not in settings:
        settings["catalog"] = await _dynamodb_catalog(data_dir)
    if WORKERS:
        process = await start_process(data_dir, {"admin_key": ADMIN_KEY, **settings})
        key = read_credentials(data_dir)["EVENTBUS_API_KEY"]
        return Api(aiohttp.ClientSession(), process.process.url, key, process, data_dir)  # type: ignore[arg-type]
    clocks, settings = split_clocks(settings)
    config = ServerConfig(data_dir=data_dir, admin_key=ADMIN_KEY, **settings)
    server = TestServer(create_app(config, clocks=clocks), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    key = read_credentials(data_dir)["EVENTBUS_API_KEY"]
    return Api(session, str(server.make_url("")), key, server, data_dir)


async def stop_api(api: Api) -> None:
    await api.session.close()
    await api.server.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    client = await start_api(tmp_path / "data")
    yield client
    await stop_api(client)


# The names through which a test module starts servers: with EVENTBUS_TEST_WORKERS set,
# only modules that use one run again (the others do not depend on how servers run), and
# of those not the tests marked client_side (a client's own behaviour: the command line's
# output, the console in a browser; the routes they call run again in the API's tests).
_SERVER_HELPERS = ("start_api", "start_https_api", "start_tiered", "ServerProcess", "Api")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not WORKERS:
        return
    kept, dropped = [], []
    for item in items:
        module = getattr(item, "module", None)
        uses_servers = "api" in getattr(item, "fixturenames", ()) or any(
            name in vars(module) for name in _SERVER_HELPERS if module is not None
        )
        client_side = item.get_closest_marker("client_side") is not None
        (kept if uses_servers and not client_side else dropped).append(item)
        marker = item.get_closest_marker("single_process")
        if marker is not None:
            reason = marker.args[0] if marker.args else "it looks inside the server process"
            item.add_marker(pytest.mark.skip(reason=f"single process only: {reason}"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    """moto's DynamoDB on loopback, one request at a time, for the whole session (each test
    makes its own tables), with fake credentials in the environment."""
    with dynamodb_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback for the whole session (each test makes its own bucket),
    with fake credentials in the environment."""
    with moto_server() as url:
        yield url


async def metric_values(api: Api) -> dict[str, float]:
    """Every sample of ``/metrics`` (read with the admin key), by series name and labels."""
    status, text = await api.call("GET", "/metrics", key=ADMIN_KEY)
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
