"""Structured logs: one JSON object per line, with the request id of the request at hand."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. At ``--log-level INFO`` (the default) every request writes
    one, so a line is cheap to make: the time's whole second is formatted once per second,
    and the object is written by orjson."""

    worker: int | None = None
    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson cannot write (an integer past 64 bits)
            return json.dumps(entry, default=str)


class MalformedRequests(logging.Filter):
    """A request the HTTP parser refuses (a NUL in a header, a broken request line) is a
    client's mistake answered 400, not a server failure: one line at info, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and error.code == 400:
            record.msg = "refused a malformed HTTP request: %s"
            record.args = (str(error.message).splitlines()[0] if error.message else "",)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def configure(level: str = "INFO", *, worker: int | None = None) -> None:
    """JSON lines on stderr; a worker process of several names itself in each line."""
    # Nothing writes the thread or the process of a line: no record looks them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    formatter.worker = worker
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log repeats what our own request log says.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())


def log_if_died(logger: logging.Logger, task: asyncio.Task[Any]) -> None:
    """Done callback of a background task (``partial(log_if_died, log)``): one that died
    rather than being cancelled is logged, with its traceback, on ``logger``."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s died", task.get_name(), exc_info=task.exception())
