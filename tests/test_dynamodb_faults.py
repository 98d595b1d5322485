"""The DynamoDB store against the fault proxy: what DynamoDB may do to a write (throttle it,
cancel it for a conflict, fail with a 500 before or after making it, make it and lose the
answer) never shows as a double effect or a wrong answer. Each operation that changes
counters or lineage (creating a topic, a split, a merge, a usage flush) is run with its
transaction meeting each fault, then checked against a second store that reads moto
directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aioboto3
import pytest

from partitions.catalog import HOUR_MS, LineageChange, UsageCounters, UsageRecord
from partitions.catalog_dynamodb import DynamoDbCatalog, create_tables
from partitions.errors import (
    CatalogAccessDeniedError,
    CatalogTablesMissingError,
    CatalogUnavailableError,
    InvalidInputError,
)
from tests.dynamodb import DynamoDbFaultProxy, Fault, new_table_names

TENANT = "acme"
TOPIC = "orders"
HALF = 2**63
# Every write of these operations is a transaction.
TRANSACTION = "TransactWriteItems"

# Faults after which the store must answer as if nothing had gone wrong.
RETRIED = [Fault.THROTTLE, Fault.OVER_CAPACITY, Fault.CONFLICT, Fault.SERVER_ERROR]
APPLIED = [Fault.APPLIED_SERVER_ERROR, Fault.DROP_ANSWER]


@dataclass
class Stores:
    proxy: DynamoDbFaultProxy
    faulty: DynamoDbCatalog  # through the proxy
    direct: DynamoDbCatalog  # straight to moto: what is really stored


@pytest.fixture
async def stores(dynamodb_endpoint: str) -> AsyncIterator[Stores]:
    names = new_table_names()
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await create_tables(client, names)
    proxy = await DynamoDbFaultProxy(dynamodb_endpoint).start()
    faulty = await DynamoDbCatalog.open(names, endpoint_url=proxy.url, timeout_s=10.0)
    direct = await DynamoDbCatalog.open(names, endpoint_url=dynamodb_endpoint)
    await direct.create_tenant(TENANT)
    try:
        yield Stores(proxy, faulty, direct)
    finally:
        await faulty.close()
        await direct.close()
        await proxy.close()


async def _faulted(stores: Stores, fault: Fault, work: Callable[[], Awaitable[object]]) -> object:
    """Run ``work`` with its first transaction meeting ``fault``; it must have met it."""
    stores.proxy.inject(fault, TRANSACTION)
    answer = await work()
    assert stores.proxy.given[(TRANSACTION, fault)] == 1, stores.proxy.calls
    return answer


async def _active(stores: Stores) -> int:
    return (await stores.direct.tenant_counts(TENANT)).active_partitions


@pytest.mark.parametrize("fault", RETRIED + APPLIED)
async def test_create_topic_happens_once(stores: Stores, fault: Fault) -> None:
    answer = await _faulted(
        stores, fault, lambda: stores.faulty.create_topic(TENANT, TOPIC, {"retention_ms": 1000})
    )
    topic, partition = answer  # type: ignore[misc]
    assert topic.name == TOPIC and topic.config == {"retention_ms": 1000}
    assert partition.partition_id == 0
    stored = await stores.direct.get_topic(TENANT, TOPIC)
    assert stored.incarnation == topic.incarnation
    assert [t.name for t in await stores.direct.list_topics(TENANT)] == [TOPIC]
    counts = await stores.direct.tenant_counts(TENANT)
    assert (counts.topics, counts.active_partitions) == (1, 1)


@pytest.mark.parametrize("fault", RETRIED + APPLIED)
async def test_a_split_happens_once(stores: Stores, fault: Fault) -> None:
    await stores.direct.create_topic(TENANT, TOPIC, {})
    change = await _faulted(
        stores,
        fault,
        lambda: stores.faulty.split_partition(TENANT, TOPIC, 0, at=HALF, end_offset=10),
    )
    assert isinstance(change, LineageChange)
    assert [p.partition_id for p in change.sealed] == [0]
    assert [p.partition_id for p in change.created] == [1, 2]
    partitions = await stores.direct.list_partitions(TENANT, TOPIC)
    assert [(p.partition_id, p.active) for p in partitions] == [(0, False), (1, True), (2, True)]
    assert partitions[0].end_offset == 10
    assert await _active(stores) == 2


@pytest.mark.parametrize("fault", RETRIED + APPLIED)
async def test_a_merge_happens_once(stores: Stores, fault: Fault) -> None:
    await stores.direct.create_topic(TENANT, TOPIC, {})
    await stores.direct.split_partition(TENANT, TOPIC, 0, at=HALF, end_offset=10)
    change = await _faulted(
        stores,
        fault,
        lambda: stores.faulty.merge_partitions(TENANT, TOPIC, [1, 2], end_offsets=[3, 4]),
    )
    assert isinstance(change, LineageChange)
    assert sorted(p.partition_id for p in change.sealed) == [1, 2]
    assert [p.partition_id for p in change.created] == [3]
    partitions = await stores.direct.list_partitions(TENANT, TOPIC)
    assert [p.partition_id for p in partitions if p.active] == [3]
    assert len(partitions) == 4
    assert await _active(stores) == 1


@pytest.mark.parametrize("fault", RETRIED + APPLIED)
async def test_a_usage_flush_counts_once(stores: Stores, fault: Fault) -> None:
    hour = 500 * HOUR_MS
    deltas = [
        UsageRecord(TENANT, hour, UsageCounters(requests=3, records_in=5, bytes_in=70)),
        UsageRecord(TENANT, hour + HOUR_MS, UsageCounters(requests=1)),
        UsageRecord(TENANT, hour, UsageCounters(requests=2)),  # the same row: adds up
    ]
    await stores.direct.add_usage([UsageRecord(TENANT, hour, UsageCounters(requests=10))])
    await _faulted(stores, fault, lambda: stores.faulty.add_usage(deltas))
    rows = await stores.direct.list_usage(hour, hour + 2 * HOUR_MS, tenant=TENANT)
    assert [(r.hour_ms, r.counters) for r in rows] == [
        (hour, UsageCounters(requests=15, records_in=5, bytes_in=70)),
        (hour + HOUR_MS, UsageCounters(requests=1)),
    ]


async def test_faults_in_a_row_are_retried_within_the_deadline(stores: Stores) -> None:
    """Throttling, a conflict, a 500, throttling again: still one topic, one answer."""
    for fault in (Fault.THROTTLE, Fault.CONFLICT, Fault.SERVER_ERROR, Fault.OVER_CAPACITY):
        stores.proxy.inject(fault, TRANSACTION)
    topic, _ = await stores.faulty.create_topic(TENANT, TOPIC, {})
    assert stores.proxy.pending == 0
    assert (await stores.direct.get_topic(TENANT, TOPIC)).incarnation == topic.incarnation
    assert (await stores.direct.tenant_counts(TENANT)).topics == 1


async def test_a_stalled_dynamodb_is_unavailable_within_the_deadline(
    stores: Stores, dynamodb_endpoint: str
) -> None:
    names = stores.direct.dynamo.names
    quick = await DynamoDbCatalog.open(names, endpoint_url=stores.proxy.url, timeout_s=1.0)
    try:
        stores.proxy.inject(Fault.STALL, times=None)
        loop = asyncio.get_running_loop()
        for call in (
            lambda: quick.get_topic(TENANT, TOPIC),
            lambda: quick.create_topic(TENANT, TOPIC, {}),
            lambda: quick.add_usage([UsageRecord(TENANT, 0, UsageCounters(requests=1))]),
        ):
            started = loop.time()
            with pytest.raises(CatalogUnavailableError):
                await call()
            assert loop.time() - started < 3.0
        stores.proxy.clear()
        # Nothing stalled was applied, and the store works again at once.
        assert await stores.direct.list_topics(TENANT) == []
        await quick.create_topic(TENANT, TOPIC, {})
        assert [t.name for t in await stores.direct.list_topics(TENANT)] == [TOPIC]
    finally:
        await quick.close()


# --- refusals no retry mends ---------------------------------------------------------------


async def test_refused_credentials_are_the_catalog_out_of_service_at_once(stores: Stores) -> None:
    stores.proxy.inject(Fault.ACCESS_DENIED, "GetItem", times=None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(CatalogAccessDeniedError) as refused:
        await stores.faulty.get_tenant(TENANT)
    assert asyncio.get_running_loop().time() - started < 2.0  # not retried to the deadline
    assert refused.value.status == 503 and refused.value.retriable
    stores.proxy.clear()
    assert (await stores.faulty.get_tenant(TENANT)).name == TENANT


async def test_a_table_gone_while_serving_is_said_to_be_missing(
    stores: Stores, dynamodb_endpoint: str
) -> None:
    async with aioboto3.Session().client("dynamodb", endpoint_url=dynamodb_endpoint) as client:
        await client.delete_table(TableName=stores.direct.dynamo.names.usage)
    with pytest.raises(CatalogTablesMissingError) as missing:
        await stores.faulty.list_usage(0, HOUR_MS, tenant=TENANT)
    assert "create-tables" in missing.value.message and missing.value.status == 503


async def test_an_item_past_dynamodb_s_limit_is_the_caller_s_input(stores: Stores) -> None:
    with pytest.raises(InvalidInputError) as refused:
        await stores.faulty.create_topic(TENANT, TOPIC, {"note": "x" * 500_000})
    assert refused.value.status == 400
    assert await stores.direct.list_topics(TENANT) == []  # refused whole
