"""Resolving API keys: a busy key's expiry costs one catalog read, never one per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.tenancy.auth import Authenticator, hash_key
from gateway.tenancy.key_uses import KeyUses
from partitions.catalog import ApiKeyRecord
from partitions.catalog_sqlite import SqliteCatalog


class CountingCatalog(SqliteCatalog):
    """A catalog whose key lookups are counted and held until ``release`` is set."""

    reads = 0
    release: asyncio.Event

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        self.reads += 1
        await self.release.wait()
        return await super().find_api_key(key_hash)


async def _catalog(path: Path) -> CountingCatalog:
    catalog = await CountingCatalog.open(path / "catalog.sqlite3")
    catalog.release = asyncio.Event()
    await catalog.create_tenant("acme")
    await catalog.add_api_key("acme", "k1", hash_key("ebk_one"), {"role": "full"})
    return catalog


async def test_requests_that_find_a_key_expired_together_share_one_read(tmp_path: Path) -> None:
    catalog = await _catalog(tmp_path)
    try:
        now = [100.0]
        auth = Authenticator(
            catalog, hash_key("ebk_admin"), uses=KeyUses(catalog), clock=lambda: now[0]
        )
        lookups = [asyncio.ensure_future(auth.principal("ebk_one")) for _ in range(50)]
        await asyncio.sleep(0.01)
        assert auth.cached("ebk_one") is None and catalog.reads == 1
        lookups[0].cancel()  # one client going away does not fail the others
        catalog.release.set()
        principals = await asyncio.gather(*lookups[1:])
        assert {(p.tenant, p.key_id) for p in principals if p is not None} == {("acme", "k1")}
        assert len(principals) == 49 and catalog.reads == 1
        # Cached for a second, then read again: once.
        now[0] += 0.5
        await asyncio.gather(*(auth.principal("ebk_one") for _ in range(50)))
        assert catalog.reads == 1
        now[0] += 1.0
        await asyncio.gather(*(auth.principal("ebk_one") for _ in range(50)))
        assert catalog.reads == 2
    finally:
        await catalog.close()


async def test_a_read_under_way_when_a_key_is_revoked_is_not_shared_after(tmp_path: Path) -> None:
    catalog = await _catalog(tmp_path)
    try:
        auth = Authenticator(catalog, hash_key("ebk_admin"), uses=KeyUses(catalog))
        before = asyncio.ensure_future(auth.principal("ebk_one"))
        await asyncio.sleep(0.01)
        await catalog.revoke_api_key("acme", "k1")
        auth.forget("acme", "k1")
        after = asyncio.ensure_future(auth.principal("ebk_one"))
        await asyncio.sleep(0.01)
        assert catalog.reads == 2  # the request after the revocation reads for itself
        catalog.release.set()
        assert await after is None
        await before  # raced the revocation: whatever it found, it is not cached
        assert auth.cached("ebk_one") is None
    finally:
        await catalog.close()
