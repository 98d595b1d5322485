"""The asyncio client: :class:`AsyncClient`, and the one place its requests are made.

Retries. Requests that are safe to repeat (topic reads and ``PUT``, produce with its key,
commit, seek, describes) are sent again, the very same bytes, after a connection error, a
timeout, a 5xx (but 501) or a 429 with ``Retry-After``, with exponential backoff and jitter,
at most ``retries`` times. The others (group fetch, leave, topic delete) are sent again only
when the connection could not be made at all (nothing reached the server) or on a 429:
repeating a fetch whose answer was lost would skip, and with ``auto_commit`` commit, records
this process never saw. A 4xx raises :class:`~gateway.client.errors.ApiError`; a server that
stays unreachable raises :class:`~gateway.client.errors.TransportError`.
"""

from __future__ import annotations

import asyncio
import io
import random
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from gateway.client import wire
from gateway.client.errors import ApiError, ClientError, TransportError
from gateway.client.ranges import Grouping, HashRanges
from gateway.client.records import (
    Compression,
    FetchResult,
    ReadResult,
    RecordLike,
    SeekTarget,
    to_new_record,
)
from partitions.batch import Record, encode_batch
from partitions.errors import InvalidBatchError

# The server enforces each topic's max_record_bytes; the client checks nothing of its own.
_NO_CLIENT_LIMIT = 1 << 32
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 5.0
_RETRY_AFTER_CAP_S = 30.0
_LIST_PAGE = 1000


class _Retry(Enum):
    ALWAYS = "always"  # safe to repeat: retry every transient failure
    UNSENT = "unsent"  # retry only when nothing can have reached the server


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return min(max(float(raw), 0.0), _RETRY_AFTER_CAP_S)
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


def _api_error(answer: _Answer) -> ApiError:
    try:
        error = answer.json()["error"]
        return ApiError(
            answer.status, str(error["code"]), str(error["message"]), error.get("details")
        )
    except (ValueError, TypeError, KeyError):
        text = answer.body[:200].decode(errors="replace").strip()
        return ApiError(answer.status, "http_error", text or f"HTTP {answer.status}")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


