"""Opening an object store by its URL: ``file://DIR`` or ``s3://BUCKET[/PREFIX]``.

This is the one module that knows both backends; they and everything that only uses a
store know :mod:`tiered_storage.objects` alone.
"""

from __future__ import annotations

from pathlib import Path

from tiered_storage.file_store import FileObjectStore
from tiered_storage.objects import (
    DEFAULT_TIMEOUT_S,
    InvalidObjectStoreUrlError,
    ObjectStore,
    check_key,
)


def parse_store_url(url: str) -> tuple[str, str, str]:
    """(scheme, location, prefix): ``file://DIR`` -> ("file", DIR, ""), and
    ``s3://BUCKET/PREFIX`` -> ("s3", BUCKET, PREFIX)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise InvalidObjectStoreUrlError(
            f"an object store is file://DIR or s3://BUCKET[/PREFIX], not {url!r}"
        )
    if scheme == "file":
        return "file", rest, ""
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InvalidObjectStoreUrlError(f"no bucket in {url!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        return "s3", bucket, prefix
    raise InvalidObjectStoreUrlError(
        f"unknown object store scheme {scheme!r}: use file://DIR or s3://BUCKET[/PREFIX]"
    )


async def open_object_store(
    url: str, *, s3_endpoint: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ObjectStore:
    """Open the store at ``url``. An S3 store takes its endpoint from ``s3_endpoint``, else
    from the standard AWS settings (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``), and its
    credentials and region from the standard chain."""
    scheme, location, prefix = parse_store_url(url)
    if scheme == "file":
        return await FileObjectStore.open(Path(location), timeout_s=timeout_s)
    # Imported here: aioboto3 and botocore take a noticeable time to import and memory in
    # every process, and the embedded default (file://) and the CLI never need them.
    from tiered_storage.s3_store import S3ObjectStore

    return await S3ObjectStore.open(location, prefix, endpoint_url=s3_endpoint, timeout_s=timeout_s)
