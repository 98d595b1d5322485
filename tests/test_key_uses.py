"""The API keys' last uses: noted as requests are authenticated, written behind them, and
never in a request's way, also while the catalog cannot be written (a real full disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.tenancy.auth import Authenticator, hash_key
from gateway.tenancy.key_uses import KeyUses
from partitions.catalog_sqlite import SqliteCatalog
from partitions.errors import DiskFullError
from tests.tmpfs import fill, small_tmpfs


async def test_key_uses_never_wait_on_a_full_catalog_and_are_written_once_there_is_room(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "small-fs", "2m") as disk:
        catalog = await SqliteCatalog.open(disk / "catalog.sqlite3")
        try:
            await catalog.create_tenant("acme")
            await catalog.add_api_key("acme", "k1", hash_key("ebk_one"), {"role": "full"})
            uses = KeyUses(catalog, write_interval_s=0.01, retry_max_s=0.05)
            now_ms = [1_000]
            auth = Authenticator(
                catalog, hash_key("ebk_admin"), uses=uses, wall_clock_ms=lambda: now_ms[0]
            )
            writer = asyncio.ensure_future(uses.run())
            fill(disk / "filler")
            # The key works while the catalog cannot be written, and its use is kept.
            principal = await auth.principal("ebk_one")
            assert principal is not None and principal.key_id == "k1"
            for _ in range(200):
                if uses.failures >= 2:
                    break
                await asyncio.sleep(0.01)
            assert uses.failures >= 2, "the writer never tried"
            assert await uses.last_uses("acme") == {"k1": 1_000}
            (stored,) = await catalog.list_api_keys("acme")
            assert stored.last_used_ms is None
            with pytest.raises(DiskFullError):
                await uses.write()
            # Room again: the writer's next attempt stores it, by itself.
            (disk / "filler").unlink()
            for _ in range(200):
                (stored,) = await catalog.list_api_keys("acme")
                if stored.last_used_ms is not None:
                    break
                await asyncio.sleep(0.01)
            assert stored.last_used_ms == 1_000
            assert await uses.last_uses("acme") == {}
            assert uses.failures == 0
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        finally:
            await catalog.close()


async def test_only_the_newest_use_of_each_key_is_kept_and_written(
    tmp_path: Path,
) -> None:
    catalog = await SqliteCatalog.open(tmp_path / "catalog.sqlite3")
    try:
        await catalog.create_tenant("acme")
        for key_id in ("k1", "k2"):
            await catalog.add_api_key("acme", key_id, hash_key(key_id), {"role": "full"})
        uses = KeyUses(catalog)
        uses.note("acme", "k1", 5)
        uses.note("acme", "k1", 9)
        uses.note("acme", "k1", 7)  # an older use noted later does not win
        uses.note("acme", "k2", 3)
        assert await uses.last_uses("acme") == {"k1": 9, "k2": 3}
        assert await uses.last_uses("globex") == {}
        await uses.write()
        assert await uses.last_uses("acme") == {}
        assert {k.key_id: k.last_used_ms for k in await catalog.list_api_keys("acme")} == {
            "k1": 9,
            "k2": 3,
        }
    finally:
        await catalog.close()
