"""A consumer-group member in plain Python (standard library only).

    EVENTBUS_URL=http://127.0.0.1:8080 EVENTBUS_API_KEY=... \
        python docs/examples/consumer.py orders billing

Joins group ``billing`` of topic ``orders`` and prints every record it gets. With
``auto_commit`` (the default) each fetch commits what the previous one delivered, so a
record is committed once this loop came back for more: if the process dies, the group
gets the uncommitted records again (at least once). Leaves the group on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

URL = os.environ.get("EVENTBUS_URL", "http://127.0.0.1:8080")
KEY = os.environ["EVENTBUS_API_KEY"]


def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - EVENTBUS_URL is the operator's server
        URL + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our server
        return json.loads(response.read() or b"{}")


def consume(topic: str, group: str, max_fetches: int | None = None) -> None:
    base = f"/v1/topics/{topic}/groups/{group}"
    member: str | None = None
    generation = 0
    handled: dict[int, int] = {}  # partition -> next offset, for the final commit
    fetches = 0
    try:
        while max_fetches is None or fetches < max_fetches:
            body: dict[str, Any] = {"wait_ms": 20000, "max_records": 500}
            if member is None:
                body["auto_offset_reset"] = "earliest"
            else:
                body["member_id"] = member
            try:
                answer = post(base + "/fetch", body)
            except urllib.error.HTTPError as error:
                if error.code == 409:  # our session ended (expired, or a restart): rejoin
                    member = None
                    continue
                raise
            member, generation = answer["member_id"], answer["generation"]
            fetches += 1
            for record in answer["records"]:
                print(record["partition"], record["offset"], record.get("key"), record.get("value"))
                handled[record["partition"]] = record["offset"] + 1
            sys.stdout.flush()
        # Commit what the last fetch delivered (auto_commit would only do it at the next
        # fetch), then leave. A 409 means a rebalance came first: those records go again.
        if member is not None and handled:
            offsets = [{"partition": p, "offset": o} for p, o in handled.items()]
            try:
                post(
                    base + "/commit",
                    {"member_id": member, "generation": generation, "offsets": offsets},
                )
            except urllib.error.HTTPError as error:
                if error.code != 409:
                    raise
    finally:
        if member is not None:
            post(base + "/leave", {"member_id": member})


if __name__ == "__main__":
    limit = int(os.environ["MAX_FETCHES"]) if "MAX_FETCHES" in os.environ else None
    consume(sys.argv[1], sys.argv[2], limit)
