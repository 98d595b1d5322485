"""The catalog in SQLite, for one node: a file in the data directory.

The package's public face is these three names; the gateway, the tests and the benchmarks
import them from here, so the modules behind them can be rearranged without touching their
importers.
"""

from partitions.catalog_sqlite.store import CATALOG_FILE, SqliteCatalog, backup_catalog

__all__ = ["CATALOG_FILE", "SqliteCatalog", "backup_catalog"]
