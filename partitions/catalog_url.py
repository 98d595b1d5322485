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
:class:`ValueError` that says what is allowed, given before anything starts);
:func:`open_catalog` opens what it names. The DynamoDB package and its AWS libraries are
imported only when a ``dynamodb://`` URL is used: they cost every process time and memory
at start, and the embedded default never needs them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from partitions.catalog import Catalog
from partitions.errors import (
    CatalogAccessDeniedError,
    CatalogTablesMissingError,
    CatalogUnavailableError,
)

if TYPE_CHECKING:
    from partitions.catalog_dynamodb.tables import TableNames

SQLITE = "sqlite"
DYNAMODB = "dynamodb"
DEFAULT_SQLITE_FILE = "catalog.sqlite3"

# What DynamoDB allows in a table name, and how long one may be.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TABLE_NAME_LENGTH = (3, 255)
_FORMS = "sqlite://PATH or dynamodb://PREFIX[?KIND=TABLE&...]"
# The standard AWS settings that decide where DynamoDB calls go, named when set.
_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


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


async def open_catalog(url: CatalogUrl, data_dir: Path, *, timeout_s: float) -> Catalog:
    """Open the catalog ``url`` names, for a server whose data directory is ``data_dir``.

    A DynamoDB catalog that cannot be reached, or that refuses (credentials, permissions),
    raises :class:`~partitions.errors.CatalogUnavailableError` with one line that says what
    could not be done, where, and what to check; a missing table raises
    :class:`~partitions.errors.CatalogTablesMissingError` naming it and the command that
    makes the tables of this URL. ``timeout_s`` is the deadline of each DynamoDB call,
    retries included (SQLite has none: it is a local file)."""
    if isinstance(url, SqliteUrl):
        from partitions.catalog_sqlite import SqliteCatalog

        return await SqliteCatalog.open(url.file(data_dir))
    from botocore.exceptions import BotoCoreError, ClientError

    from partitions.catalog_dynamodb import DynamoDbCatalog

    try:
        return await DynamoDbCatalog.open(url.names, timeout_s=timeout_s)
    except CatalogTablesMissingError as exc:
        table = exc.details.get("table", "of the catalog")
        raise CatalogTablesMissingError(
            f"the catalog table {table} does not exist: create the tables with "
            f"`eventbus catalog create-tables {url}` (with the same AWS settings), then start "
            "again",
            **exc.details,
        ) from exc
    except CatalogAccessDeniedError as exc:
        raise CatalogUnavailableError(refused(url, exc.__cause__ or exc)) from exc
    except CatalogUnavailableError as exc:
        raise CatalogUnavailableError(unreachable(url, exc.__cause__ or exc)) from exc
    except BotoCoreError as exc:
        # No region, no credentials: nothing was sent.
        raise CatalogUnavailableError(unreachable(url, exc)) from exc
    except ClientError as exc:
        # Reached, and refused: credentials or permissions.
        raise CatalogUnavailableError(refused(url, exc)) from exc


def unreachable(url: DynamoDbUrl, cause: BaseException) -> str:
    """The one line said when the DynamoDB catalog cannot be reached."""
    reason = " ".join(str(cause).split()) or type(cause).__name__
    settings = ", ".join(name for name in _AWS_SETTINGS if os.environ.get(name))
    given = f" (set: {settings})" if settings else ""
    return (
        f"cannot reach the catalog {url} at {dynamodb_endpoint()}: {reason}; check that "
        f"DynamoDB answers there and that the AWS endpoint, region and credentials{given} "
        "are right, then start again"
    )


def refused(url: DynamoDbUrl, cause: BaseException) -> str:
    """The one line said when DynamoDB answers, but refuses the catalog's first calls."""
    reason = " ".join(str(cause).split())
    return (
        f"DynamoDB at {dynamodb_endpoint()} refused the catalog {url}: {reason}; check the "
        "AWS credentials and their permissions on the catalog's tables, then start again"
    )
