"""API keys: generation, hashing, and resolving a presented key to its principal.

Keys are 256 random bits, URL-safe base64 with a readable prefix. Only their SHA-256 hash
is stored; the secret is shown once and written to nothing but the local ``credentials``
file at first start. A presented key is hashed and looked up by hash; the admin key's hash
is compared in constant time.

Resolved keys are cached per process for at most ``revalidate_s`` (one second): a key
revoked or a tenant deleted through this process is forgotten at once, so its next request
is refused; another process sharing the catalog refuses it within that second. Requests
that find a key expired at the same moment share one catalog read. While the catalog cannot
be reached (a DynamoDB outage: :class:`~partitions.errors.CatalogUnavailableError`), a key
read successfully within ``stale_s`` (five minutes) goes on authenticating, without waiting
for the catalog, so that requests which need nothing else of it (produce, reads) keep
working; a revocation made elsewhere meanwhile takes effect once the catalog answers again. Each
revalidation also notes the key's last use, which is written behind the request
(``key_uses.py``): reading a key never writes, so keys keep working on a full disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from gateway.tenancy.key_uses import KeyUses
from gateway.tenancy.scopes import FULL, KeyScope
from partitions.catalog import Catalog
from partitions.errors import (
    ApiKeyNotFoundError,
    CatalogUnavailableError,
    EventBusError,
    TenantExistsError,
)
from partitions.fileio import FileOps

log = logging.getLogger(__name__)

KEY_PREFIX = "ebk_"
ADMIN_KEY_SETTING = "admin_key_hash"
BOOTSTRAP_SETTING = "bootstrapped"
DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CREDENTIALS_FILE = "credentials"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the admin, or a key of one tenant."""

    admin: bool
    tenant: str | None = None
    key_id: str | None = None
    scope: KeyScope = FULL


ADMIN = Principal(admin=True)


class UnauthorizedError(EventBusError):
    code = "unauthorized"
    status = 401


class ForbiddenError(EventBusError):
    code = "forbidden"
    status = 403


def new_key_id() -> str:
    return "key-" + secrets.token_hex(6)


