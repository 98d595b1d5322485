"""Server-sent events over HTTP, read as a plain client reads them, a line at a time: a
partition's records (resumed by Last-Event-ID, followed across a split), a consumer group's
records (committed automatically or by the client), a topic's changes, and what every
stream shares (the tenant's bound, metering, the end at shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tests.conftest import Api

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
