"""Where the catalog is, said as a URL: ``sqlite://PATH`` or ``dynamodb://PREFIX``.

- ``sqlite://PATH``: one SQLite file, for one node. A relative ``PATH`` is under the data
  directory (the default, ``sqlite://catalog.sqlite3``, is the file every server used
  before there was a choice); an absolute one is written with a third slash,
  ``sqlite:///var/lib/eventbus/catalog.sqlite3``.
- ``dynamodb://PREFIX``: four DynamoDB tables named ``PREFIX-catalog``, ``PREFIX-leases``,
  ``PREFIX-usage`` and ``PREFIX-answers``; a query parameter per kind names a table of
  another name (``dynamodb://PREFIX?catalog=NAME&usage=NAME``), for tables made by someone
  else. The endpoint, region and credentials come from the standard AWS settings
  (``AWS_ENDPOINT_URL_DYNAMODB`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION``, the credential
  chain), as for S3.

:func:`parse_catalog_url` is the one place a URL is read and checked (a mistake is a
:class:`ValueError` that says what is allowed, given before anything starts). The DynamoDB
package and its AWS libraries are imported only when a ``dynamodb://`` URL is used: they
cost every process time and memory at start, and the embedded default never needs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from partitions.catalog_dynamodb.tables import TableNames

SQLITE = "sqlite"
DYNAMODB = "dynamodb"
DEFAULT_SQLITE_FILE = "catalog.sqlite3"

# What DynamoDB allows in a table name, and how long one may be.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TABLE_NAME_LENGTH = (3, 255)
_FORMS = "sqlite://PATH or dynamodb://PREFIX[?KIND=TABLE&...]"


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    """A SQLite file: ``path`` as written (relative ones are under the data directory)."""

    path: str

    def __str__(self) -> str:
        return f"{SQLITE}://{self.path}"

    def file(self, data_dir: Path) -> Path:
        """The file, for a server whose data directory is ``data_dir``."""
        return data_dir / self.path  # an absolute path stays itself


@dataclass(frozen=True, slots=True)
class DynamoDbUrl:
    """Four DynamoDB tables: ``names`` from ``prefix`` and the ``overrides`` given."""

    prefix: str
    overrides: tuple[tuple[str, str], ...]
    names: TableNames

    def __str__(self) -> str:
        query = "&".join(f"{kind}={table}" for kind, table in self.overrides)
        return f"{DYNAMODB}://{self.prefix}" + (f"?{query}" if query else "")


CatalogUrl = SqliteUrl | DynamoDbUrl

DEFAULT_CATALOG_URL = SqliteUrl(DEFAULT_SQLITE_FILE)


def parse_catalog_url(text: str) -> CatalogUrl:
    """Read and check a catalog URL (see the module's docstring); a mistake raises
    :class:`ValueError` saying what is wrong and what is allowed."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        raise ValueError(f"a catalog is {_FORMS}, not {text!r}")
    if scheme == SQLITE:
        if not rest:
            raise ValueError(
                "sqlite:// needs a path: sqlite://FILE (in the data directory) or "
                "sqlite:///ABSOLUTE/PATH"
            )
        return SqliteUrl(rest)
    if scheme == DYNAMODB:
        return _parse_dynamodb(text.strip())
    raise ValueError(f"unknown catalog scheme {scheme!r}: a catalog is {_FORMS}")


def _parse_dynamodb(text: str) -> DynamoDbUrl:
    # The table definitions are imported only now: only a DynamoDB catalog needs them.
    from partitions.catalog_dynamodb.tables import TABLE_KINDS, TableNames

    parts = urlsplit(text)
    prefix = parts.netloc
    if not prefix:
        raise ValueError(
            "dynamodb:// needs a table prefix: dynamodb://PREFIX names the tables "
            "PREFIX-catalog, PREFIX-leases, PREFIX-usage and PREFIX-answers"
        )
    if not _TABLE_NAME.fullmatch(prefix):
        raise ValueError(
            f"the table prefix {prefix!r} may hold only letters, digits, '_', '-' and '.'"
        )
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"a DynamoDB catalog is dynamodb://PREFIX[?KIND=TABLE&...], not {text!r}")
    overrides: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"the query of {text!r} is not KIND=TABLE&...") from None
    for kind, table in pairs:
        if kind not in TABLE_KINDS:
            raise ValueError(
                f"no table kind {kind!r} in {text!r}: the kinds are {', '.join(TABLE_KINDS)}"
            )
        if kind in overrides:
            raise ValueError(f"the {kind} table is named twice in {text!r}")
        overrides[kind] = table
    names = TableNames.from_prefix(prefix, overrides)
    low, high = _TABLE_NAME_LENGTH
    for kind, table in names.all().items():
        if not (_TABLE_NAME.fullmatch(table) and low <= len(table) <= high):
            raise ValueError(
                f"{table!r} (the {kind} table) is not a DynamoDB table name: {low} to {high} "
                "letters, digits, '_', '-' or '.'"
            )
    ordered = tuple((kind, overrides[kind]) for kind in TABLE_KINDS if kind in overrides)
    return DynamoDbUrl(prefix, ordered, names)


def dynamodb_endpoint() -> str:
    """Where DynamoDB calls go, as the standard AWS settings say (for messages): the
    endpoint in use, or why there is none. Makes no call."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        client = botocore.session.get_session().create_client("dynamodb")
    except BotoCoreError as exc:
        return f"nowhere ({exc})"
    return f"{client.meta.endpoint_url} (region {client.meta.region_name})"
