"""Typed keys of the application's state."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.broker import Broker
from gateway.config import ServerConfig
from gateway.metrics import Metrics

CONFIG = web.AppKey("config", ServerConfig)
BROKER = web.AppKey("broker", Broker)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", dict[str, Any])
