"""Every DynamoDB call of the catalog goes through :class:`Dynamo`: one retry policy, one
deadline, and the rule for writes whose outcome is unknown.

- **Retried**: throttling, transaction conflicts (a transaction cancelled only for those),
  server errors (5xx), connections that could not be made (refused, timed out: nothing
  was sent) and broken ones, with exponential backoff and full jitter.
  botocore's own retries are off, so that this is the one policy.
- **Deadline**: a call, all its retries included, ends within ``timeout_s``; one that does
  not, or whose retries run out, raises :class:`~partitions.errors.CatalogUnavailableError`
  (503, retriable). Nothing ever waits on DynamoDB without bound.
- **Unknown outcomes**: a write that timed out, met a server error or lost its connection
  after sending may have been applied. Sent again blindly, a create would find itself and
  report a conflict, and an ``ADD`` would count twice; so such a write is resolved first by
  its ``landed`` read (each write says how to tell that it happened: its operation id
  read back, the state it set), and sent again only if it did not land. moto does not
  honour ``ClientRequestToken``, so that is not relied on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aioboto3
import aiohttp
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from partitions.catalog_dynamodb.tables import TableNames
from partitions.errors import (
    CatalogAccessDeniedError,
    CatalogTablesMissingError,
    CatalogUnavailableError,
    InvalidInputError,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0

_THROTTLES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
# Reasons in a cancelled transaction that say "try again", not "refused".
_RETRY_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)

# The calls that read or write items, and can say what capacity they consumed.
_ITEM_OPERATIONS = frozenset(
    {
        "get_item",
        "put_item",
        "update_item",
        "delete_item",
        "query",
        "scan",
        "batch_get_item",
        "batch_write_item",
        "transact_write_items",
    }
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class ConditionFailed(Exception):
    """A conditional write's condition did not hold: nothing changed."""


class TransactionRefused(Exception):
    """A transaction was cancelled by its conditions: nothing changed. ``reasons`` holds one
    code per action, in order (``"None"`` for those that were not the cause)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(f"transaction cancelled: {reasons}")
        self.reasons = reasons

    def failed(self, index: int) -> bool:
        return index < len(self.reasons) and self.reasons[index] == "ConditionalCheckFailed"


class _NotApplied(Exception):
    """Throttled, or cancelled for a conflict: certainly not applied, so sent again."""


class _UnknownOutcome(Exception):
    """A write was sent and no answer came back: it may or may not have been applied."""


def wire(value: Any) -> dict[str, Any]:
    """One value as DynamoDB's typed attribute value."""
    return dict(_serializer.serialize(value))


def item(**attributes: Any) -> dict[str, Any]:
    """An item (or a key) from plain values; ``None`` values are left out."""
    return {name: wire(value) for name, value in attributes.items() if value is not None}


def values(**names: Any) -> dict[str, Any]:
    """ExpressionAttributeValues from plain values: ``values(v=1)`` is ``{":v": ...}``."""
    return {f":{name}": wire(value) for name, value in names.items()}


