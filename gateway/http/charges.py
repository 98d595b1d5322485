"""What a tenant request pays and counts, called by the handlers as they serve it: the
produce quota and storage quota before records are written (and refunds after), the
consume quota after a read, and metering of the records in and out.

Only tenants' requests are charged: with the admin key or on a public route these do
nothing. A replayed idempotent produce appends nothing, so it pays and counts nothing but
the request.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from gateway.http.keys import METER, PRINCIPAL, TENANCY
from partitions.incoming import IncomingRecords

# The produce tokens a request took for the records it was to append.
PRODUCE_CHARGE = web.RequestKey("produce_charge", int)
# Records a read or group fetch delivered (an empty poll delivered none).
DELIVERED = web.RequestKey("usage_delivered", int)


def _tenant(request: web.Request) -> str | None:
    principal = request.get(PRINCIPAL)
    return None if principal is None or principal.admin else principal.tenant


async def admit_produce(
    request: web.Request, records: IncomingRecords, indexes: Sequence[int]
) -> None:
    """Before a produce appends the records at ``indexes`` (all of them, or what an
    idempotent retry still misses; never called for a replay, which appends nothing): the
    tenant must be under its ``max_stored_bytes``, and the produce quota takes their bytes;
    otherwise refuse with 429, nothing written."""
    tenant = _tenant(request)
    if tenant is None:
        return
    quotas = request.app[TENANCY].quotas
    cost = records.cost(indexes)
    if not quotas.admit_produce_now(tenant, cost):
        await quotas.check_storage(tenant)
        await quotas.admit_produce(tenant, cost)
    request[PRODUCE_CHARGE] = cost


def settle_produce(request: web.Request, records: IncomingRecords, appended: Sequence[int]) -> None:
    """After a produce, whether it succeeded or not: the records it appended (the indexes in
    ``appended``; a replay appends none) are metered, the tokens of admitted records it did
    not append go back, and the bytes it appended count as stored until the next
    measurement."""
    tenant = _tenant(request)
    if tenant is None:
        return
    charge = request.get(PRODUCE_CHARGE)
    everything = len(appended) == len(records)
    if everything:
        # All of them: the quota already counted their bytes.
        nbytes = charge or records.cost(appended)
    else:
        nbytes = records.cost(appended)
    if appended:
        request.app[METER].count_in(tenant, len(appended), nbytes)
    if not charge:
        return
    quotas = request.app[TENANCY].quotas
    if charge > nbytes:
        quotas.refund_produce(tenant, charge - nbytes)
    quotas.note_stored(tenant, nbytes)


async def admit_consume(request: web.Request) -> None:
    """Before a stream reads more: wait while the tenant's consume quota is in debt, as the
    front door makes a read or fetch wait before it starts."""
    tenant = _tenant(request)
    if tenant is None:
        return
    quotas = request.app[TENANCY].quotas
    if not quotas.admit_consume_now(tenant):
        await quotas.admit_consume(tenant)


def charge_consume(request: web.Request, nbytes: int) -> None:
    """Charge the bytes a read or fetch returned; a debt slows the tenant's next read."""
    tenant = _tenant(request)
    if tenant is not None:
        request.app[TENANCY].quotas.charge_consume(tenant, nbytes)


def meter_delivered(request: web.Request, records: int, nbytes: int) -> None:
    """Count records a read or group fetch answers, with their key, value and header bytes."""
    request[DELIVERED] = request.get(DELIVERED, 0) + records
    tenant = _tenant(request)
    if tenant is not None and records:
        request.app[METER].count_out(tenant, records, nbytes)
