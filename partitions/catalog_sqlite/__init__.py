"""The catalog in SQLite, for one node: a file in the data directory.

The package's public face is these three names; the gateway, the tests and the benchmarks
import them from here, so the modules behind them can be rearranged without touching their
importers.
"""

from partitions.catalog_sqlite.schema import CATALOG_FILE, backup_catalog
from partitions.catalog_sqlite.store import SqliteCatalog

__all__ = ["CATALOG_FILE", "SqliteCatalog", "backup_catalog"]
