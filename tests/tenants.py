"""Tenants, keys and quotas as a test drives them through the admin API, and what a
quota's refusal looks like to a client."""

from __future__ import annotations

import io
from typing import Any

import orjson
from yarl import URL

from tests.conftest import ADMIN_KEY, Api


async def admin(api: Api, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    return await api.call(method, "/v1/admin" + path, key=ADMIN_KEY, json=json)


async def new_tenant(api: Api, name: str, **fields: Any) -> Api:
    status, body = await admin(api, "POST", "/tenants", {"name": name, **fields})
    assert status == 201, body
    return api.with_key(body["api_key"])


async def new_key(api: Api, tenant: str, scope: Any = None) -> str:
    status, body = await admin(api, "POST", f"/tenants/{tenant}/keys", {"scope": scope})
    assert status == 201, body
    return str(body["api_key"])


async def set_quotas(api: Api, tenant: str, **quotas: Any) -> None:
    status, body = await admin(api, "PATCH", f"/tenants/{tenant}", {"quotas": quotas})
    assert status == 200, body


async def call(
    api: Api, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body."""
    url = URL(api.base + path, encoded=True)
    if params:
        url = url.update_query(params)
    data = io.BytesIO(orjson.dumps(json)) if json is not None else None
    headers = {**api.headers(), "Content-Type": "application/json"}
    async with api.session.request(method, url, headers=headers, data=data) as response:
        return response.status, dict(response.headers), await response.json()


def records(count: int, size: int) -> dict[str, Any]:
    """``count`` keyless records of ``size`` value bytes each (what the produce quota counts)."""
    return {"records": [{"value": "x" * size} for _ in range(count)]}


def assert_refused(status: int, headers: dict[str, str], body: Any, code: str) -> int:
    """A quota refusal: 429, the code, and a Retry-After that matches the exact wait."""
    assert status == 429, body
    assert body["error"]["code"] == code
    wait_ms = body["error"]["details"]["retry_after_ms"]
    assert int(headers["Retry-After"]) == max(1, -(-wait_ms // 1000))
    return int(wait_ms)
