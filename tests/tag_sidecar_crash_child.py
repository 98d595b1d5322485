"""Child process of the tag-file crash test: deletes a partition's local segments below an
offset and is SIGKILLed by itself the moment a segment's tags are saved, before any segment
file is deleted."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from partitions.fileio import FileOps
from partitions.log.partition_log import PartitionLog
from partitions.log.values import LogConfig
from partitions.tag_sidecar import TAGS_SUFFIX

CONFIG = LogConfig(segment_bytes=4 * 1024, index_interval_bytes=512)


class DieAfterSavingTags(FileOps):
    def replace_file(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        super().replace_file(path, data, mode=mode)
        if path.suffix == TAGS_SUFFIX:
            os.kill(os.getpid(), signal.SIGKILL)


async def main(directory: Path, below: int) -> None:
    log = await PartitionLog.open(directory, CONFIG, ops=DieAfterSavingTags())
    await log.delete_local_below(below)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
