"""Where a segment's objects go::

    {tenant}/{incarnation}/{partition}/{base_offset:020d}{suffix}                   epoch 0
    {tenant}/{incarnation}/{partition}/{base_offset:020d}-{epoch:010d}{suffix}      epoch >= 1

Each uploaded segment is three objects, its log and its two indexes, byte for byte as they
are on local disk::

    acme/5f0c.../0/00000000000000004711.log
    acme/5f0c.../0/00000000000000004711.index
    acme/5f0c.../0/00000000000000004711.timeindex
    acme/5f0c.../0/00000000000000004711-0000000003.log        (uploaded under epoch 3)

The topic *incarnation* (a UUID) keeps a deleted and re-created topic from ever seeing the
old one's objects; base offsets are zero-padded to 20 digits so that a listing is offset
order. Keys are a pure function of the segment and the *epoch* it was uploaded under, so a
retried upload can never make a second copy of one segment: create-only puts answer
"already exists" instead.

The epoch is that of the uploading owner's partition lease (several nodes). An owner that
was replaced but still runs (a zombie) uploads under its old epoch, so its objects never
collide with its successor's for the same base offset; the catalog row names the epoch of
the copy that counts, and cleanup deletes the other as an orphan. Epoch 0, one machine's
and every segment uploaded before epochs existed, keeps the key without one: nothing is
renamed. A ``-`` sorts before ``.``, so a listing stays in base-offset order either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from partitions.catalog import RemoteSegmentRecord
from partitions.log.layout import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX
from partitions.partition_key import PartitionKey

# Upload order: the log last, so that a listing showing a ``.log`` shows a whole segment
# in the common case (the catalog row, not the listing, is what says a copy finished).
SUFFIXES = (INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX)


def topic_prefix(tenant: str, incarnation: str) -> str:
    return f"{tenant}/{incarnation}/"


def partition_prefix(key: PartitionKey) -> str:
    return f"{key.tenant}/{key.incarnation}/{key.partition_id}/"


OFFSET_DIGITS = 20
EPOCH_DIGITS = 10
EPOCH_SEPARATOR = "-"


def segment_key(
    key: PartitionKey, base_offset: int, suffix: str = LOG_SUFFIX, epoch: int = 0
) -> str:
    if epoch < 0:
        raise ValueError(f"an epoch is not negative: {epoch}")
    tag = f"{EPOCH_SEPARATOR}{epoch:0{EPOCH_DIGITS}d}" if epoch else ""
    return f"{partition_prefix(key)}{base_offset:0{OFFSET_DIGITS}d}{tag}{suffix}"


def segment_keys(key: PartitionKey, base_offset: int, epoch: int = 0) -> list[str]:
    return [segment_key(key, base_offset, suffix, epoch) for suffix in SUFFIXES]


def row_keys(row: RemoteSegmentRecord) -> list[str]:
    """The object keys of the segment a catalog row describes (its epoch's)."""
    key = PartitionKey(row.tenant, row.incarnation, row.partition_id)
    return segment_keys(key, row.base_offset, row.epoch)


@dataclass(frozen=True, slots=True, order=True)
class SegmentObject:
    """What an object key says, when it is one of ours."""

    partition: PartitionKey
    base_offset: int
    suffix: str
    epoch: int = 0


def _digits(text: str, width: int) -> bool:
    return len(text) == width and text.isascii() and text.isdigit()


def parse_segment_key(key: str) -> SegmentObject | None:
    """The segment an object key names, with or without an epoch, or None for a key that
    is not in this layout."""
    parts = key.split("/")
    if len(parts) != 4:
        return None
    tenant, incarnation, pid, name = parts
    stem, dot, ext = name.partition(".")
    suffix = dot + ext
    offset, separator, epoch = stem.partition(EPOCH_SEPARATOR)
    if (
        not tenant
        or not incarnation
        or not pid.isascii()
        or not pid.isdigit()
        or not _digits(offset, OFFSET_DIGITS)
        or (separator and (not _digits(epoch, EPOCH_DIGITS) or int(epoch) == 0))
        or suffix not in SUFFIXES
    ):
        return None
    return SegmentObject(
        PartitionKey(tenant, incarnation, int(pid)), int(offset), suffix, int(epoch or 0)
    )
