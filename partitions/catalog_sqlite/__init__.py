"""The catalog in SQLite, for one node: a file in the data directory.

``store`` holds :class:`SqliteCatalog`, which owns the one connection and its thread and
runs each Protocol operation as one transaction. The operations themselves are plain
functions over that connection, one module per entity: ``settings``, ``tenants`` (with API
keys and the counts behind tenant limits), ``topics``, ``lineage`` (partitions, splits,
merges, placements, start offsets), ``groups``, ``idempotency``, ``segments`` and
``usage``. Below them, ``incarnations`` finds a topic name's live incarnation and ``rows``
turns rows into records; ``schema`` defines the file. A function that takes the
connection never begins or commits: the store calls it on its thread, inside its
transaction. The few that check arguments before a transaction starts (a placement, usage
deltas) touch no SQLite, so the event loop never waits on the file.

The package's public face is the three names below; the gateway, the tests and the
benchmarks import them from here, so the modules behind them can be rearranged without
touching their importers.
"""

from partitions.catalog_sqlite.schema import CATALOG_FILE, backup_catalog
from partitions.catalog_sqlite.store import SqliteCatalog

__all__ = ["CATALOG_FILE", "SqliteCatalog", "backup_catalog"]