class AsyncClient:
    """An asyncio client for one server and one API key.

    Use it as ``async with AsyncClient(url, key) as client: ...`` or call :meth:`close`.
    ``timeout`` bounds each attempt (a long-poll's ``wait_ms`` is added to it); ``retries``
    is how many times a failed attempt may be repeated; ``compression`` encodes produce
    bodies. Reads and fetches ask for compressed answers (zstd, then gzip; aiohttp decodes
    them) unless ``accept_compression`` is false, which saves CPU on a fast local network.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        compression: Compression = None,
        accept_compression: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if compression not in ("zstd", "gzip", None):
            raise ValueError("compression is 'zstd', 'gzip' or None")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "eventbus-client"}
        self._timeout = timeout
        self._retries = max(0, retries)
        self._compression = compression
        self._accept_encoding = "zstd, gzip" if accept_compression else "identity"
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not a secret
        # Hash ranges of the topics produced to, read from topic describe.
        self._ranges: dict[str, HashRanges] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections; the client can not be used afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the one place requests are made --------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return self._rng.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        retry: _Retry,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        wait_ms: int = 0,
    ) -> _Answer:
        """Send one request, repeating it as ``retry`` allows; answers any 2xx, raises the
        rest. Every attempt sends the very same bytes and headers."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        all_headers = dict(headers or {})
        if json is not None:
            body = orjson.dumps(json)
            all_headers.setdefault("Content-Type", wire.JSON)
        timeout = aiohttp.ClientTimeout(total=self._timeout + wait_ms / 1000)
        attempt = 0
        while True:
            try:
                async with self._session.request(
                    method,
                    self.url + path,
                    params=params,
                    # A stream, not bytes: aiohttp warns about large raw bodies.
                    data=io.BytesIO(body) if body is not None else None,
                    headers=all_headers,
                    timeout=timeout,
                    ssl=self._ssl,
                ) as response:
                    answer = _Answer(response.status, response.headers, await response.read())
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Not connected: nothing was sent, so any request may go again.
                if attempt >= self._retries:
                    raise TransportError(f"cannot reach {self.url}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                if retry is not _Retry.ALWAYS or attempt >= self._retries:
                    reason = str(exc) or type(exc).__name__
                    raise TransportError(f"no answer from {self.url}: {reason}") from exc
            else:
                if answer.status < 400:
                    return answer
                pause = _retry_after(answer.headers)
                # A 501 (not implemented) is the server's final word, not a hiccup.
                transient = (
                    answer.status >= 500 and answer.status != 501 and retry is _Retry.ALWAYS
                ) or (answer.status == 429 and pause is not None)
                if not transient or attempt >= self._retries:
                    raise _api_error(answer)
                if pause is not None:
                    await asyncio.sleep(pause + self._backoff(0))
                    attempt += 1
                    continue
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    # --- topics ---------------------------------------------------------------------------

    @staticmethod
    def _topic(name: str) -> str:
        return "/v1/topics/" + quote(name, safe="")

    async def create_topic(self, name: str, config: Mapping[str, Any] | None = None) -> Any:
        """Create a topic (or confirm one with the same config); answers the topic."""
        answer = await self._request(
            "PUT", self._topic(name), json=dict(config or {}), retry=_Retry.ALWAYS
        )
        return answer.json()

    async def list_topics(self) -> list[dict[str, Any]]:
        """Every topic of the tenant, following the pages to the end."""
        return await self._every_page("/v1/topics", "topics")

    async def _every_page(self, path: str, field: str) -> list[dict[str, Any]]:
        """Every item of a listing route, following its ``next_after`` to the end."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": str(_LIST_PAGE)}
            if after is not None:
                params["after"] = after
            page = (await self._request("GET", path, params=params, retry=_Retry.ALWAYS)).json()
            items.extend(page[field])
            after = page.get("next_after")
            if after is None:
                return items

    async def describe_topic(self, name: str) -> Any:
        """Config and partitions of a topic (produce keeps its hash ranges from it)."""
        described = (await self._request("GET", self._topic(name), retry=_Retry.ALWAYS)).json()
        self._ranges[name] = HashRanges.of_topic(described)
        return described

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and all its data."""
        await self._request("DELETE", self._topic(name), retry=_Retry.UNSENT)

    # --- records --------------------------------------------------------------------------

    async def produce(self, topic: str, records: Sequence[RecordLike]) -> list[tuple[int, int]]:
        """Append ``records`` in order, exactly once even when retried; answers
        (partition, offset) per record.

        The records are sent as one batch per partition they go to, by the topic's hash
        ranges as last read (see :mod:`gateway.client.ranges`), so that the server stores
        each batch as it came; per-key order is kept."""
        batch = [to_new_record(item) for item in records]
        if not batch:
            return []
        grouping = Grouping(batch, await self._hash_ranges(topic))
        now_ms = time.time_ns() // 1_000_000
        body = b"".join(
            encode_batch(
                [batch[i] for i in indexes], now_ms=now_ms, max_record_bytes=_NO_CLIENT_LIMIT
            )
            for indexes in grouping.groups.values()
        )
        headers = {"Content-Type": wire.BATCH, "Idempotency-Key": uuid.uuid4().hex}
        if self._compression is not None:
            body = wire.compress(body, self._compression)
            headers["Content-Encoding"] = self._compression
        answer = await self._request(
            "POST",
            self._topic(topic) + "/records",
            body=body,
            headers=headers,
            retry=_Retry.ALWAYS,
        )
        placed = grouping.in_request_order(
            [(item["partition"], item["offset"]) for item in answer.json()["offsets"]]
        )
        if not grouping.predicted(placed):
            self._ranges.pop(topic, None)  # split or merged since: read them again next time
        return placed

    async def _hash_ranges(self, topic: str) -> HashRanges | None:
        """The topic's hash ranges as last read; None when they cannot be read now (the
        produce then sends one batch, and its own answer says what went wrong)."""
        if topic not in self._ranges:
            try:
                await self.describe_topic(topic)
            except ApiError:
                return None
        return self._ranges[topic]

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int | None = None,
        *,
        max_records: int = 500,
        max_bytes: int = 1024 * 1024,
        wait_ms: int = 0,
    ) -> ReadResult:
        """Read one partition from ``offset`` (default: its start): at most ``max_records``
        records, and ``next_offset`` just after the last one."""
        params = {
            "max_records": str(max_records),
            "max_bytes": str(max_bytes),
            "wait_ms": str(wait_ms),
        }
        if offset is not None:
            params["offset"] = str(offset)
        answer = await self._request(
            "GET",
            f"{self._topic(topic)}/partitions/{partition}/records",
            params=params,
            headers={"Accept": wire.BATCH, "Accept-Encoding": self._accept_encoding},
            wait_ms=wait_ms,
            retry=_Retry.ALWAYS,
        )
        h = answer.headers
        records = [record for _p, record in _decode(answer.body)]
        next_offset = int(h["Eventbus-Next-Offset"])
        if len(records) > max_records:
            # The server sends whole batches; the caller asked for no more than this.
            records = records[:max_records]
            next_offset = records[-1].offset + 1
        return ReadResult(
            records=records,
            next_offset=next_offset,
            high_watermark=int(h["Eventbus-High-Watermark"]),
            start_offset=int(h["Eventbus-Start-Offset"]),
            sealed=h["Eventbus-Sealed"] == "true",
            children=_ints(h.get("Eventbus-Children", "")),
        )

    # --- consumer groups ------------------------------------------------------------------

    def _group(self, topic: str, group: str) -> str:
        return f"{self._topic(topic)}/groups/{quote(group, safe='')}"

    async def fetch(
        self,
        topic: str,
        group: str,
        member_id: str | None = None,
        *,
        max_records: int = 500,
        max_bytes: int = 1024 * 1024,
        wait_ms: int = 0,
        auto_commit: bool | None = None,
        auto_offset_reset: Literal["earliest", "latest"] | None = None,
        session_timeout_ms: int | None = None,
    ) -> FetchResult:
        """Join (no ``member_id``) or continue as a member, and fetch records.

        Records come in whole stored batches, up to the batch that reaches ``max_records``
        or ``max_bytes``; the member's position moves past everything answered.

        Not repeated once it may have reached the server: if this raises
        :class:`TransportError`, join again rather than reuse ``member_id``.
        """
        body: dict[str, Any] = {
            "max_records": max_records,
            "max_bytes": max_bytes,
            "wait_ms": wait_ms,
        }
        optional = {
            "member_id": member_id,
            "auto_commit": auto_commit,
            "auto_offset_reset": auto_offset_reset,
            "session_timeout_ms": session_timeout_ms,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        answer = await self._request(
            "POST",
            self._group(topic, group) + "/fetch",
            json=body,
            headers={"Accept": wire.BATCH, "Accept-Encoding": self._accept_encoding},
            wait_ms=wait_ms,
            retry=_Retry.UNSENT,
        )
        h = answer.headers
        return FetchResult(
            member_id=h["Eventbus-Member-Id"],
            generation=int(h["Eventbus-Generation"]),
            assignment=_ints(h.get("Eventbus-Assignment", "")),
            records=_decode(answer.body),
        )

    async def commit(
        self,
        topic: str,
        group: str,
        member_id: str,
        generation: int | None,
        offsets: Mapping[int, int],
    ) -> dict[int, int]:
        """Commit next-to-read ``offsets`` (partition -> offset) of the partitions the
        member owns now; answers the group's committed offsets.

        A rebalance may have moved some of the partitions to another member since they
        were fetched: their offsets are dropped (their new owner reads them from their last
        commit, so their records are delivered again, and only theirs) and the rest is
        committed. When every partition named moved away, nothing is committed and the
        answer is empty. A member that left or whose session ended commits nothing: that
        raises :class:`ApiError` ``unknown_member``; join again. ``generation`` is what
        the last fetch answered; the server does not fence on it."""
        path = self._group(topic, group) + "/commit"
        owned = dict(offsets)
        while True:
            body: dict[str, Any] = {
                "member_id": member_id,
                "offsets": [{"partition": p, "offset": o} for p, o in owned.items()],
            }
            if generation is not None:
                body["generation"] = generation
            try:
                answer = await self._request("POST", path, json=body, retry=_Retry.ALWAYS)
            except ApiError as exc:
                assignment = exc.details.get("assignment")
                if exc.code != "partition_not_assigned" or not isinstance(assignment, list):
                    raise
                kept = {p: o for p, o in owned.items() if p in assignment}
                if kept == owned:
                    raise
                if not kept:
                    return {}
                owned = kept  # drop the work of the partitions this member lost
                continue
            return _committed(answer.json())

    async def leave(self, topic: str, group: str, member_id: str, *, commit: bool = True) -> None:
        """Leave the group now; its partitions go to the other members at once.

        A member fetching with ``auto_commit`` first commits everything its last fetch
        delivered, as a consumer's close does. With ``commit=False`` leaving commits
        nothing: commit by hand first what was handled, when that may be less than the last
        fetch delivered (a loop stopped part-way through an answer)."""
        await self._request(
            "POST",
            self._group(topic, group) + "/leave",
            json={"member_id": member_id, "commit": commit},
            retry=_Retry.UNSENT,
        )

    async def list_groups(self, topic: str) -> list[dict[str, Any]]:
        """Every group of the topic with its committed offsets and lag, by name."""
        return await self._every_page(self._topic(topic) + "/groups", "groups")

    async def describe_group(self, topic: str, group: str) -> Any:
        """Members, generation, and per partition the committed offset and lag."""
        return (await self._request("GET", self._group(topic, group), retry=_Retry.ALWAYS)).json()

    async def seek_group(self, topic: str, group: str, to: SeekTarget) -> dict[int, int]:
        """Reset a group with no live members: ``"earliest"``, ``"latest"``,
        ``{"timestamp_ms": T}`` or ``{"offsets": [{"partition", "offset"}]}``."""
        answer = await self._request(
            "POST", self._group(topic, group) + "/seek", json={"to": to}, retry=_Retry.ALWAYS
        )
        return _committed(answer.json())

    # --- usage ----------------------------------------------------------------------------

    async def usage(self, start: str | None = None, end: str | None = None) -> Any:
        """The calling tenant's usage and bill over ``[start, end)``, whole UTC hours in
        RFC 3339 (left out: the server's defaults, this month so far)."""
        return (
            await self._request("GET", "/v1/usage", params=_period(start, end), retry=_Retry.ALWAYS)
        ).json()

    async def all_usage(
        self, start: str | None = None, end: str | None = None, *, tenant: str | None = None
    ) -> Any:
        """Every tenant's usage and bill, or ``tenant``'s alone (the admin key)."""
        params = _period(start, end)
        if tenant is not None:
            params["tenant"] = tenant
        return (
            await self._request("GET", "/v1/admin/usage", params=params, retry=_Retry.ALWAYS)
        ).json()

    # --- tenants and their keys (the admin key) -------------------------------------------

    @staticmethod
    def _tenant(name: str) -> str:
        return "/v1/admin/tenants/" + quote(name, safe="")

    async def create_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> Any:
        """Create a tenant and its first key; the answer holds the key's secret, once."""
        body: dict[str, Any] = {"name": name}
        if quotas:
            body["quotas"] = dict(quotas)
        if plan:
            body["plan"] = dict(plan)
        answer = await self._request("POST", "/v1/admin/tenants", json=body, retry=_Retry.UNSENT)
        return answer.json()

    async def list_tenants(self) -> list[dict[str, Any]]:
        """Every tenant, by name."""
        answer = await self._request("GET", "/v1/admin/tenants", retry=_Retry.ALWAYS)
        tenants: list[dict[str, Any]] = answer.json()["tenants"]
        return tenants

    async def describe_tenant(self, name: str) -> Any:
        """A tenant's quotas and plan, with what it uses now (``in_use``)."""
        return (await self._request("GET", self._tenant(name), retry=_Retry.ALWAYS)).json()

    async def update_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> Any:
        """Change quotas (a value, ``None`` for unlimited, ``"default"``) and merge-patch
        the plan (``None`` drops a price); answers the tenant."""
        body: dict[str, Any] = {}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        if plan is not None:
            body["plan"] = dict(plan)
        # Setting values is idempotent: repeating the patch gives the same tenant.
        answer = await self._request("PATCH", self._tenant(name), json=body, retry=_Retry.ALWAYS)
        return answer.json()

    async def delete_tenant(self, name: str) -> Any:
        """Delete a tenant with its keys, topics and data; answers the deleted topics."""
        return (await self._request("DELETE", self._tenant(name), retry=_Retry.UNSENT)).json()

    async def create_key(self, tenant: str, scope: str | Mapping[str, Any] = "full") -> Any:
        """Add a key to ``tenant``: a role, or ``{"role", "topics"}``; the answer holds the
        secret, once."""
        body = {"scope": scope if isinstance(scope, str) else dict(scope)}
        path = self._tenant(tenant) + "/keys"
        return (await self._request("POST", path, json=body, retry=_Retry.UNSENT)).json()

    async def list_keys(self, tenant: str) -> list[dict[str, Any]]:
        """A tenant's keys (never their secrets)."""
        answer = await self._request("GET", self._tenant(tenant) + "/keys", retry=_Retry.ALWAYS)
        keys: list[dict[str, Any]] = answer.json()["keys"]
        return keys

    async def revoke_key(self, tenant: str, key_id: str) -> None:
        """Revoke a key: its next request is refused."""
        path = f"{self._tenant(tenant)}/keys/{quote(key_id, safe='')}"
        await self._request("DELETE", path, retry=_Retry.UNSENT)


def _period(start: str | None, end: str | None) -> dict[str, str]:
    return {name: value for name, value in (("from", start), ("to", end)) if value is not None}


def _committed(body: Any) -> dict[int, int]:
    return {item["partition"]: item["offset"] for item in body["committed"]}


def _decode(body: bytes) -> list[tuple[int, Record]]:
    try:
        return list(wire.decode_chunks(body))
    except InvalidBatchError as exc:
        raise ClientError(f"the server's answer does not decode: {exc}") from exc
