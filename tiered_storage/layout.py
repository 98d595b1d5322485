"""Where a segment's objects go: ``{tenant}/{incarnation}/{partition}/{base_offset:020d}{suffix}``.

Each uploaded segment is three objects, its log and its two indexes, byte for byte as they
are on local disk::

    acme/5f0c.../0/00000000000000004711.log
    acme/5f0c.../0/00000000000000004711.index
    acme/5f0c.../0/00000000000000004711.timeindex

The topic *incarnation* (a UUID) keeps a deleted and re-created topic from ever seeing the
old one's objects; base offsets are zero-padded to 20 digits so that a listing is offset
order. Keys are a pure function of the segment, so a retried upload can never make a second
copy of one segment: create-only puts answer "already exists" instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX
from partitions.partition_key import PartitionKey

# Upload order: the log last, so that a listing showing a ``.log`` shows a whole segment
# in the common case (the catalog row, not the listing, is what says a copy finished).
SUFFIXES = (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX)


def topic_prefix(tenant: str, incarnation: str) -> str:
    return f"{tenant}/{incarnation}/"


def partition_prefix(key: PartitionKey) -> str:
    return f"{key.tenant}/{key.incarnation}/{key.partition_id}/"


def segment_key(key: PartitionKey, base_offset: int, suffix: str = LOG_SUFFIX) -> str:
    return f"{partition_prefix(key)}{base_offset:020d}{suffix}"


def segment_keys(key: PartitionKey, base_offset: int) -> list[str]:
    return [segment_key(key, base_offset, suffix) for suffix in SUFFIXES]


@dataclass(frozen=True, slots=True, order=True)
class SegmentObject:
    """What an object key says, when it is one of ours."""

    partition: PartitionKey
    base_offset: int
    suffix: str


def parse_segment_key(key: str) -> SegmentObject | None:
    """The segment an object key names, or None for a key that is not in this layout."""
    parts = key.split("/")
    if len(parts) != 4:
        return None
    tenant, incarnation, pid, name = parts
    stem, dot, ext = name.partition(".")
    suffix = dot + ext
    if (
        not tenant
        or not incarnation
        or not pid.isdigit()
        or len(stem) != 20
        or not stem.isdigit()
        or suffix not in SUFFIXES
    ):
        return None
    return SegmentObject(PartitionKey(tenant, incarnation, int(pid)), int(stem), suffix)
