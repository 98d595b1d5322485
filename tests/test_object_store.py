"""The object-store conformance suite: every backend must pass all of it.

Parametrized over the stores: ``file://`` in a temporary directory, and ``s3://`` against
moto's server over HTTP (with a key prefix). S3-only behaviour (retries on throttling and
server errors, multipart uploads) follows at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aioboto3
import pytest

from partitions.fileio import FileOps
from tests.s3 import S3FaultProxy, create_bucket
from tiered_storage.file_store import TMP_DIR, FileObjectStore
from tiered_storage.objects import (
    InvalidObjectKeyError,
    InvalidObjectStoreUrlError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    PutResult,
)
from tiered_storage.s3_store import MIB, S3ObjectStore
from tiered_storage.store_url import open_object_store, parse_store_url

TIMEOUT_S = 5.0
# Each call's deadline in the conformance suite: long enough for moto on a busy two-core
# machine (eight concurrent puts took over a second there), short enough that the stall
# test does not wait long for a stalled call to count as down.
CALL_TIMEOUT_S = 4.0


class HeldSyncOps(FileOps):
    """Holds every fdatasync while ``held`` is set: a disk that stopped answering."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.released = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.held.is_set():
            self.released.wait(30)
        super().fdatasync(fd)


@dataclass
class Backend:
    store: ObjectStore
    stall: Callable[[], None]
    resume: Callable[[], None]
    close: Callable[[], Awaitable[None]]


async def _file_backend(tmp_path: Path, _endpoint: str) -> Backend:
    ops = HeldSyncOps()
    store = await FileObjectStore.open(tmp_path / "objects", timeout_s=CALL_TIMEOUT_S, ops=ops)

    def resume() -> None:
        ops.held.clear()
        ops.released.set()

    return Backend(store, ops.held.set, resume, store.close)


async def _s3_backend(_tmp_path: Path, endpoint: str) -> Backend:
    bucket = await create_bucket(endpoint)
    proxy = await S3FaultProxy(endpoint).start()
    store = await S3ObjectStore.open(
        bucket,
        "cluster-a",
        endpoint_url=proxy.url,
        timeout_s=CALL_TIMEOUT_S,
        multipart_threshold=6 * MIB,
        part_bytes=5 * MIB,
        backoff_s=(0.01, 0.05),
    )

    async def close() -> None:
        await store.close()
        await proxy.close()

    return Backend(store, proxy.freeze, proxy.thaw, close)


BACKENDS = {"file": _file_backend, "s3": _s3_backend}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> AsyncIterator[Backend]:
    made = await BACKENDS[request.param](tmp_path, s3_endpoint)
    yield made
    made.resume()
    await made.close()


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


# --- the Protocol --------------------------------------------------------------------------


async def test_put_is_create_only_and_says_so(store: ObjectStore, tmp_path: Path) -> None:
    key = "acme/inc-1/0/00000000000000000000.log"
    assert await store.put(key, b"first") is PutResult.CREATED
    assert await store.put(key, b"second, different") is PutResult.ALREADY_EXISTS
    source = tmp_path / "segment"
    source.write_bytes(b"third")
    assert await store.put(key, source) is PutResult.ALREADY_EXISTS
    assert await store.get(key) == b"first"  # unchanged
    assert await store.put("acme/inc-1/0/00000000000000000010.log", source) is PutResult.CREATED
    assert await store.get("acme/inc-1/0/00000000000000000010.log") == b"third"


