"""Typed keys of the application's state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.broker.service import Broker
from gateway.config import Clocks, ServerConfig
from gateway.metrics import Metrics

CONFIG = web.AppKey("config", ServerConfig)
CLOCKS = web.AppKey("clocks", Clocks)
BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", dict[str, Any])
