"""Admin routes: tenants, their keys, quotas and plans (the admin key only).

A tenant key calling any of them gets 403. Secrets are shown once, in the answer that
creates them, and are never stored or logged: the catalog keeps their SHA-256 hashes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.http.inputs import JsonBody
from gateway.http.keys import BROKER, TENANCY, Tenancy
from gateway.http.params import json_response
from gateway.tenancy.auth import TENANT_NAME, generate_key, hash_key, new_key_id
from gateway.tenancy.billing import PLAN_SHAPE, parse_plan_patch
from gateway.tenancy.quotas import QUOTA_CHANGES_SHAPE, apply_quota_changes, parse_quota_changes
from gateway.tenancy.scopes import FULL, SCOPE_SHAPE, KeyScope
from partitions.catalog import ApiKeyRecord, TenantRecord
from partitions.errors import InvalidInputError, TenantNotFoundError, VersionConflictError
from partitions.shapes import Object, Text


class InvalidTenantNameError(InvalidInputError):
    code = "invalid_tenant_name"


# A PATCH that keeps losing compare-and-set races gives up after this many tries (409).
PATCH_ATTEMPTS = 5


def _tenancy(request: web.Request) -> Tenancy:
    # The front door admits only the admin key to these routes (the route table says so).
    return request.app[TENANCY]


def _tenant_name(request: web.Request) -> str:
    name = request.match_info["tenant"]
    if not TENANT_NAME.fullmatch(name):
        raise TenantNotFoundError(f"no tenant {name!r}", tenant=name)
    return name


TENANT_NAME_SHAPE = Text(
    pattern=TENANT_NAME.pattern,
    meaning="1 to 63 of [a-z0-9-], starting with a letter or digit",
    error=InvalidTenantNameError,
)
KEY_ID = Text(pattern="key-[0-9a-f]{12}", meaning="a key's id (key- and 12 hex digits)")
CREATE_TENANT_BODY = JsonBody(
    Object(
        fields={
            "name": TENANT_NAME_SHAPE,
            "quotas": QUOTA_CHANGES_SHAPE,
            "plan": PLAN_SHAPE,
        },
        required=("name",),
    )
)
PATCH_TENANT_BODY = JsonBody(Object(fields={"quotas": QUOTA_CHANGES_SHAPE, "plan": PLAN_SHAPE}))
CREATE_KEY_BODY = JsonBody(Object(fields={"scope": SCOPE_SHAPE}), required=False)


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7396: objects merge key by key, ``null`` removes a key, anything else replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def tenant_json(tenancy: Tenancy, record: TenantRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "created_ms": record.created_ms,
        "quotas": tenancy.quotas.defaults.overlay(record.quotas).to_json(),
        "quota_overrides": dict(record.quotas),
        "plan": dict(record.plan),
        "version": record.version,
    }


def key_json(record: ApiKeyRecord, unwritten_use_ms: int | None = None) -> dict[str, Any]:
    """A key as the admin API shows it; ``unwritten_use_ms``: its newest use that is not
    in the catalog yet, if any."""
    scope = KeyScope.from_stored(record.scope)
    last_used = max(
        (ms for ms in (record.last_used_ms, unwritten_use_ms) if ms is not None), default=None
    )
    return {
        "key_id": record.key_id,
        "scope": scope.to_json() if scope is not None else dict(record.scope),
        "created_ms": record.created_ms,
        "last_used_ms": last_used,
    }


# --- tenants -------------------------------------------------------------------------------


async def create_tenant(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    body = await CREATE_TENANT_BODY.read(request)
    name = body["name"]
    overrides = apply_quota_changes({}, parse_quota_changes(body.get("quotas", {})))
    plan = {k: v for k, v in parse_plan_patch(body.get("plan", {})).items() if v is not None}
    record = await tenancy.catalog.create_tenant(name, quotas=overrides, plan=plan)
    key, key_id = generate_key(), new_key_id()
    await tenancy.catalog.add_api_key(name, key_id, hash_key(key), FULL.to_json())
    answer = {**tenant_json(tenancy, record), "key_id": key_id, "api_key": key}
    return json_response(answer, status=201)


async def list_tenants(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    tenants = await tenancy.catalog.list_tenants()
    return json_response({"tenants": [tenant_json(tenancy, t) for t in tenants]})


async def get_tenant(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    name = _tenant_name(request)
    record = await tenancy.catalog.get_tenant(name)
    counts = await tenancy.catalog.tenant_counts(name)
    answer = tenant_json(tenancy, record)
    answer["in_use"] = {
        "topics": counts.topics,
        "active_partitions": counts.active_partitions,
        "stored_bytes": await request.app[BROKER].stored_bytes(name),
    }
    return json_response(answer)


async def patch_tenant(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    name = _tenant_name(request)
    body = await PATCH_TENANT_BODY.read(request)
    changes = parse_quota_changes(body["quotas"]) if "quotas" in body else None
    plan_patch = parse_plan_patch(body["plan"]) if "plan" in body else None
    attempts = 0
    while True:
        current = await tenancy.catalog.get_tenant(name)
        try:
            record = await tenancy.catalog.update_tenant(
                name,
                expected_version=current.version,
                quotas=None if changes is None else apply_quota_changes(current.quotas, changes),
                plan=None if plan_patch is None else merge_patch(current.plan, plan_patch),
            )
        except VersionConflictError:
            attempts += 1
            if attempts == PATCH_ATTEMPTS:
                raise
            continue
        tenancy.quotas.forget(name)
        await tenancy.announcer.tenant_changed(name)
        return json_response(tenant_json(tenancy, record))


async def delete_tenant(request: web.Request) -> web.Response:
    """Delete the tenant and everything it owns.

    One catalog transaction removes the tenant, its keys, groups and idempotency records and
    marks its topics deleted; then each topic's data goes by the broker's topic deletion.
    A crash after the transaction is finished by the next start, which completes every
    deletion the catalog marked.
    """
    tenancy = _tenancy(request)
    name = _tenant_name(request)
    topics = await tenancy.catalog.delete_tenant(name)
    tenancy.authenticator.forget(name)
    tenancy.quotas.drop(name)
    await tenancy.announcer.tenant_changed(name, dropped=True)
    broker = request.app[BROKER]
    for topic in topics:
        await broker.drop_deleted_topic(topic)
    await broker.worker.drop_tenant(name)
    return json_response({"name": name, "deleted_topics": sorted(t.name for t in topics)})


# --- keys ----------------------------------------------------------------------------------


async def create_key(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    name = _tenant_name(request)
    body = await CREATE_KEY_BODY.read(request)
    scope = KeyScope.parse(body.get("scope"))
    key, key_id = generate_key(), new_key_id()
    record = await tenancy.catalog.add_api_key(name, key_id, hash_key(key), scope.to_json())
    return json_response({**key_json(record), "api_key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    tenant = _tenant_name(request)
    keys = await tenancy.catalog.list_api_keys(tenant)
    # Uses are written behind the requests: add those not in the catalog yet.
    uses = await tenancy.key_uses.last_uses(tenant)
    return json_response({"keys": [key_json(k, uses.get(k.key_id)) for k in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    tenancy = _tenancy(request)
    name = _tenant_name(request)
    key_id = request.match_info["key_id"]
    await tenancy.catalog.revoke_api_key(name, key_id)
    tenancy.authenticator.forget(name, key_id)
    await tenancy.announcer.tenant_changed(name, key_id=key_id)
    return web.Response(status=204)