async def test_ranged_gets(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    await store.put("k/data", data)
    assert await store.get("k/data") == data
    assert await store.get("k/data", 10, 20) == data[10:20]
    assert await store.get("k/data", 5000) == data[5000:]
    assert await store.get("k/data", 10_000, 20_000) == data[10_000:]  # short at the end
    assert await store.get("k/data", len(data)) == b""
    assert await store.get("k/data", 7, 7) == b""
    with pytest.raises(ObjectNotFoundError) as missing:
        await store.get("k/absent")
    assert not missing.value.retriable


async def test_several_ranges_come_back_in_one_buffer(store: ObjectStore) -> None:
    first, second = bytes(range(256)) * 20, bytes(reversed(range(256))) * 20
    await store.put("k/first", first)
    await store.put("k/second", second)
    assert await store.get_ranges([("k/first", 100, 300)]) == first[100:300]
    both = await store.get_ranges([("k/first", 5000, 5120), ("k/second", 0, 1000)])
    assert both == first[5000:] + second[:1000]
    # A range that comes back short (past its object's end) ends the answer there.
    short = await store.get_ranges(
        [("k/second", 4000, 4100), ("k/first", 5100, 6000), ("k/second", 0, 10)]
    )
    assert short == second[4000:4100] + first[5100:]
    with pytest.raises(ObjectNotFoundError):
        await store.get_ranges([("k/first", 0, 10), ("k/absent", 0, 10)])


async def test_list_by_prefix_in_key_order(store: ObjectStore) -> None:
    before = int(time.time() * 1000) - 5_000
    for base in (30, 5, 1000, 0):
        await store.put(f"acme/inc/0/{base:020d}.log", b"x" * (base + 1))
    await store.put("acme/inc/1/00000000000000000000.log", b"y")
    await store.put("acme/other/0/00000000000000000000.log", b"z")
    listed = await store.list("acme/inc/0/")
    assert [o.key for o in listed] == [f"acme/inc/0/{b:020d}.log" for b in (0, 5, 30, 1000)]
    assert [o.size for o in listed] == [1, 6, 31, 1001]
    assert all(o.last_modified_ms >= before for o in listed)
    # A prefix need not end at a "/".
    assert [o.key for o in await store.list("acme/inc/0/0000000000000000000")] == [
        "acme/inc/0/00000000000000000000.log",
        "acme/inc/0/00000000000000000005.log",
    ]
    assert len(await store.list("acme/")) == 6
    assert len(await store.list("")) == 6
    assert await store.list("nobody/") == []


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("t/a/1", b"1")
    await store.put("t/a/2", b"2")
    await store.delete("t/a/1")
    await store.delete("t/a/1")
    await store.delete("t/never/there")
    assert [o.key for o in await store.list("t/")] == ["t/a/2"]
    await store.delete("t/a/2")
    assert await store.list("t/") == []
    assert await store.put("t/a/1", b"again") is PutResult.CREATED  # a deleted key is free


async def test_bad_keys_are_refused(store: ObjectStore) -> None:
    for key in ("", "../escape", "a//b", "a/./b", ".hidden", "a/.tmp/x", "trailing/"):
        with pytest.raises(InvalidObjectKeyError):
            await store.put(key, b"x")
    assert await store.list("") == []


async def test_concurrent_puts_of_one_key_create_it_once(store: ObjectStore) -> None:
    values = [bytes([n]) * 50_000 for n in range(8)]
    results = await asyncio.gather(*(store.put("race/key", v) for v in values))
    assert results.count(PutResult.CREATED) == 1
    assert results.count(PutResult.ALREADY_EXISTS) == 7
    assert await store.get("race/key") == values[results.index(PutResult.CREATED)]


async def test_a_large_object_from_a_file(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.log"
    data = os.urandom(11 * MIB + 123)
    source.write_bytes(data)
    assert await store.put("big/00000000000000000000.log", source) is PutResult.CREATED
    assert (
        await store.get("big/00000000000000000000.log", 6 * MIB, 6 * MIB + 100)
        == (data[6 * MIB : 6 * MIB + 100])
    )
    assert await store.get("big/00000000000000000000.log") == data
    assert await store.put("big/00000000000000000000.log", source) is PutResult.ALREADY_EXISTS
    assert [o.size for o in await store.list("big/")] == [len(data)]


async def test_a_vanished_source_file_is_reported_as_such(
    store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        await store.put("gone/key", tmp_path / "deleted-by-retention.log")
    assert await store.list("gone/") == []


async def test_a_stalled_store_counts_as_down_and_recovers(backend: Backend) -> None:
    store = backend.store
    await store.put("s/before", b"ok")
    backend.stall()
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError) as down:
        await store.put("s/during", b"x" * 1000)
    assert down.value.retriable
    assert time.monotonic() - started < 10, "the deadline did not hold"
    backend.resume()
    # The same put, retried once the store answers again, works (whatever the stalled
    # attempt left behind).
    for _ in range(50):
        try:
            result = await store.put("s/during", b"x" * 1000)
            break
        except ObjectStoreUnavailableError:
            await asyncio.sleep(0.1)
    assert result in (PutResult.CREATED, PutResult.ALREADY_EXISTS)
    assert await store.get("s/during") == b"x" * 1000


async def test_leftovers_of_interrupted_puts_are_removed(backend: Backend) -> None:
    store = backend.store
    if isinstance(store, FileObjectStore):
        leftover = store.root / TMP_DIR / "crashed.part"
        leftover.write_bytes(b"half")
        # Too young to be abandoned. (moto dates every multipart upload in 2010, so S3's
        # age check cannot be shown against it.)
        assert await store.remove_incomplete(int(time.time() * 1000) - 3_600_000) == 0
    else:
        assert isinstance(store, S3ObjectStore)
        await store.client.create_multipart_upload(
            Bucket=store.bucket, Key=f"{store.prefix}/left/behind"
        )
    assert await store.remove_incomplete(int(time.time() * 1000) + 60_000) == 1
    assert await store.remove_incomplete(int(time.time() * 1000) + 60_000) == 0
    assert await store.list("") == []


# --- URLs ------------------------------------------------------------------------------------


async def test_store_urls(tmp_path: Path, s3_endpoint: str) -> None:
    assert parse_store_url("s3://bucket/a/b/") == ("s3", "bucket", "a/b")
    assert parse_store_url("s3://bucket") == ("s3", "bucket", "")
    assert parse_store_url("file:///var/lib/eventbus") == ("file", "/var/lib/eventbus", "")
    for bad in ("bucket", "s3://", "s3:///prefix", "gs://bucket", "s3://b/../x"):
        with pytest.raises((InvalidObjectStoreUrlError, InvalidObjectKeyError)):
            parse_store_url(bad)
    local = await open_object_store(f"file://{tmp_path / 'store'}")
    assert isinstance(local, FileObjectStore) and local.url == f"file://{tmp_path / 'store'}"
    await local.put("a/b", b"c")
    assert (tmp_path / "store" / "a" / "b").read_bytes() == b"c"
    await local.close()
    bucket = await create_bucket(s3_endpoint)
    remote = await open_object_store(f"s3://{bucket}/eb", s3_endpoint=s3_endpoint)
    await remote.put("a/b", b"c")
    async with aioboto3.Session().client("s3", endpoint_url=s3_endpoint) as client:
        listed = await client.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["eb/a/b"]
    assert [o.key for o in await remote.list("a/")] == ["a/b"]
    await remote.close()


async def test_the_s3_endpoint_comes_from_the_standard_settings(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = await create_bucket(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    store = await open_object_store(f"s3://{bucket}")
    try:
        assert await store.put("k", b"v") is PutResult.CREATED
        assert await store.get("k") == b"v"
    finally:
        await store.close()


# --- S3 only: retries, conditional-write conflicts, multipart ------------------------------


@pytest.fixture
async def faulty_s3(s3_endpoint: str) -> AsyncIterator[tuple[S3ObjectStore, S3FaultProxy]]:
    bucket = await create_bucket(s3_endpoint)
    proxy = await S3FaultProxy(s3_endpoint).start()
    store = await S3ObjectStore.open(
        bucket,
        "",
        endpoint_url=proxy.url,
        timeout_s=TIMEOUT_S,
        multipart_threshold=6 * MIB,
        part_bytes=5 * MIB,
        max_attempts=4,
        backoff_s=(0.01, 0.05),
    )
    yield store, proxy
    await store.close()
    await proxy.close()


async def test_throttling_and_server_errors_are_retried(
    faulty_s3: tuple[S3ObjectStore, S3FaultProxy],
) -> None:
    store, proxy = faulty_s3
    proxy.fail_next = [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests")]
    assert await store.put("retried", b"data") is PutResult.CREATED
    assert store.retries == 3 and not proxy.fail_next
    proxy.fail_next = [(503, "SlowDown")] * 2
    assert await store.get("retried") == b"data"
    # Every attempt refused: the store is down, and the caller hears it.
    proxy.fail_next = [(503, "SlowDown")] * 4
    with pytest.raises(ObjectStoreUnavailableError):
        await store.list("")
    # A refusal that retrying cannot fix is not retried.
    proxy.fail_next = [(403, "AccessDenied")]
    with pytest.raises(ObjectStoreError) as denied:
        await store.put("denied", b"x")
    assert denied.value.details["s3_code"] == "AccessDenied"
    assert not proxy.fail_next and store.retries == 3 + 2 + 3


async def test_a_conditional_write_conflict_is_retried_into_already_exists(
    faulty_s3: tuple[S3ObjectStore, S3FaultProxy],
) -> None:
    store, proxy = faulty_s3
    await store.put("contested", b"winner")
    proxy.fail_next = [(409, "ConditionalRequestConflict")]
    assert await store.put("contested", b"loser") is PutResult.ALREADY_EXISTS
    assert await store.get("contested") == b"winner"


async def test_multipart_uploads_are_create_only_and_aborted_on_failure(
    faulty_s3: tuple[S3ObjectStore, S3FaultProxy], tmp_path: Path
) -> None:
    store, proxy = faulty_s3
    data = os.urandom(11 * MIB)
    source = tmp_path / "segment.log"
    source.write_bytes(data)
    # Another writer creates the key after this upload checked for it and before it
    # completes: the conditional complete refuses, and the first object stays.
    proxy.hold = lambda line: line.startswith("POST /") and "uploadId=" in line
    upload = asyncio.ensure_future(store.put("mp", source))
    await asyncio.wait_for(proxy.held.wait(), 30)
    proxy.hold = None
    async with aioboto3.Session().client("s3", endpoint_url=proxy.upstream) as direct:
        await direct.put_object(Bucket=store.bucket, Key="mp", Body=b"first", IfNoneMatch="*")
    proxy.thaw()
    assert await upload is PutResult.ALREADY_EXISTS
    assert await store.get("mp") == b"first"
    assert await store.put("mp2", source) is PutResult.CREATED
    assert await store.get("mp2") == data
    # A part that keeps failing fails the put and aborts the upload: nothing is left.
    proxy.requests.clear()
    proxy.fail_match = lambda line: line.startswith("PUT /") and "partNumber=" in line
    proxy.fail_next = [(500, "InternalError")] * 4
    with pytest.raises(ObjectStoreUnavailableError):
        await store.put("mp-failed", source)
    assert any(r.startswith("DELETE /") and "uploadId=" in r for r in proxy.requests)
    proxy.fail_next = []
    uploads = await store.client.list_multipart_uploads(Bucket=store.bucket)
    assert uploads.get("Uploads", []) == []
    assert [o.key for o in await store.list("")] == ["mp", "mp2"]


async def test_a_delete_whose_directory_another_deletion_removed_is_done(
    tmp_path: Path,
) -> None:
    """Two deletions of the last objects of one directory (worker processes deleting one
    topic's objects): the one that removes the directory may do so between the other's
    unlink and its fsync of the directory."""
    root = tmp_path / "objects"

    class OtherDeletionFirst(FileOps):
        armed = False

        def fsync_dir(self, path: Path) -> None:
            if self.armed:  # the other deletion takes the last file and the directory
                self.armed = False
                (path / "2").unlink()
                path.rmdir()
            super().fsync_dir(path)

    ops = OtherDeletionFirst()
    store = await FileObjectStore.open(root, timeout_s=CALL_TIMEOUT_S, ops=ops)
    try:
        await store.put("t/a/1", b"1")
        await store.put("t/a/2", b"2")
        ops.armed = True
        await store.delete("t/a/1")  # raised FileNotFoundError from the directory's fsync
        assert await store.list("t/") == []
        assert not (root / "t" / "a").exists()
    finally:
        await store.close()
