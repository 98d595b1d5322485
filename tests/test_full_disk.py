"""A full disk, for real (a small tmpfs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.tenancy.auth import bootstrap
from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from partitions.errors import DiskFullError
from tests.tmpfs import fill, small_tmpfs

ADMIN_KEY = "ebk_full-disk-admin-key-for-this-test-only"


async def test_a_start_whose_keys_are_in_place_writes_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data", "2m") as disk:
        catalog = await SqliteCatalog.open(disk / CATALOG_FILE)
        try:
            admin_hash = await bootstrap(catalog, disk, ADMIN_KEY)
            credentials = (disk / "credentials").read_text()
            fill(disk / "filler")
            # Started again on the full disk, with the same admin key or none: it starts.
            assert await bootstrap(catalog, disk, ADMIN_KEY) == admin_hash
            assert await bootstrap(catalog, disk, None) == admin_hash
            assert (disk / "credentials").read_text() == credentials
            # A new admin key is a change, which needs room.
            with pytest.raises(DiskFullError):
                await bootstrap(catalog, disk, "ebk_another-admin-key")
        finally:
            await catalog.close()
