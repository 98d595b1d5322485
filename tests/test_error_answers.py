"""What a client is told of a failure on the server's side: the code, a public message, a
Retry-After where a retry helps, and nothing of the server's internals."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.http.errors import error_answer
from gateway.processes.token_leases import QuotaHomeUnreachableError
from partitions.errors import (
    EventBusError,
    PeerAuthenticationError,
    SessionFencedError,
    WalUnavailableError,
)

# The internal message each error is raised with: it names things a client must not see.
INTERNAL = "node n7 session 5f0c at 10.0.3.7:9400, object wal/n7/5f0c/00000000000000000042"


@pytest.mark.parametrize(
    ("error", "status", "retriable"),
    [
        (WalUnavailableError(INTERNAL), 503, True),
        (SessionFencedError(INTERNAL), 503, True),
        (QuotaHomeUnreachableError(INTERNAL, retry_after_ms=1500), 503, True),
        (PeerAuthenticationError(INTERNAL), 500, False),
    ],
    ids=lambda value: getattr(value, "code", None),
)
def test_cluster_failures_answer_a_public_message(
    error: EventBusError, status: int, retriable: bool
) -> None:
    answer = error_answer(make_mocked_request("POST", "/v1/topics/t/records"), error)
    assert answer.status == status
    assert answer.body is not None
    body = orjson.loads(bytes(answer.body))["error"]
    assert body["code"] == error.code
    assert body["message"] and body["message"] != "the server failed to handle the request"
    assert "n7" not in answer.text and "10.0.3.7" not in answer.text and "wal/" not in answer.text
    assert ("Retry-After" in answer.headers) == retriable
