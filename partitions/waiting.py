"""Long waits announce themselves, so that a scheduler above can lend out what they hold.

A request waiting in a long-poll does no work for as long as 30 seconds. The gateway's fair
scheduler bounds the requests in service; it installs a *wait hook* for each request it
admits, and the places that wait for data (a partition read at its end, a consumer-group
fetch) wrap the wait in :func:`waiting`, which gives the request's place back for the
length of the wait and takes one again, fairly, before the request goes on. Without a hook
(outside a request, in tests of this package) :func:`waiting` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar, Token

WaitHook = Callable[[], AbstractAsyncContextManager[None]]

_hook: ContextVar[WaitHook | None] = ContextVar("eventbus_wait_hook", default=None)


def set_wait_hook(hook: WaitHook | None) -> Token[WaitHook | None]:
    return _hook.set(hook)


def reset_wait_hook(token: Token[WaitHook | None]) -> None:
    _hook.reset(token)


@contextlib.asynccontextmanager
async def waiting() -> AsyncIterator[None]:
    """Wrap a wait for data that may last long."""
    hook = _hook.get()
    if hook is None:
        yield
    else:
        async with hook():
            yield
