"""Prometheus metrics of one server process, and of several summed into one text.

Requests are labelled by their route's template (``/v1/topics/{topic}``), never by the
path, so label sets stay bounded; what the server's parts count is read by the collectors
of ``collectors.py`` at scrape time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Metrics:
    def __init__(self, gather: Callable[[], Awaitable[list[bytes]]] | None = None) -> None:
        """``gather`` answers the metrics text of the server's other processes."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "eventbus_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventbus_http_request_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=self.registry,
        )
        # Series by (method, route, status): looked up once each, not on every request. Few:
        # methods and statuses are bounded, routes are the app's own.
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.produced_records = Counter(
            "eventbus_produced_records", "Records produced", registry=self.registry
        )
        self.produced_bytes = Counter(
            "eventbus_produced_bytes", "Key and value bytes produced", registry=self.registry
        )
        self.read_records = Counter(
            "eventbus_read_records", "Records returned by reads", registry=self.registry
        )
        self.quota_refusals = Counter(
            "eventbus_quota_refusals",
            "Requests refused by a tenant quota, by quota name (no tenant label)",
            ["quota"],
            registry=self.registry,
        )
        # The other worker processes' metrics, when there are others.
        self._gather = gather

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request and its time."""
        series = self._request_series.get((method, route, status))
        if series is None:
            series = self._request_series[(method, route, status)] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def watch(self, collector: Collector) -> None:
        """Add a collector's families to every scrape."""
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def render_all(self) -> tuple[bytes, str]:
        """This process's metrics, summed with the other worker processes' (``gather``)."""
        body, content_type = self.render()
        if self._gather is None:
            return body, content_type
        return merge_metrics([body, *await self._gather()]), content_type


def merge_metrics(texts: list[bytes]) -> bytes:
    """Prometheus text from several processes as one: samples with the same name and
    labels add up (``*_created`` timestamps keep the earliest); families keep the order
    they first appear in."""
    order: list[str] = []
    comments: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.decode().splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in comments:
                        comments[family] = []
                        samples[family] = {}
                        order.append(family)
                    if line not in comments[family]:
                        comments[family].append(line)
                continue
            series, _, value = line.rpartition(" ")
            target = samples.setdefault(family, {})
            if family not in comments:
                comments[family] = []
                order.append(family)
            number = float(value)
            if series in target:
                name = series.split("{", 1)[0]
                old = target[series]
                target[series] = min(old, number) if name.endswith("_created") else old + number
            else:
                target[series] = number
    out: list[str] = []
    for family in order:
        out.extend(comments[family])
        out.extend(f"{series} {_number(value)}" for series, value in samples[family].items())
    return ("\n".join(out) + "\n").encode()


def _number(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]
