"""Names and keys: which topic names are valid, and where a record's key hashes to."""

from __future__ import annotations

import xxhash

from partitions.errors import InvalidInputError
from partitions.incoming import Key
from partitions.shapes import ShapeError, Text


class InvalidTopicNameError(InvalidInputError):
    code = "invalid_topic_name"


# A topic's name, and a consumer group's: the same rules.
TOPIC_NAME = Text(
    pattern=r"[A-Za-z0-9._-]{1,249}",
    excluded=(".", ".."),
    meaning="1 to 249 of [A-Za-z0-9._-], not '.' or '..'",
    error=InvalidTopicNameError,
)


def validate_topic_name(name: str) -> None:
    try:
        TOPIC_NAME.check(name, "")
    except ShapeError:
        raise InvalidTopicNameError(f"invalid topic name {name!r}: {TOPIC_NAME.says()}") from None


def key_hash(key: Key) -> int:
    """The point of the 64-bit hash space a key belongs to (``xxh3_64`` of its bytes)."""
    return int(xxhash.xxh3_64_intdigest(key))
