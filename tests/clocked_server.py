"""``python -m tests.clocked_server serve ...``: ``eventbus`` whose quota and metering clocks
are files a test moves (:mod:`tests.clocks`), in the server process and in every worker
process it starts, so that all of them read the same time."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli.main import main
from gateway.config import Clocks
from tests.clocks import QUOTA_CLOCK_FILE_ENV, USAGE_CLOCK_FILE_ENV, FileClock


def clocks_from_environment() -> Clocks:
    clocks = Clocks()
    quota = os.environ.get(QUOTA_CLOCK_FILE_ENV)
    usage = os.environ.get(USAGE_CLOCK_FILE_ENV)
    return Clocks(
        quota_s=FileClock(Path(quota)) if quota else clocks.quota_s,
        usage_ms=FileClock(Path(usage)).whole if usage else clocks.usage_ms,
        autoscale_ms=clocks.autoscale_ms,
    )


def clocked_main(argv: Sequence[str]) -> int:
    return main(argv, clocks=clocks_from_environment(), worker_main=clocked_main)


if __name__ == "__main__":
    sys.exit(clocked_main(sys.argv[1:]))
