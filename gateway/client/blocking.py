"""The blocking client: :class:`Client` runs an :class:`~gateway.client.aio.AsyncClient` on a
private event loop in a background thread."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from gateway.client.aio import AsyncClient
from gateway.client.records import Compression, FetchResult, ReadResult, RecordLike, SeekTarget

T = TypeVar("T")


class Client:
    """The blocking twin of :class:`AsyncClient`, with the same arguments and methods.

    It runs an ``AsyncClient`` on its own event loop in a daemon thread; use it as a
    context manager or call :meth:`close`. Calls may come from any thread.
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
        self._async = AsyncClient(
            url,
            api_key,
            timeout=timeout,
            retries=retries,
            compression=compression,
            accept_compression=accept_compression,
            ssl_context=ssl_context,
        )
        self.url = self._async.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="eventbus-client", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the request too
            raise

    def close(self) -> None:
        """Close the connections and stop the background loop."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def create_topic(self, name: str, config: Mapping[str, Any] | None = None) -> Any:
        """See :meth:`AsyncClient.create_topic`."""
        return self._run(self._async.create_topic(name, config))

    def list_topics(self) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_topics`."""
        return self._run(self._async.list_topics())

    def describe_topic(self, name: str) -> Any:
        """See :meth:`AsyncClient.describe_topic`."""
        return self._run(self._async.describe_topic(name))

    def delete_topic(self, name: str) -> None:
        """See :meth:`AsyncClient.delete_topic`."""
        self._run(self._async.delete_topic(name))

    def produce(self, topic: str, records: Sequence[RecordLike]) -> list[tuple[int, int]]:
        """See :meth:`AsyncClient.produce`."""
        return self._run(self._async.produce(topic, records))

    def read(
        self,
        topic: str,
        partition: int,
        offset: int | None = None,
        *,
        max_records: int = 500,
        max_bytes: int = 1024 * 1024,
        wait_ms: int = 0,
    ) -> ReadResult:
        """See :meth:`AsyncClient.read`."""
        return self._run(
            self._async.read(
                topic,
                partition,
                offset,
                max_records=max_records,
                max_bytes=max_bytes,
                wait_ms=wait_ms,
            )
        )

    def fetch(
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
        """See :meth:`AsyncClient.fetch`."""
        return self._run(
            self._async.fetch(
                topic,
                group,
                member_id,
                max_records=max_records,
                max_bytes=max_bytes,
                wait_ms=wait_ms,
                auto_commit=auto_commit,
                auto_offset_reset=auto_offset_reset,
                session_timeout_ms=session_timeout_ms,
            )
        )

    def commit(
        self,
        topic: str,
        group: str,
        member_id: str,
        generation: int | None,
        offsets: Mapping[int, int],
    ) -> dict[int, int]:
        """See :meth:`AsyncClient.commit`."""
        return self._run(self._async.commit(topic, group, member_id, generation, offsets))

    def leave(self, topic: str, group: str, member_id: str, *, commit: bool = True) -> None:
        """See :meth:`AsyncClient.leave`."""
        self._run(self._async.leave(topic, group, member_id, commit=commit))

    def list_groups(self, topic: str) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_groups`."""
        return self._run(self._async.list_groups(topic))

    def describe_group(self, topic: str, group: str) -> Any:
        """See :meth:`AsyncClient.describe_group`."""
        return self._run(self._async.describe_group(topic, group))

    def seek_group(self, topic: str, group: str, to: SeekTarget) -> dict[int, int]:
        """See :meth:`AsyncClient.seek_group`."""
        return self._run(self._async.seek_group(topic, group, to))

    def usage(self, start: str | None = None, end: str | None = None) -> Any:
        """See :meth:`AsyncClient.usage`."""
        return self._run(self._async.usage(start, end))

    def all_usage(
        self, start: str | None = None, end: str | None = None, *, tenant: str | None = None
    ) -> Any:
        """See :meth:`AsyncClient.all_usage`."""
        return self._run(self._async.all_usage(start, end, tenant=tenant))

    def create_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> Any:
        """See :meth:`AsyncClient.create_tenant`."""
        return self._run(self._async.create_tenant(name, quotas=quotas, plan=plan))

    def list_tenants(self) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_tenants`."""
        return self._run(self._async.list_tenants())

    def describe_tenant(self, name: str) -> Any:
        """See :meth:`AsyncClient.describe_tenant`."""
        return self._run(self._async.describe_tenant(name))

    def update_tenant(
        self,
        name: str,
        *,
        quotas: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> Any:
        """See :meth:`AsyncClient.update_tenant`."""
        return self._run(self._async.update_tenant(name, quotas=quotas, plan=plan))

    def delete_tenant(self, name: str) -> Any:
        """See :meth:`AsyncClient.delete_tenant`."""
        return self._run(self._async.delete_tenant(name))

    def create_key(self, tenant: str, scope: str | Mapping[str, Any] = "full") -> Any:
        """See :meth:`AsyncClient.create_key`."""
        return self._run(self._async.create_key(tenant, scope))

    def list_keys(self, tenant: str) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_keys`."""
        return self._run(self._async.list_keys(tenant))

    def revoke_key(self, tenant: str, key_id: str) -> None:
        """See :meth:`AsyncClient.revoke_key`."""
        self._run(self._async.revoke_key(tenant, key_id))
