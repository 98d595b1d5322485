"""What the client raises: the server's refusals and failures to reach it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """Base of what this client raises."""


class ApiError(ClientError):
    """The server refused the request: ``status``, and ``code``/``message`` from its body."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


class TransportError(ClientError):
    """The server could not be reached, or did not answer, after every attempt."""
