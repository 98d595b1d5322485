"""Resolving API keys: a busy key's expiry costs one catalog read, never one per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.tenancy.auth import Authenticator, hash_key
from gateway.tenancy.key_uses import KeyUses
from partitions.catalog import ApiKeyRecord
from partitions.catalog_sqlite import SqliteCatalog
from partitions.errors import CatalogUnavailableError


class CountingCatalog(SqliteCatalog):
    """A catalog whose key lookups are counted and held until ``release`` is set, and
    answer that the catalog cannot be reached while ``out``."""

    reads = 0
    release: asyncio.Event
    out = False

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        self.reads += 1
        await self.release.wait()
        if self.out:
            raise CatalogUnavailableError("the catalog did not answer in time")
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


async def test_keys_read_recently_go_on_working_while_the_catalog_is_out(
    tmp_path: Path,
) -> None:
    catalog = await _catalog(tmp_path)
    catalog.release.set()
    await catalog.add_api_key("acme", "k2", hash_key("ebk_two"), {"role": "full"})
    try:
        now = [100.0]
        auth = Authenticator(
            catalog, hash_key("ebk_admin"), uses=KeyUses(catalog), clock=lambda: now[0]
        )
        assert await auth.principal("ebk_one") is not None  # read once, while it answers
        catalog.out = True
        now[0] += 2.0  # past revalidation: the read fails, the key read before still works
        found = await auth.principal("ebk_one")
        assert found is not None and found.key_id == "k1"
        reads = catalog.reads
        # Known out: requests do not wait on the catalog (one read goes on behind them).
        await asyncio.gather(*(auth.principal("ebk_one") for _ in range(20)))
        assert catalog.reads <= reads + 1
        with pytest.raises(CatalogUnavailableError):
            await auth.principal("ebk_two")  # never read: nothing to go on
        auth.forget("acme", "k1")  # revoked through this process: refused at once
        with pytest.raises(CatalogUnavailableError):
            await auth.principal("ebk_one")
        assert await auth.principal("ebk_admin") is not None  # the admin key needs no read
        catalog.out = False
        assert await auth.principal("ebk_one") is not None
        catalog.out = True
        now[0] += 301.0  # read more than five minutes ago: no longer trusted
        with pytest.raises(CatalogUnavailableError):
            await auth.principal("ebk_one")
    finally:
        await catalog.close()
