"""DynamoDB for tests: moto's server on loopback, answering one request at a time, and a
proxy in front of it that misbehaves as DynamoDB can (:class:`DynamoDbFaultProxy`).

moto's threaded server does not lock around an operation, so two transactions sent at once
could both pass their conditions; DynamoDB itself never lets that happen. Serving requests
one after another gives the conditions the meaning they have in DynamoDB (each call about
2 to 3 ms here), which the conformance suite's races rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

import aioboto3
import aiohttp
from aiohttp import web
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_dynamodb.tables import TableNames, create_tables
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


@contextlib.asynccontextmanager
async def fresh_dynamo(endpoint: str) -> AsyncIterator[Dynamo]:
    """A :class:`Dynamo` on tables of its own, made at ``endpoint``, closed on exit."""
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=endpoint) as client:
        await create_tables(client, names)
    dynamo = await Dynamo.open(names, endpoint_url=endpoint, timeout_s=5.0)
    try:
        yield dynamo
    finally:
        await dynamo.close()


# --- a proxy that misbehaves as DynamoDB can -----------------------------------------------

_TARGET_PREFIX = "DynamoDB_20120810."
_ERROR_TYPE = "com.amazonaws.dynamodb.v20120810#"
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class Fault(StrEnum):
    """What the proxy does to a call instead of passing it through."""

    # 400 ThrottlingException: not applied, to be sent again later.
    THROTTLE = "throttle"
    # 400 ProvisionedThroughputExceededException: the same, as a provisioned table says it.
    OVER_CAPACITY = "over_capacity"
    # A transaction cancelled by a conflict with another (400 TransactionCanceledException,
    # the first action's reason TransactionConflict, the others None); for a single-item
    # call, 400 TransactionConflictException. Not applied.
    CONFLICT = "conflict"
    # 400 AccessDeniedException: credentials without the permission. Not applied.
    ACCESS_DENIED = "access_denied"
    # 500 InternalServerError, without passing the call on: not applied.
    SERVER_ERROR = "server_error"
    # Passed on and applied, then answered 500 InternalServerError: DynamoDB says a 500 may
    # come after the change was made.
    APPLIED_SERVER_ERROR = "applied_server_error"
    # Passed on and applied, then the connection closes without an answer: the caller
    # cannot know whether it happened.
    DROP_ANSWER = "drop_answer"
    # Never answered and never passed on: the call waits until the caller gives up (its
    # deadline) or the proxy is cleared, which closes the connection.
    STALL = "stall"


# Faults given after the call was passed on (and applied) upstream.
_PASSED_ON = frozenset({Fault.DROP_ANSWER, Fault.APPLIED_SERVER_ERROR})


@dataclass
class _Rule:
    fault: Fault
    operation: str | None  # None: any operation
    remaining: int | None  # None: until cleared

    def matches(self, operation: str) -> bool:
        return self.operation is None or self.operation == operation


class DynamoDbFaultProxy:
    """An HTTP proxy on loopback in front of a DynamoDB endpoint (moto's), which can give
    chosen calls a :class:`Fault` instead of DynamoDB's answer.

    A call is told apart by its operation, the ``X-Amz-Target`` header without its API
    version (``TransactWriteItems``). :meth:`inject` makes the next ``times`` calls of an
    operation (of any, by default) meet a fault; rules apply in the order they were given,
    each call consuming one. :meth:`down` refuses connections (and cuts the open ones) until
    :meth:`up`, on the same port. ``calls`` lists the operations that reached the proxy,
    ``given`` counts the faults given, by operation and fault, and ``faulted`` is set at
    each.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[str] = []
        self.given: Counter[tuple[str, Fault]] = Counter()
        # Set when a fault is given (a test clears it to wait for the next one).
        self.faulted = asyncio.Event()
        self.url = ""
        self._rules: list[_Rule] = []
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    async def start(self) -> DynamoDbFaultProxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        await self.up()
        return self

    async def up(self) -> None:
        """Accept connections (again, on the same port)."""
        assert self._runner is not None
        if self._site is not None:
            return
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await self._site.start()
        self._port = self._runner.addresses[-1][1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def down(self) -> None:
        """Refuse connections, as a DynamoDB that cannot be reached: the port stops
        listening, and every open connection is cut (calls in flight get no answer)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        assert self._runner is not None and self._runner.server is not None
        for handler in self._runner.server.connections:
            if handler.transport is not None:
                handler.transport.abort()
        await _settle_transports()

    def inject(self, fault: Fault, operation: str | None = None, *, times: int | None = 1) -> None:
        """The next ``times`` calls of ``operation`` (``None``: of any; ``times=None``:
        every one until :meth:`clear`) meet ``fault``."""
        if operation is not None:
            operation = operation.removeprefix(_TARGET_PREFIX)
        if times is not None and times < 1:
            raise ValueError("times is at least 1, or None for every call")
        self._released.clear()
        self._rules.append(_Rule(fault, operation, times))

    def clear(self) -> None:
        """No more faults: every call passes, and the stalled ones are cut."""
        self._rules.clear()
        self._released.set()

    @property
    def pending(self) -> int:
        """Faults still to give (rules without a count are not counted)."""
        return sum(rule.remaining or 0 for rule in self._rules)

    async def close(self) -> None:
        self.clear()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await _settle_transports()

    def _take(self, operation: str) -> Fault | None:
        for rule in self._rules:
            if rule.matches(operation):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                return rule.fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("X-Amz-Target", "").removeprefix(_TARGET_PREFIX)
        self.calls.append(operation)
        body = await request.read()
        fault = self._take(operation)
        if fault is not None:
            self.given[(operation, fault)] += 1
            self.faulted.set()
        if fault is Fault.STALL:
            await self._released.wait()
            return _cut(request)
        if fault is not None and fault not in _PASSED_ON:
            return _error(fault, operation, body)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.post(
            self.upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        if fault is Fault.DROP_ANSWER:
            return _cut(request)  # applied upstream; the caller never hears of it
        if fault is Fault.APPLIED_SERVER_ERROR:
            return _error(Fault.SERVER_ERROR, operation, body)
        return web.Response(status=answer.status, body=data, headers=out)


async def _settle_transports() -> None:
    """Let the loop run the callbacks that finish closing aborted or closed connections: a
    transport whose close is still pending when the test's loop ends is reported unclosed
    (a ResourceWarning, an error here) when it is collected, in whichever test that is."""
    for _ in range(3):
        await asyncio.sleep(0)


def _cut(request: web.Request) -> web.StreamResponse:
    """Close the caller's connection without an answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)  # never written: the connection is gone


def _error(fault: Fault, operation: str, body: bytes) -> web.Response:
    """DynamoDB's JSON error answer for ``fault``."""
    status = 400
    if fault is Fault.THROTTLE:
        kind, text = "ThrottlingException", "Rate of requests exceeds the allowed throughput."
    elif fault is Fault.OVER_CAPACITY:
        kind = "ProvisionedThroughputExceededException"
        text = "The level of configured provisioned throughput for the table was exceeded."
    elif fault is Fault.SERVER_ERROR:
        status, kind, text = 500, "InternalServerError", "Internal server error"
    elif fault is Fault.ACCESS_DENIED:
        kind = "AccessDeniedException"
        text = f"User is not authorized to perform: dynamodb:{operation}"
    elif operation != "TransactWriteItems":
        kind, text = "TransactionConflictException", "Transaction is ongoing for the item"
    else:
        actions = len(json.loads(body or b"{}").get("TransactItems", [])) or 1
        reasons = [
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
        ]
        reasons += [{"Code": "None"}] * (actions - 1)
        codes = ", ".join(r["Code"] for r in reasons)
        answer = {
            "__type": _ERROR_TYPE + "TransactionCanceledException",
            "CancellationReasons": reasons,
            "Message": "Transaction cancelled, please refer cancellation reasons for "
            f"specific reasons [{codes}]",
        }
        return _json_error(400, "TransactionCanceledException", answer)
    return _json_error(status, kind, {"__type": _ERROR_TYPE + kind, "message": text})


def _json_error(status: int, kind: str, answer: Mapping[str, object]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(answer).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-RequestId": uuid.uuid4().hex,
            "X-Amzn-ErrorType": kind,
        },
    )
