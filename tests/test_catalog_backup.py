"""``eventbus catalog backup`` while another process keeps changing the catalog."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from partitions.catalog_sqlite import CATALOG_FILE, SqliteCatalog
from tests.catalog_checks import assert_lineage_invariants

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _partition_count(path: Path) -> int:
    catalog = await SqliteCatalog.open(path)
    try:
        partitions = await catalog.list_partitions("acme", "orders")
        assert_lineage_invariants(partitions)
        return len(partitions)
    finally:
        await catalog.close()


def test_backup_while_a_writer_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.catalog_crash_child", str(data / CATALOG_FILE), "5"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"READY\n"
        for _ in range(20):  # let it commit some changes first
            assert writer.stdout.readline().startswith(b"DONE")
        copies = []
        try:
            for n in range(3):
                copy = tmp_path / f"backup-{n}.sqlite3"
                done = _cli("catalog", "backup", str(copy), "--data-dir", str(data))
                assert done.returncode == 0, done.stderr
                copies.append(copy)
                for _ in range(10):
                    writer.stdout.readline()
        finally:
            writer.kill()
    counts = [asyncio.run(_partition_count(copy)) for copy in copies]
    # Each copy is a consistent catalog, and later copies hold later states.
    assert counts[0] > 20 and counts == sorted(counts)
    assert not list(tmp_path.glob("*.tmp"))


def test_backup_of_a_missing_catalog_fails_clearly(tmp_path: Path) -> None:
    done = _cli("catalog", "backup", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no"))
    assert done.returncode == 1
    assert "no catalog at" in done.stderr
    assert not (tmp_path / "out").exists()