def plain(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An item as plain values: numbers as ints, sets and lists as lists."""
    return {name: _plain(_deserializer.deserialize(value)) for name, value in raw.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# DynamoDB refusing the caller: credentials or permissions, which no retry mends.
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
    }
)


def _refusal(what: str, code: str, exc: ClientError) -> Exception | None:
    """What a refusal that no retry mends becomes: a missing table or refused credentials
    are the catalog out of service (503, said plainly), an item past DynamoDB's 400 KB is
    the caller's input; anything else (``None``) is raised as it came: a bug of ours."""
    message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    if code == "ResourceNotFoundException":
        return CatalogTablesMissingError(
            f"{what}: a catalog table does not exist ({message}); create the tables with "
            "`eventbus catalog create-tables dynamodb://PREFIX`"
        )
    if code in _DENIED:
        return CatalogAccessDeniedError(
            f"{what}: DynamoDB refused the catalog's credentials ({code}: {message})"
        )
    if code == "ValidationException" and "size" in message.lower() and "exceed" in message:
        return InvalidInputError(
            f"{what}: too large for the catalog (DynamoDB keeps at most 400 KB an item)"
        )
    return None


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


@dataclass(slots=True)
class CallStats:
    """What one kind of call cost so far: how many, and the capacity units DynamoDB
    reported (reads and writes together, as ``CapacityUnits`` says)."""

    calls: int = 0
    units: float = 0.0


@dataclass(slots=True)
class Usage:
    """Calls and consumed capacity by what they were for, to measure what each costs."""

    by_call: dict[str, CallStats] = field(default_factory=dict)

    def add(self, what: str, answer: Mapping[str, Any]) -> None:
        stats = self.by_call.setdefault(what, CallStats())
        stats.calls += 1
        consumed = answer.get("ConsumedCapacity")
        for one in consumed if isinstance(consumed, list) else [consumed] if consumed else []:
            stats.units += float(one.get("CapacityUnits", 0) or 0)


class Dynamo:
    """One aioboto3 DynamoDB client and the tables of one installation."""

    def __init__(
        self,
        client: Any,
        names: TableNames,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = 8,
        backoff_s: tuple[float, float] = (0.02, 1.0),
        endpoint_url: str | None = None,
    ) -> None:
        self.client = client
        self.names = names
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.endpoint_url = endpoint_url
        self.retries = 0
        self.usage = Usage()
        self._exit: contextlib.AsyncExitStack | None = None

    @classmethod
    async def open(
        cls,
        names: TableNames,
        *,
        endpoint_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **settings: Any,
    ) -> Dynamo:
        config = Config(
            connect_timeout=min(timeout_s, 5.0),
            read_timeout=timeout_s,
            retries={"total_max_attempts": 1},
            max_pool_connections=32,
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            aioboto3.Session().client("dynamodb", endpoint_url=endpoint_url, config=config)
        )
        self = cls(client, names, timeout_s=timeout_s, endpoint_url=endpoint_url, **settings)
        self._exit = stack
        return self

    async def close(self) -> None:
        if self._exit is not None:
            await self._exit.aclose()
            self._exit = None

    @property
    def where(self) -> str:
        where = f"DynamoDB tables {self.names.catalog} and its siblings"
        return where if self.endpoint_url is None else f"{where} at {self.endpoint_url}"

    def table(self, kind: str) -> str:
        return self.names.of(kind)

    # --- the retry loop -------------------------------------------------------------------------

    async def _attempts(
        self,
        what: str,
        send: Callable[[], Awaitable[dict[str, Any]]],
        landed: Callable[[], Awaitable[bool]] | None,
        write: bool,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        delay = self.backoff_s[0]
        failure: BaseException | None = None
        for number in range(1, self.max_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                try:
                    async with asyncio.timeout(remaining):
                        answer = await send()
                except TimeoutError:
                    raise _UnknownOutcome(f"no answer within {self.timeout_s} s") from None
                except ClientError as exc:
                    code, status = _code(exc)
                    if code in _THROTTLES:
                        raise _NotApplied(exc) from exc  # sent again below
                    if code == "TransactionCanceledException":
                        reasons = [
                            str(r.get("Code", "None"))
                            for r in exc.response.get("CancellationReasons", [])
                        ]
                        if any(r in _RETRY_REASONS for r in reasons):
                            # A conflict, not a refusal: not applied, sent again.
                            raise _NotApplied(exc) from exc
                        raise TransactionRefused(reasons) from None
                    if code == "ConditionalCheckFailedException":
                        raise ConditionFailed(str(exc)) from None
                    if status >= 500:
                        raise _UnknownOutcome(f"DynamoDB answered {status} {code}") from exc
                    refusal = _refusal(what, code, exc)
                    if refusal is None:
                        raise
                    raise refusal from exc
                except BotoConnectionError as exc:
                    # No connection was made: nothing was sent, sent again below.
                    raise _NotApplied(exc) from exc
                except (HTTPClientError, aiohttp.ClientError, OSError) as exc:
                    raise _UnknownOutcome(f"connection failed: {exc}") from exc
            except _NotApplied as exc:
                failure = exc.__cause__ or exc
            except _UnknownOutcome as exc:
                failure = exc
                if write and landed is not None:
                    # Ask whether it happened before sending it again.
                    try:
                        async with asyncio.timeout(max(0.001, deadline - loop.time())):
                            if await landed():
                                return {}
                    except (TimeoutError, CatalogUnavailableError) as unknown:
                        raise CatalogUnavailableError(
                            f"{what} on {self.where}: {exc}; whether it took effect is "
                            "unknown until the catalog can be reached"
                        ) from unknown
            else:
                self.usage.add(what, answer)
                return answer
            if number == self.max_attempts:
                break
            self.retries += 1
            wait = random.uniform(0, delay)  # noqa: S311 - jitter, not secrets
            if loop.time() + wait >= deadline:
                break
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.backoff_s[1])
        raise CatalogUnavailableError(
            f"{what} on {self.where} did not succeed within {self.timeout_s} s: {failure}"
        ) from failure

    async def call(self, what: str, operation: str, **params: Any) -> dict[str, Any]:
        """A read, or a write that is safe to send twice."""
        method = getattr(self.client, operation)
        if operation in _ITEM_OPERATIONS:
            params["ReturnConsumedCapacity"] = "TOTAL"

        async def send() -> dict[str, Any]:
            return dict(await method(**params))

        return await self._attempts(what, send, None, write=False)

    async def write(
        self,
        what: str,
        operation: str,
        *,
        landed: Callable[[], Awaitable[bool]] | None,
        **params: Any,
    ) -> dict[str, Any]:
        """A write (``put_item``, ``update_item``, ``delete_item``): its failed condition
        raises :class:`ConditionFailed`; an unknown outcome is resolved by ``landed``
        (``None``: the write is safe to send again as it is)."""
        method = getattr(self.client, operation)

        async def send() -> dict[str, Any]:
            return dict(await method(ReturnConsumedCapacity="TOTAL", **params))

        return await self._attempts(what, send, landed, write=True)

    async def transact(
        self,
        what: str,
        actions: list[dict[str, Any]],
        *,
        landed: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        """``TransactWriteItems`` of at most 100 actions: all or nothing. A cancellation by
        conditions raises :class:`TransactionRefused` with a reason per action."""
        if not 0 < len(actions) <= 100:
            raise ValueError(f"a transaction takes 1 to 100 actions, not {len(actions)}")

        async def send() -> dict[str, Any]:
            return dict(
                await self.client.transact_write_items(
                    TransactItems=actions, ReturnConsumedCapacity="TOTAL"
                )
            )

        await self._attempts(what, send, landed, write=True)

    # --- reads ----------------------------------------------------------------------------------

    async def get(self, what: str, kind: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """One item, read strongly consistent, as plain values; ``None`` if absent."""
        answer = await self.call(
            what, "get_item", TableName=self.table(kind), Key=dict(key), ConsistentRead=True
        )
        found = answer.get("Item")
        return None if found is None else plain(found)

    async def query(
        self,
        what: str,
        kind: str,
        *,
        limit: int | None = None,
        index: str | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """Every item a query finds (following pages), as plain values; at most ``limit``.
        Queries of the table itself read strongly consistent; of an index, eventually."""
        out: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            more: dict[str, Any] = dict(params)
            if index is None:
                more["ConsistentRead"] = True
            else:
                more["IndexName"] = index
            if start is not None:
                more["ExclusiveStartKey"] = start
            if limit is not None:
                more["Limit"] = limit - len(out)
            answer = await self.call(what, "query", TableName=self.table(kind), **more)
            out.extend(plain(found) for found in answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if start is None or (limit is not None and len(out) >= limit):
                return out

    async def scan(self, what: str, kind: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a table a scan finds (following pages), as plain values."""
        out: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            more = dict(params)
            if start is not None:
                more["ExclusiveStartKey"] = start
            answer = await self.call(
                what, "scan", TableName=self.table(kind), ConsistentRead=True, **more
            )
            out.extend(plain(found) for found in answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if start is None:
                return out

    async def batch_get(
        self, what: str, kind: str, keys: Iterable[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The items of ``keys`` that exist (100 a request, unprocessed ones asked again),
        in no particular order."""
        pending = [dict(k) for k in keys]
        out: list[dict[str, Any]] = []
        table = self.table(kind)
        while pending:
            chunk, pending = pending[:100], pending[100:]
            ask: dict[str, Any] = {table: {"Keys": chunk, "ConsistentRead": True}}
            while ask:
                answer = await self.call(what, "batch_get_item", RequestItems=ask)
                out.extend(plain(found) for found in answer.get("Responses", {}).get(table, []))
                ask = answer.get("UnprocessedKeys") or {}
        return out

    async def delete_all(self, what: str, kind: str, keys: Iterable[Mapping[str, Any]]) -> None:
        """Delete the items of ``keys`` (25 a request, unprocessed ones sent again). Safe to
        repeat: deleting what is gone changes nothing."""
        pending = [dict(k) for k in keys]
        table = self.table(kind)
        while pending:
            chunk, pending = pending[:25], pending[25:]
            ask: dict[str, Any] = {table: [{"DeleteRequest": {"Key": k}} for k in chunk]}
            while ask:
                answer = await self.call(what, "batch_write_item", RequestItems=ask)
                ask = answer.get("UnprocessedItems") or {}
