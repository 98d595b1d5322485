"""Names and keys: which topic names are valid, and where a record's key hashes to."""

from __future__ import annotations

import xxhash

from partitions.errors import InvalidInputError

TOPIC_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class InvalidTopicNameError(InvalidInputError):
    code = "invalid_topic_name"


def validate_topic_name(name: str) -> None:
    if not 1 <= len(name) <= 249 or name in (".", "..") or not set(name) <= TOPIC_NAME_CHARS:
        raise InvalidTopicNameError(
            f"invalid topic name {name!r}: 1 to 249 of [A-Za-z0-9._-], not '.' or '..'"
        )


def key_hash(key: bytes) -> int:
    """The point of the 64-bit hash space a key belongs to (``xxh3_64`` of its bytes)."""
    return int(xxhash.xxh3_64_intdigest(key))
