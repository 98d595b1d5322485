"""The partition log: one partition's append-only, crash-safe sequence of segments.

- ``partition_log``: :class:`~partitions.log.partition_log.PartitionLog`, the log that the
  partition worker opens; it answers from one shared ``state`` and hands the work to:
- ``loader``: opening the directory, recovering the last segment's tail (a torn or corrupt
  tail is cut), finishing a deletion a crash interrupted;
- ``writer``: the append queue, group commit on a writer thread, rolls and their timer, the
  seal, failing the waiters of a failed write and reopening with recovery;
- ``visibility``: a gated log's two ends, fsync'd here and visible to readers (the writer's);
- ``reads``: pinning segments, and the reads done on reader threads;
- ``retention``: deleting segments from the head, the log start, saving producer tags first.

Apart from them, ``restore`` writes a whole log afresh from stored batches at their own
offsets (a takeover's rebuild from the write-ahead log).

Below them: ``values`` (the settings and the answers), ``meta`` (``partition.json``),
``segment`` (one segment's data file, its appends and reads), ``index`` (the offset and time
indexes: byte layouts, in-memory copy, files) and ``layout`` (how segment files are named).
"""
