"""The catalog in DynamoDB, for several nodes: ``--catalog dynamodb://PREFIX``.

The same :class:`~partitions.catalog.Catalog` Protocol as the SQLite store, passing the same
conformance suite. ``tables`` defines the four tables (and creates them), ``keys`` says where
each thing lives, ``client`` is the one way calls are made (retries, deadlines, writes whose
outcome is unknown), and one module per entity does the operations, as in the SQLite store.
"""

from partitions.catalog_dynamodb.store import DynamoDbCatalog
from partitions.catalog_dynamodb.tables import TableNames, create_tables

__all__ = ["DynamoDbCatalog", "TableNames", "create_tables"]
