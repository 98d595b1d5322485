"""Partitions: record batches, segments, the partition log, and (later) the catalog."""
