"""The partition log: one partition's append-only, crash-safe sequence of segments.

``partition_log`` holds :class:`~partitions.log.partition_log.PartitionLog`, the log that
the partition worker opens; ``segment`` holds one segment's files and indexes.
"""