class Authenticator:
    """Resolves keys to principals, through a short-lived per-process cache of key hashes.

    Only keys that exist are cached (a flood of bad keys cannot grow it).
    """

    def __init__(
        self,
        catalog: Catalog,
        admin_key_hash: str,
        *,
        uses: KeyUses,
        revalidate_s: float = 1.0,
        stale_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._catalog = catalog
        self._admin_hash = admin_key_hash
        self._uses = uses
        self._revalidate_s = revalidate_s
        self._stale_s = stale_s
        # Set while the catalog's last answer to a key read was that it cannot be reached.
        self._catalog_out = False
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        # key hash -> (principal, when it was last read from the catalog)
        self._cache: dict[str, tuple[Principal, float]] = {}
        # Bumped by every forget: a lookup that raced a revocation is not cached.
        self._epoch = 0
        # Catalog reads under way, by key hash.
        self._reads: dict[str, asyncio.Task[Principal | None]] = {}

    def cached(self, token: str) -> Principal | None:
        """The key's principal when it is known without the catalog: the admin key, or a
        key read within ``revalidate_s``. None: ask :meth:`principal`, which may read it."""
        digest = hash_key(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return ADMIN
        cached = self._cache.get(digest)
        if cached is not None and self._clock() - cached[1] < self._revalidate_s:
            return cached[0]
        return None

    async def principal(self, token: str) -> Principal | None:
        known = self.cached(token)
        if known is not None:
            return known
        digest = hash_key(token)
        read = self._reads.get(digest)
        if read is None:
            # One read per key at a time: requests that find the key expired together (a
            # busy key, every second) share it rather than each reading the catalog.
            read = asyncio.get_running_loop().create_task(self._read(digest))
            self._reads[digest] = read
            read.add_done_callback(partial(self._read_done, digest))
        stale = self._stale(digest)
        if stale is not None and self._catalog_out:
            return stale  # the catalog is out: do not wait for it (the read goes on)
        try:
            return await asyncio.shield(read)
        except CatalogUnavailableError:
            if stale is None:
                raise
            return stale

    def _stale(self, digest: str) -> Principal | None:
        """A key read within ``stale_s``, for when the catalog cannot be reached."""
        cached = self._cache.get(digest)
        if cached is not None and self._clock() - cached[1] < self._stale_s:
            return cached[0]
        return None

    async def _read(self, digest: str) -> Principal | None:
        now = self._clock()
        epoch = self._epoch
        try:
            record = await self._catalog.find_api_key(digest)
        except CatalogUnavailableError:
            if not self._catalog_out:
                log.warning(
                    "the catalog cannot be reached: keys read in the last %.0f s "
                    "go on authenticating until it answers",
                    self._stale_s,
                )
            self._catalog_out = True
            raise
        if self._catalog_out:
            log.info("the catalog answers again: keys are read from it as before")
        self._catalog_out = False
        if record is None:
            self._cache.pop(digest, None)
            return None
        scope = KeyScope.from_stored(record.scope)
        if scope is None:
            log.warning("key %s of tenant %s has an unreadable scope", record.key_id, record.tenant)
            return None
        principal = Principal(admin=False, tenant=record.tenant, key_id=record.key_id, scope=scope)
        self._uses.note(record.tenant, record.key_id, self._wall_clock_ms())
        if epoch == self._epoch:
            self._cache[digest] = (principal, now)
        return principal

    def _read_done(self, digest: str, read: asyncio.Task[Principal | None]) -> None:
        if self._reads.get(digest) is read:
            del self._reads[digest]

    def forget(self, tenant: str, key_id: str | None = None) -> None:
        """Drop cached keys of ``tenant`` (only ``key_id`` if given): revoked or deleted."""
        self._epoch += 1
        # Reads under way may have begun before the change: later requests read anew.
        self._reads.clear()
        for digest, (principal, _) in list(self._cache.items()):
            if principal.tenant == tenant and key_id in (None, principal.key_id):
                del self._cache[digest]


async def bootstrap(catalog: Catalog, data_dir: Path, admin_key: str | None) -> str:
    """First start: make the admin key (unless given) and tenant ``default`` with a key.

    Generated keys go to ``{data_dir}/credentials`` (mode 0600), never to the log. The file
    is written first and every catalog step can be repeated, so a crash part way through
    is finished by the next start with fresh keys. Answers the admin key's hash.

    A start whose catalog already holds what it would write writes nothing, so a server
    restarted on a full disk starts (and serves reads).
    """
    stored = await catalog.get_setting(ADMIN_KEY_SETTING)
    if admin_key is not None and stored != hash_key(admin_key):
        stored = hash_key(admin_key)
        await catalog.put_setting(ADMIN_KEY_SETTING, stored)
    if stored is not None and await catalog.get_setting(BOOTSTRAP_SETTING) is not None:
        return stored
    generated: dict[str, str] = {}
    if stored is None:
        generated["EVENTBUS_ADMIN_KEY"] = admin = generate_key()
        stored = hash_key(admin)
    tenant_key = generate_key()
    generated["EVENTBUS_API_KEY"] = tenant_key
    path = data_dir / CREDENTIALS_FILE
    write_credentials(path, generated)
    if "EVENTBUS_ADMIN_KEY" in generated:
        await catalog.put_setting(ADMIN_KEY_SETTING, stored)
    with contextlib.suppress(TenantExistsError):
        await catalog.create_tenant(DEFAULT_TENANT)
    with contextlib.suppress(ApiKeyNotFoundError):
        await catalog.revoke_api_key(DEFAULT_TENANT, "key-1")  # from a start cut short
    await catalog.add_api_key(DEFAULT_TENANT, "key-1", hash_key(tenant_key), {"role": "full"})
    await catalog.put_setting(BOOTSTRAP_SETTING, "1")
    log.warning(
        "first start: generated %s; the keys are in %s (mode 0600)",
        " and ".join(
            "the admin key" if name == "EVENTBUS_ADMIN_KEY" else "a key for tenant 'default'"
            for name in generated
        ),
        path,
    )
    return stored


def write_credentials(path: Path, keys: dict[str, str]) -> None:
    """Set ``NAME=key`` lines in the credentials file (mode 0600), replacing it atomically."""
    kept = []
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if line.partition("=")[0] not in keys
        ]
    body = "".join(f"{line}\n" for line in kept) + "".join(
        f"{name}={value}\n" for name, value in keys.items()
    )
    FileOps().replace_file(path, body.encode(), mode=0o600)


class TenantAnnouncer(Protocol):
    """Tells the server's other processes that a tenant's keys or quotas changed (or that it
    was deleted), so that they forget what they cached of it before the change is
    answered."""

    async def tenant_changed(
        self, tenant: str, *, key_id: str | None = None, dropped: bool = False
    ) -> None: ...
