"""``s3://BUCKET/PREFIX``: an object store in S3 (or anything that speaks its API), on aioboto3.

- **Create-only**: ``PutObject`` with ``IfNoneMatch="*"``; S3 answers 412
  ``PreconditionFailed`` when the key exists, which becomes
  :attr:`~tiered_storage.objects.PutResult.ALREADY_EXISTS`. A 409
  ``ConditionalRequestConflict`` (another write of the same key in flight) is retried like
  a throttle; the retry then meets the 412 or succeeds.
- **Multipart** for objects larger than ``multipart_threshold``: parts of ``part_bytes``
  read from the file one at a time (never the whole segment in memory), and
  ``CompleteMultipartUpload`` with ``IfNoneMatch="*"``, so the create-only rule holds for
  large objects too. A failed upload is aborted; one a crash left is aborted by
  :meth:`S3ObjectStore.remove_incomplete` after the grace period.
- **Retries**: throttling (``SlowDown``, 429, 503 and their kin), server errors (5xx) and
  broken connections are retried with exponential backoff and jitter, up to
  ``max_attempts`` per request; botocore's own retries are off so that there is one policy.
- **Deadlines**: each request, including reading its answer, must finish within
  ``timeout_s``; a request that does not counts as the store being down
  (:class:`~tiered_storage.objects.ObjectStoreUnavailableError`) and is not retried here:
  the caller retries later with its own backoff.
- **Where**: the endpoint is ``endpoint_url`` if given, else botocore's standard settings
  (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, config files); credentials and region come
  from the standard chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError

from tiered_storage.objects import (
    DEFAULT_TIMEOUT_S,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    PutResult,
    check_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024
# Error codes S3 and its look-alikes use to say "slow down".
_THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
        "ConditionalRequestConflict",
    }
)


def _error(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", "")), status


def _retriable(exc: ClientError) -> bool:
    code, status = _error(exc)
    return code in _THROTTLE_CODES or status == 429 or status >= 500


class S3ObjectStore:
    """:class:`tiered_storage.objects.ObjectStore` in an S3 bucket, under a key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        timeout_s: float,
        endpoint_url: str | None = None,
        # Smaller objects are sent in one request, read whole into memory (so at most
        # upload_concurrency times this is held at once); larger ones in parts.
        multipart_threshold: int = 16 * MIB,
        # S3 takes parts of 5 MiB and more (all but the last).
        part_bytes: int = 8 * MIB,
        max_attempts: int = 5,
        backoff_s: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.part_bytes = part_bytes
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._client = client
        self._exit: contextlib.AsyncExitStack | None = None
        self._in_flight_uploads: set[str] = set()
        self.retries = 0

    @property
    def client(self) -> Any:
        """The aioboto3 S3 client the store sends its requests with, for calls outside the
        Protocol: tests use it to leave a multipart upload unfinished, or to list those
        left. Anything done through it bypasses the store's create-only rule."""
        return self._client

    @classmethod
    async def open(
        cls,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **settings: Any,
    ) -> S3ObjectStore:
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": 1},
            max_pool_connections=32,
        )
        exit_stack = contextlib.AsyncExitStack()
        session = aioboto3.Session()
        client = await exit_stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, config=config)
        )
        self = cls(
            bucket, prefix, client, timeout_s=timeout_s, endpoint_url=endpoint_url, **settings
        )
        self._exit = exit_stack
        return self

    @property
    def local(self) -> bool:
        return False

    @property
    def url(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return where if self.endpoint_url is None else f"{where} at {self.endpoint_url}"

    async def close(self) -> None:
        if self._exit is not None:
            await self._exit.aclose()
            self._exit = None

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _short(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    # --- one request, with retries and a deadline ---------------------------------------------

    async def _request(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self.backoff_s[0]
        for number in range(1, self.max_attempts + 1):
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await attempt()
            except TimeoutError:
                raise ObjectStoreUnavailableError(
                    f"{what} on {self.url} took longer than {self.timeout_s} s"
                ) from None
            except ClientError as exc:
                if not _retriable(exc):
                    raise
                failure: BaseException = exc
            except (HTTPClientError, aiohttp.ClientError, OSError) as exc:
                failure = exc
            if number == self.max_attempts:
                raise ObjectStoreUnavailableError(
                    f"{what} on {self.url} failed {number} times: {failure}"
                ) from failure
            self.retries += 1
            # Full jitter: spread the retries of many uploads over the whole window.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not secrets
            delay = min(delay * 2, self.backoff_s[1])
        raise AssertionError("unreachable")

    @staticmethod
    def _refused(what: str, exc: ClientError) -> ObjectStoreError:
        code, status = _error(exc)
        return ObjectStoreError(f"{what}: S3 answered {status} {code}", s3_code=code)

    # --- put -------------------------------------------------------------------------------

    async def put(self, key: str, source: bytes | Path) -> PutResult:
        full = self._full(key)
        if isinstance(source, bytes):
            return await self._put_small(key, full, source)
        size = (await asyncio.to_thread(source.stat)).st_size
        if size <= self.multipart_threshold:
            return await self._put_small(key, full, await asyncio.to_thread(source.read_bytes))
        return await self._put_multipart(key, full, source, size)

    async def _put_small(self, key: str, full: str, data: bytes) -> PutResult:
        async def attempt() -> None:
            await self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")

        try:
            await self._request(f"put {key}", attempt)
        except ClientError as exc:
            if _error(exc)[1] == 412:
                return PutResult.ALREADY_EXISTS
            raise self._refused(f"put {key}", exc) from exc
        return PutResult.CREATED

    async def _exists(self, key: str, full: str) -> bool:
        async def attempt() -> bool:
            try:
                await self._client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error(exc)[1] == 404:
                    return False
                raise
            return True

        try:
            return await self._request(f"head {key}", attempt)
        except ClientError as exc:
            raise self._refused(f"head {key}", exc) from exc

    async def _put_multipart(self, key: str, full: str, source: Path, size: int) -> PutResult:
        # A retry after a crash: skip re-sending a large object that is already there.
        if await self._exists(key, full):
            return PutResult.ALREADY_EXISTS
        what = f"multipart put {key}"

        async def create() -> str:
            answer = await self._client.create_multipart_upload(Bucket=self.bucket, Key=full)
            return str(answer["UploadId"])

        try:
            upload_id = await self._request(what, create)
        except ClientError as exc:
            raise self._refused(what, exc) from exc
        self._in_flight_uploads.add(upload_id)
        completed = False
        try:
            parts = []
            fd = await asyncio.to_thread(os.open, source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                for number, position in enumerate(range(0, size, self.part_bytes), start=1):
                    length = min(self.part_bytes, size - position)
                    chunk = await asyncio.to_thread(os.pread, fd, length, position)
                    if len(chunk) != length:
                        raise ObjectStoreError(f"{source} changed while it was uploaded")
                    etag = await self._upload_part(what, full, upload_id, number, chunk)
                    parts.append({"ETag": etag, "PartNumber": number})
            finally:
                os.close(fd)

            async def complete() -> None:
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )

            try:
                await self._request(what, complete)
            except ClientError as exc:
                if _error(exc)[1] == 412:
                    return PutResult.ALREADY_EXISTS
                raise self._refused(what, exc) from exc
            completed = True
            return PutResult.CREATED
        finally:
            self._in_flight_uploads.discard(upload_id)
            if not completed:
                await self._abort(full, upload_id)

    async def _upload_part(
        self, what: str, full: str, upload_id: str, number: int, chunk: bytes
    ) -> str:
        async def attempt() -> str:
            answer = await self._client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            return str(answer["ETag"])

        try:
            return await self._request(f"{what} (part {number})", attempt)
        except ClientError as exc:
            raise self._refused(what, exc) from exc

    async def _abort(self, full: str, upload_id: str) -> None:
        """Best effort: an upload left behind is aborted later by remove_incomplete."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                )
        except (TimeoutError, ClientError, HTTPClientError, aiohttp.ClientError, OSError) as exc:
            log.info("could not abort the multipart upload of %s now (%s)", full, exc)

    # --- get, list, delete ------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"not a byte range: [{start}, {end})")
        if end is not None and end == start:
            return b""
        full = self._full(key)
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"

        async def attempt() -> bytes:
            answer = await self._client.get_object(Bucket=self.bucket, Key=full, **extra)
            async with answer["Body"] as body:
                data: bytes = await body.read()
                return data

        try:
            return await self._request(f"get {key}", attempt)
        except ClientError as exc:
            code, status = _error(exc)
            if status == 404 or code == "NoSuchKey":
                raise ObjectNotFoundError(f"no object {key}", key=key) from None
            if status == 416:
                return b""  # the range starts at or past the end
            raise self._refused(f"get {key}", exc) from exc

    async def get_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> bytes | bytearray:
        if len(ranges) == 1:
            return await self.get(*ranges[0])
        parts = await asyncio.gather(*(self.get(key, start, end) for key, start, end in ranges))
        answer = bytearray()
        for part, (_, start, end) in zip(parts, ranges, strict=True):
            answer += part
            if len(part) < end - start:
                break
        return answer

    async def list(self, prefix: str) -> list[ObjectInfo]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token is not None:
                args["ContinuationToken"] = token

            async def attempt(args: dict[str, Any] = args) -> dict[str, Any]:
                page: dict[str, Any] = await self._client.list_objects_v2(**args)
                return page

            try:
                page = await self._request(f"list {prefix}", attempt)
            except ClientError as exc:
                raise self._refused(f"list {prefix}", exc) from exc
            for item in page.get("Contents", []):
                modified = int(item["LastModified"].timestamp() * 1000)
                found.append(ObjectInfo(self._short(item["Key"]), int(item["Size"]), modified))
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        found.sort()
        return found

    async def delete(self, key: str) -> None:
        full = self._full(key)

        async def attempt() -> None:
            await self._client.delete_object(Bucket=self.bucket, Key=full)

        try:
            await self._request(f"delete {key}", attempt)
        except ClientError as exc:
            if _error(exc)[1] == 404:
                return
            raise self._refused(f"delete {key}", exc) from exc

    async def remove_incomplete(self, older_than_ms: int) -> int:
        """Abort multipart uploads under the prefix that started before ``older_than_ms``
        and are not in flight here."""
        removed = 0
        markers: dict[str, str] = {}
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, **markers}
            if self.prefix:
                args["Prefix"] = self.prefix + "/"

            async def attempt(args: dict[str, Any] = args) -> dict[str, Any]:
                page: dict[str, Any] = await self._client.list_multipart_uploads(**args)
                return page

            try:
                page = await self._request("list multipart uploads", attempt)
            except ClientError as exc:
                raise self._refused("list multipart uploads", exc) from exc
            for upload in page.get("Uploads", []):
                upload_id = upload["UploadId"]
                started = int(upload["Initiated"].timestamp() * 1000)
                if upload_id in self._in_flight_uploads or started >= older_than_ms:
                    continue
                await self._abort(upload["Key"], upload_id)
                removed += 1
            if not page.get("IsTruncated"):
                return removed
            markers = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }
