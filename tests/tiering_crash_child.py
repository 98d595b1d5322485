"""``eventbus serve``, except that the process SIGKILLs itself right after its N-th object
put (N from ``EVENTBUS_TEST_DIE_AFTER_PUTS``): in the middle of a segment's upload, after
some of its objects exist and before its catalog row says copy-finished.

So a test can make a crash fall inside the upload protocol, at a chosen object.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from gateway.cli.main import main
from tiered_storage.objects import PutResult
from tiered_storage.s3_store import S3ObjectStore

_put = S3ObjectStore.put
_limit = int(os.environ.get("EVENTBUS_TEST_DIE_AFTER_PUTS", "0"))
_done = [0]


async def _put_then_maybe_die(self: S3ObjectStore, key: str, source: bytes | Path) -> PutResult:
    result = await _put(self, key, source)
    _done[0] += 1
    if _limit and _done[0] >= _limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


S3ObjectStore.put = _put_then_maybe_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
