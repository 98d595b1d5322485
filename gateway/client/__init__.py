"""A small Python client for the event bus: :class:`AsyncClient` (aiohttp) and :class:`Client`.

``docs/wire-format.md`` is what this package is written from. Produce sends binary batches,
one per partition the records go to (by the topic's hash ranges, read from topic describe
and read again when the topic changed shape), with a fresh ``Idempotency-Key`` per call;
reads and group fetches ask for the binary framing.
``Client`` has the same methods as ``AsyncClient``, blocking.

The package imports nothing of the server: only the record batch codec
(:mod:`partitions.batch`) and its own :mod:`gateway.client.wire`, the framing of the HTTP
API's bodies, which the server's front door shares.
"""

from gateway.client.aio import AsyncClient
from gateway.client.blocking import Client
from gateway.client.errors import ApiError, ClientError, TransportError
from gateway.client.records import FetchResult, ReadResult, RecordLike

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "FetchResult",
    "ReadResult",
    "RecordLike",
    "TransportError",
]
