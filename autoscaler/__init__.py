"""Throughput measurement and the split/merge policy for partitions."""
