"""Server-sent events over HTTP, read as a plain client reads them, a line at a time: a
partition's records (resumed by Last-Event-ID, followed across a split), a consumer group's
records (committed automatically or by the client), a topic's changes, and what every
stream shares (the tenant's bound, metering, the end at shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from tests.conftest import Api, start_api, stop_api
from tests.tenants import new_tenant

U = TypeVar("U")
T = "/v1/topics/t"
SSE = {"Accept": "text/event-stream"}
# The longest a test waits for one event.
EVENT_TIMEOUT_S = 20.0


@dataclass
class Event:
    name: str
    id: str | None
    data: Any


class EventReader:
    """An open event stream, read a line at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, within: float = EVENT_TIMEOUT_S) -> Event:
        async with asyncio.timeout(within):
            name, event_id, data = "message", None, None
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if data is not None:
                        return Event(name, event_id, orjson.loads(data))
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "id":
                    event_id = value
                elif field == "data":
                    data = value

    async def until(self, name: str) -> list[Event]:
        """Events up to and including the first named ``name``."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if event.name == name:
                return seen

    async def records(self, count: int) -> list[Event]:
        out: list[Event] = []
        while len(out) < count:
            event = await self.next()
            if event.name == "record":
                out.append(event)
        return out


@contextlib.asynccontextmanager
async def stream(
    api: Api,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> AsyncIterator[EventReader]:
    async with api.session.get(
        api.base + path,
        params=params,
        headers={**api.headers(key), **SSE, **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=120),
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        yield EventReader(response)


async def produce(api: Api, records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    status, body = await api.call("POST", T + "/records", json={"records": records})
    assert status == 200, body
    return [(o["partition"], o["offset"]) for o in body["offsets"]]


async def eventually(
    look: Callable[[], Awaitable[U]], holds: Callable[[U], bool], within: float = EVENT_TIMEOUT_S
) -> U:
    """What ``look`` finds once ``holds`` says yes (polled: the server writes behind)."""
    deadline = time.monotonic() + within
    while not holds(found := await look()):
        assert time.monotonic() < deadline, f"still {found!r}"
        await asyncio.sleep(0.1)
    return found


def values(events: list[Event]) -> list[str]:
    return [e.data["value"] for e in events if e.name == "record"]


async def json_read(api: Api, partition: int) -> list[dict[str, Any]]:
    status, body = await api.call(
        "GET", f"{T}/partitions/{partition}/records", params={"max_records": 10_000}
    )
    assert status == 200, body
    records: list[dict[str, Any]] = body["records"]
    return records


# --- a partition's records -----------------------------------------------------------------


async def test_partition_stream_sends_records_with_cursors(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": "a", "value": f"v{i}"} for i in range(5)])
    async with stream(api, T + "/partitions/0/records") as events:
        first = await events.records(5)
        await produce(api, [{"key": "a", "value": "later"}])
        (later,) = await events.records(1)
    assert values(first) == [f"v{i}" for i in range(5)]
    assert [e.id for e in first] == [f"0-{i + 1}" for i in range(5)]
    # The data is the record exactly as a JSON read renders it.
    assert [e.data for e in [*first, later]] == await json_read(api, 0) and later.id == "0-6"
    assert later.data["value"] == "later" and later.data["offset"] == 5
    # From an offset; a JSON read of the same route stays JSON.
    async with stream(api, T + "/partitions/0/records", params={"offset": 3}) as events:
        assert values(await events.records(3)) == ["v3", "v4", "later"]
    status, body = await api.call("GET", T + "/partitions/0/records")
    assert status == 200 and len(body["records"]) == 6


async def test_resume_by_last_event_id_loses_and_repeats_nothing(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(40)])
    async with stream(api, T + "/partitions/0/records") as events:
        before = await events.records(17)
    # Gone mid-stream; meanwhile more come.
    await produce(api, [{"key": f"k{i}", "value": f"v{i}"} for i in range(40, 60)])
    resume = {"Last-Event-ID": before[-1].id or ""}
    # The cursor wins over an offset.
    async with stream(
        api, T + "/partitions/0/records", params={"offset": 0}, headers=resume
    ) as events:
        after = await events.records(60 - 17)
    assert values(before) + values(after) == [r["value"] for r in await json_read(api, 0)]


async def test_bad_last_event_id_and_accept(api: Api) -> None:
    await api.call("PUT", T)
    for bad in ("x", "0-", "0-1.0-2", "-1-0", "0-1..1-2"):
        status, body = await api.call(
            "GET", T + "/partitions/0/records", headers={**SSE, "Last-Event-ID": bad}
        )
        assert status == 400 and body["error"]["code"] == "invalid_parameter", (bad, body)
    # Past the end, as a JSON read's offset.
    status, body = await api.call(
        "GET", T + "/partitions/0/records", headers={**SSE, "Last-Event-ID": "0-5"}
    )
    assert status == 416, body
    status, body = await api.call(
        "GET", T + "/partitions/9/records", headers={**SSE, "Last-Event-ID": "9-0"}
    )
    assert status == 404, body
    # A group's stream answers nothing but events.
    status, body = await api.call(
        "GET", T + "/groups/g/records", headers={"Accept": "application/json"}
    )
    assert status == 406 and body["error"]["code"] == "not_acceptable"


async def test_stream_goes_on_into_the_children_of_a_split(api: Api) -> None:
    await api.call("PUT", T)
    keys = [f"key-{n}" for n in range(12)]
    sent = 0

    async def batch(count: int) -> None:
        nonlocal sent
        await produce(
            api,
            [{"key": keys[(sent + i) % len(keys)], "value": str(sent + i)} for i in range(count)],
        )
        sent += count

    await batch(60)
    async with stream(api, T + "/partitions/0/records") as events:
        seen = await events.records(30)
        status, body = await api.call("POST", T + "/partitions/0/split")
        assert status == 200, body
        children = sorted(p["id"] for p in body["created"])
        await batch(60)
        rest = await events.until("sealed")
        sealed = rest[-1]
        seen += [e for e in rest if e.name == "record"]
        seen += await events.records(60)
    assert sealed.data == {"partition": 0, "end_offset": 60, "children": children}
    assert sealed.id == ".".join(f"{c}-0" for c in children)
    by_key: dict[str, list[int]] = {}
    for event in seen:
        by_key.setdefault(event.data["key"], []).append(int(event.data["value"]))
    # Every key's records all came, each once, in the order they were produced.
    for n, key in enumerate(keys):
        assert by_key[key] == list(range(n, sent, len(keys))), key
    # The last cursor resumes in the children: nothing more is there.
    assert {int(part.split("-")[0]) for part in (seen[-1].id or "").split(".")} == set(children)


async def test_follow_children_false_ends_at_the_seal(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": "a", "value": "1"}])
    assert (await api.call("POST", T + "/partitions/0/split"))[0] == 200
    params = {"follow_children": "false"}
    async with stream(api, T + "/partitions/0/records", params=params) as events:
        got = await events.until("end")
    assert [e.name for e in got] == ["record", "sealed", "end"]
    assert got[-1].data == {"reason": "sealed"}


# --- a topic's changes ---------------------------------------------------------------------


async def test_topic_events_on_connect_after_a_split_and_ticks(api: Api) -> None:
    await api.call("PUT", T)
    path = T + "/events"
    async with stream(api, path, params={"interval_ms": 500}) as events:
        first = await events.next()
        assert first.name == "topic"
        assert first.data == (await api.call("GET", T))[1] | {"autoscale": first.data["autoscale"]}
        await produce(api, [{"key": "a", "value": "x"} for _ in range(10)])
        ticks = [e for e in await events.until("throughput")]
        tick = ticks[-1].data
        assert [p["partition"] for p in tick["partitions"]] == [0]
        assert tick["partitions"][0]["end_offset"] == 10 and tick["ts_ms"] > 0
        assert (await api.call("POST", T + "/partitions/0/split"))[0] == 200
        changed = await events.until("topic")
        after = changed[-1]
        assert after.id != first.id
        assert [p["state"] for p in after.data["partitions"]] == ["sealed", "active", "active"]
        # Ticks now name the active partitions, the children.
        tick = (await events.until("throughput"))[-1].data
        assert [p["partition"] for p in tick["partitions"]] == [1, 2]
        assert (await api.call("DELETE", T))[0] == 204
        ending = await events.until("end")
    assert [e.name for e in ending[-2:]] == ["deleted", "end"]
    assert ending[-1].data == {"reason": "deleted"}
    status, body = await api.call("GET", "/v1/topics/nope/events")
    assert status == 404, body
    status, body = await api.call("GET", path, params={"interval_ms": 10})
    assert status == 400 and body["error"]["code"] == "invalid_parameter"


# --- a consumer group's records ------------------------------------------------------------

G = T + "/groups/g"


async def committed(api: Api) -> dict[int, int]:
    status, body = await api.call("GET", G)
    assert status == 200, body
    return {p["partition"]: p["committed"] for p in body["partitions"] if "committed" in p}


async def test_group_stream_commits_as_it_goes(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": "a", "value": f"v{i}"} for i in range(10)])
    params = {"auto_offset_reset": "earliest"}
    async with stream(api, G + "/records", params=params) as events:
        member = await events.next()
        assert member.name == "member" and member.data["assignment"] == [0]
        got = await events.records(10)
        assert values(got) == [f"v{i}" for i in range(10)] and got[-1].id == "0-10"
        await produce(api, [{"key": "a", "value": "v10"}])
        assert values(await events.records(1)) == ["v10"]
        # What was sent before the last fetch is committed while the stream goes on.
        await eventually(lambda: committed(api), lambda found: found.get(0) == 11)
    # The member left with the stream.
    await eventually(lambda: api.call("GET", G), lambda found: not found[1]["members"])


async def test_group_stream_with_ack_commits_only_what_the_client_commits(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": "a", "value": f"v{i}"} for i in range(10)])
    params = {"commit": "ack", "auto_offset_reset": "earliest"}
    async with stream(api, G + "/records", params=params) as events:
        member = (await events.next()).data
        got = await events.records(10)
        await produce(api, [{"key": "a", "value": "v10"}])
        await events.records(1)
        assert (await committed(api))[0] is None  # nothing committed
        status, body = await api.call(
            "POST",
            G + "/commit",
            json={"member_id": member["member_id"], "offsets": [{"partition": 0, "offset": 4}]},
        )
        assert status == 200, body
        assert (await committed(api))[0] == 4
    # The stream's member left without committing more.
    assert (await committed(api))[0] == 4
    # Back with the cursor of the 7th record: that is committed first, and the stream goes
    # on from there.
    cursor = {"Last-Event-ID": got[6].id or ""}
    async with stream(api, G + "/records", params=params, headers=cursor) as events:
        assert (await events.next()).name == "member"
        assert values(await events.records(4)) == ["v7", "v8", "v9", "v10"]
        assert (await committed(api))[0] == 7


async def test_group_stream_resumes_after_a_disconnect_without_loss(api: Api) -> None:
    await api.call("PUT", T)
    await produce(api, [{"key": "a", "value": f"v{i}"} for i in range(30)])
    params = {"auto_offset_reset": "earliest"}
    async with stream(api, G + "/records", params=params) as events:
        before = await events.records(12)
    cursor = {"Last-Event-ID": before[-1].id or ""}
    async with stream(api, G + "/records", params=params, headers=cursor) as events:
        after = await events.records(18)
    assert values(before) + values(after) == [f"v{i}" for i in range(30)]


# --- what every stream shares --------------------------------------------------------------


@pytest.mark.single_process("the bound is each process's: worker processes share connections")
async def test_streams_are_bounded_per_tenant_and_metered(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data", max_streams_per_tenant=2)
    try:
        await api.call("PUT", T)
        await produce(api, [{"key": "a", "value": "abc"} for _ in range(7)])
        async with stream(api, T + "/events"), stream(api, T + "/partitions/0/records") as events:
            assert len(await events.records(7)) == 7
            status, body = await api.call("GET", T + "/partitions/0/records", headers=SSE)
            assert status == 429 and body["error"]["code"] == "too_many_streams", body
            status, body = await api.call("GET", G + "/records", headers=SSE)
            assert status == 429, body
            # JSON reads are not streams.
            assert (await api.call("GET", T + "/partitions/0/records"))[0] == 200
            # Another tenant has places of its own.
            other = await new_tenant(api, "other")
            await other.call("PUT", T)
            async with stream(other, T + "/events") as theirs:
                assert (await theirs.next()).name == "topic"
        # Closed streams give their places back.
        async with stream(api, T + "/events") as events:
            assert (await events.next()).name == "topic"
        status, body = await api.call("GET", "/v1/usage")
        assert status == 200, body
        # 7 records by the stream, 7 by the JSON read; 4 bytes each (key and value).
        assert body["usage"]["records_out"] == 14 and body["usage"]["bytes_out"] == 56
    finally:
        await stop_api(api)


async def test_streams_expire_and_end_at_shutdown(tmp_path: Path) -> None:
    api = await start_api(tmp_path / "data", max_stream_ms=500)
    await api.call("PUT", T)
    async with stream(api, T + "/partitions/0/records") as events:
        assert (await events.next()).data == {"reason": "expired"}
    await stop_api(api)
    api = await start_api(tmp_path / "data")
    try:
        await api.call("PUT", T)
        async with (
            stream(api, T + "/partitions/0/records") as records,
            stream(api, T + "/events") as changes,
            stream(api, G + "/records") as group,
        ):
            assert (await changes.next()).name == "topic"
            assert (await group.next()).name == "member"
            started = time.monotonic()
            closing = asyncio.ensure_future(api.server.close())
            for events in (records, changes, group):
                ending = await events.until("end")
                assert ending[-1].data == {"reason": "shutdown"}
            await closing
            # Well within the server's grace for requests still running (30 s and more).
            assert time.monotonic() - started < 10
    finally:
        await api.session.close()
