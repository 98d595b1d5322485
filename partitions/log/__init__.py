"""The partition log: one partition's append-only, crash-safe sequence of segments.

- ``partition_log``: :class:`~partitions.log.partition_log.PartitionLog`, the log that the
  partition worker opens.
- ``segment``: one segment's files, its appends and its reads.
- ``index``: the byte layouts of a segment's offset and time indexes, their in-memory copy.
- ``layout``: how segment files are named, listed and cleaned up after a crash.
- ``loader``: recovery of the segments at open (a torn or corrupt tail is cut).
- ``values``: the log's settings and answers (``LogConfig``, ``AppendResult``, ...).
"""
