"""The DynamoDB fault proxy itself: each fault reaches a real client (aioboto3, its own
retries off) as DynamoDB would give it, only the calls chosen meet it, and what is applied
upstream (moto) is what the fault says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from partitions.catalog_dynamodb.client import Dynamo
from partitions.catalog_dynamodb.tables import TableNames, create_tables
from partitions.errors import CatalogUnavailableError
from tests.dynamodb import DynamoDbFaultProxy, Fault, new_table_names

# Faults are seen as they come: no retry hides them.
_ONE_ATTEMPT = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)


@pytest.fixture
async def proxy(dynamodb_endpoint: str) -> AsyncIterator[DynamoDbFaultProxy]:
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def tables(dynamodb_endpoint: str) -> TableNames:
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await create_tables(client, names)
    return names


@asynccontextmanager
async def dynamodb(url: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("dynamodb", endpoint_url=url, config=_ONE_ATTEMPT) as c:
        yield c


def _key(name: str) -> dict[str, Any]:
    return {"pk": {"S": name}, "sk": {"S": "x"}}


async def _exists(url: str, table: str, name: str) -> bool:
    async with dynamodb(url) as client:
        answer = await client.get_item(TableName=table, Key=_key(name), ConsistentRead=True)
    return "Item" in answer


def _code(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


async def test_calls_pass_through_unchanged(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    async with dynamodb(proxy.url) as client:
        await client.put_item(TableName=tables.catalog, Item={**_key("a"), "v": {"N": "7"}})
        answer = await client.get_item(TableName=tables.catalog, Key=_key("a"))
    assert answer["Item"]["v"] == {"N": "7"}
    assert await _exists(dynamodb_endpoint, tables.catalog, "a")
    assert proxy.calls == ["PutItem", "GetItem"]
    assert not proxy.given


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.THROTTLE, "ThrottlingException"),
        (Fault.OVER_CAPACITY, "ProvisionedThroughputExceededException"),
        (Fault.CONFLICT, "TransactionConflictException"),
        (Fault.ACCESS_DENIED, "AccessDeniedException"),
    ],
)
async def test_refusals_are_400s_of_dynamodb_and_apply_nothing(
    proxy: DynamoDbFaultProxy,
    tables: TableNames,
    dynamodb_endpoint: str,
    fault: Fault,
    code: str,
) -> None:
    proxy.inject(fault, "PutItem", times=2)
    async with dynamodb(proxy.url) as client:
        for _ in range(2):
            with pytest.raises(ClientError) as refused:
                await client.put_item(TableName=tables.catalog, Item=_key("a"))
            assert _code(refused.value) == (code, 400)
            # Other operations are not touched.
            await client.get_item(TableName=tables.catalog, Key=_key("a"))
        assert not await _exists(dynamodb_endpoint, tables.catalog, "a")
        await client.put_item(TableName=tables.catalog, Item=_key("a"))  # the third passes
    assert await _exists(dynamodb_endpoint, tables.catalog, "a")
    assert proxy.given == {("PutItem", fault): 2}
    assert proxy.pending == 0


async def test_a_conflicting_transaction_is_cancelled_with_a_reason_per_action(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    proxy.inject(Fault.CONFLICT, "DynamoDB_20120810.TransactWriteItems")
    actions = [{"Put": {"TableName": tables.catalog, "Item": _key(n)}} for n in ("a", "b", "c")]
    async with dynamodb(proxy.url) as client:
        with pytest.raises(ClientError) as cancelled:
            await client.transact_write_items(TransactItems=actions)
        assert _code(cancelled.value) == ("TransactionCanceledException", 400)
        reasons = [r["Code"] for r in cancelled.value.response["CancellationReasons"]]
        assert reasons == ["TransactionConflict", "None", "None"]
        assert not await _exists(dynamodb_endpoint, tables.catalog, "a")
        await client.transact_write_items(TransactItems=actions)
    assert await _exists(dynamodb_endpoint, tables.catalog, "c")


async def test_a_server_error_is_a_500_and_applies_nothing(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    proxy.inject(Fault.SERVER_ERROR)  # any operation
    async with dynamodb(proxy.url) as client:
        with pytest.raises(ClientError) as failed:
            await client.put_item(TableName=tables.catalog, Item=_key("a"))
    assert _code(failed.value) == ("InternalServerError", 500)
    assert not await _exists(dynamodb_endpoint, tables.catalog, "a")


async def test_an_applied_server_error_is_a_500_after_the_change(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    proxy.inject(Fault.APPLIED_SERVER_ERROR, "PutItem")
    async with dynamodb(proxy.url) as client:
        with pytest.raises(ClientError) as failed:
            await client.put_item(TableName=tables.catalog, Item=_key("a"))
    assert _code(failed.value) == ("InternalServerError", 500)
    assert await _exists(dynamodb_endpoint, tables.catalog, "a")


async def test_a_dropped_answer_is_applied_but_never_heard(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    proxy.inject(Fault.DROP_ANSWER, "PutItem")
    async with dynamodb(proxy.url) as client:
        with pytest.raises(Exception) as lost:  # noqa: PT011 - whichever the library raises
            await client.put_item(TableName=tables.catalog, Item=_key("a"))
        assert not isinstance(lost.value, ClientError), "an answer came back"
        assert await _exists(dynamodb_endpoint, tables.catalog, "a")
        # The next call is answered again.
        await client.put_item(TableName=tables.catalog, Item=_key("b"))
    assert proxy.given == {("PutItem", Fault.DROP_ANSWER): 1}


async def test_a_stalled_call_is_never_answered_nor_applied(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    proxy.inject(Fault.STALL, times=None)
    async with dynamodb(proxy.url) as client:
        call = asyncio.ensure_future(client.put_item(TableName=tables.catalog, Item=_key("a")))
        done, _ = await asyncio.wait([call], timeout=1.0)
        assert not done, "a stalled call was answered"
        proxy.clear()  # the stalled call's connection is cut
        with pytest.raises(Exception) as cut:  # noqa: PT011 - whichever the library raises
            await asyncio.wait_for(call, 5)
        assert not isinstance(cut.value, (ClientError, TimeoutError))
        assert not await _exists(dynamodb_endpoint, tables.catalog, "a")
        await client.put_item(TableName=tables.catalog, Item=_key("a"))
    assert await _exists(dynamodb_endpoint, tables.catalog, "a")


async def test_down_refuses_connections_until_up_on_the_same_port(
    proxy: DynamoDbFaultProxy, tables: TableNames
) -> None:
    url = proxy.url
    await proxy.down()
    async with dynamodb(url) as client:
        with pytest.raises(EndpointConnectionError):
            await client.get_item(TableName=tables.catalog, Key=_key("a"))
    await proxy.up()
    assert proxy.url == url
    async with dynamodb(url) as client:
        await client.get_item(TableName=tables.catalog, Key=_key("a"))


async def test_down_cuts_calls_in_flight(proxy: DynamoDbFaultProxy, tables: TableNames) -> None:
    proxy.inject(Fault.STALL)
    async with dynamodb(proxy.url) as client:
        call = asyncio.ensure_future(client.get_item(TableName=tables.catalog, Key=_key("a")))
        await asyncio.wait_for(proxy.faulted.wait(), 5)
        await proxy.down()
        with pytest.raises(Exception) as cut:  # noqa: PT011 - whichever the library raises
            await asyncio.wait_for(call, 5)
        assert not isinstance(cut.value, (ClientError, TimeoutError))


async def test_the_catalogs_retry_policy_reads_the_faults_as_dynamodbs(
    proxy: DynamoDbFaultProxy, tables: TableNames
) -> None:
    """Throttling and conflicts are what the retry policy sends again; a call stalled past
    its deadline is the catalog being unavailable."""
    db = await Dynamo.open(tables, endpoint_url=proxy.url, timeout_s=2.0)
    try:
        proxy.inject(Fault.THROTTLE, "PutItem", times=2)
        proxy.inject(Fault.CONFLICT, "PutItem")
        await db.write("put", "put_item", landed=None, TableName=tables.catalog, Item=_key("a"))
        assert db.retries == 3
        assert await db.get("get", "catalog", _key("a")) is not None
        proxy.inject(Fault.STALL, times=None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CatalogUnavailableError):
            await db.get("get", "catalog", _key("a"))
        assert loop.time() - started < 4.0
    finally:
        proxy.clear()
        await db.close()


async def test_a_dynamodb_refusing_connections_is_unavailable_then_reached_again(
    proxy: DynamoDbFaultProxy, tables: TableNames, dynamodb_endpoint: str
) -> None:
    """Refused connections sent nothing: retried within the deadline (the write lands once
    DynamoDB is back), and past it the catalog is unavailable, never a library error."""
    db = await Dynamo.open(tables, endpoint_url=proxy.url, timeout_s=1.5)
    try:
        await proxy.down()
        with pytest.raises(CatalogUnavailableError):
            await db.get("get", "catalog", _key("a"))
        with pytest.raises(CatalogUnavailableError):
            await db.write("put", "put_item", landed=None, TableName=tables.catalog, Item=_key("a"))
        assert not await _exists(dynamodb_endpoint, tables.catalog, "a")
        write = asyncio.ensure_future(
            db.write("put", "put_item", landed=None, TableName=tables.catalog, Item=_key("b"))
        )
        await asyncio.sleep(0.3)
        await proxy.up()
        await write
        assert await _exists(dynamodb_endpoint, tables.catalog, "b")
    finally:
        await db.close()
