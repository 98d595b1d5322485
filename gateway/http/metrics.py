"""Prometheus metrics of one server process, and of several summed into one text.

Requests are labelled by their route's template (``/v1/topics/{topic}``), never by the
path, so label sets stay bounded. What the request path counts is kept in plain integers
and lists (:class:`Metrics`) and turned into metric families only at scrape time: a
``prometheus_client`` counter or histogram takes a lock on every change, which every
request paid several times. What the server's other parts count is read by the collectors
of ``collectors.py``, at scrape time too.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Upper bounds of the request-time histogram's buckets (seconds): prometheus_client's.
LATENCY_BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)
_BUCKET_NAMES = tuple(str(floatToGoString(bound)) for bound in LATENCY_BUCKETS)  # type: ignore[no-untyped-call]
_FINITE_BOUNDS = LATENCY_BUCKETS[:-1]


class _Latency:
    """Request times of one (method, route): a count per bucket (not cumulative), the
    sum, and when the series began (the ``_created`` sample)."""

    __slots__ = ("counts", "total", "created")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.total = 0.0
        self.created = time.time()


class _Count:
    """One counter series: its value and when it began."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class Metrics:
    def __init__(self, gather: Callable[[], Awaitable[list[bytes]]] | None = None) -> None:
        """``gather`` answers the metrics text of the server's other processes."""
        self.registry = CollectorRegistry()
        # (method, route, status) -> its count and the (method, route) latency it shares.
        # Few series: methods and statuses are bounded, routes are the app's own.
        self._requests: dict[tuple[str, str, int], tuple[_Count, _Latency]] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        self.produced_records = _Count()
        self.produced_bytes = _Count()
        self.read_records = _Count()
        self._quota_refusals: dict[str, _Count] = {}
        self.registry.register(_RequestCollector(self))
        # The other worker processes' metrics, when there are others.
        self._gather = gather

    # --- the request path: plain integers ------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request and its time."""
        series = self._requests.get((method, route, status))
        if series is None:
            latency = self._latency.get((method, route))
            if latency is None:
                latency = self._latency[(method, route)] = _Latency()
            series = self._requests[(method, route, status)] = (_Count(), latency)
        series[0].value += 1
        latency = series[1]
        latency.counts[bisect.bisect_left(_FINITE_BOUNDS, seconds)] += 1
        latency.total += seconds

    def count_produced(self, records: int, nbytes: int) -> None:
        self.produced_records.value += records
        self.produced_bytes.value += nbytes

    def count_read(self, records: int) -> None:
        self.read_records.value += records

    def count_quota_refusal(self, quota: str) -> None:
        count = self._quota_refusals.get(quota)
        if count is None:
            count = self._quota_refusals[quota] = _Count()
        count.value += 1

    # --- scrapes -------------------------------------------------------------------------

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

    def families(self) -> Iterator[Metric]:
        """The request path's counts as metric families, named and typed as
        ``prometheus_client``'s own counters and histogram would name them."""
        requests = CounterMetricFamily(
            "eventbus_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        for (method, route, status), (count, _) in list(self._requests.items()):
            requests.add_metric([method, route, str(status)], count.value, created=count.created)
        yield requests
        latency = HistogramMetricFamily(
            "eventbus_http_request_seconds",
            "Time to answer an HTTP request",
            labels=["method", "route"],
        )
        for (method, route), series in list(self._latency.items()):
            cumulative, buckets = 0, []
            for name, in_bucket in zip(_BUCKET_NAMES, series.counts, strict=True):
                cumulative += in_bucket
                buckets.append((name, float(cumulative)))
            latency.add_metric([method, route], buckets, series.total)
            latency.add_sample(
                latency.name + "_created", {"method": method, "route": route}, series.created
            )
        yield latency
        for name, documentation, count in (
            ("eventbus_produced_records", "Records produced", self.produced_records),
            ("eventbus_produced_bytes", "Key and value bytes produced", self.produced_bytes),
            ("eventbus_read_records", "Records returned by reads", self.read_records),
        ):
            yield CounterMetricFamily(name, documentation, count.value, created=count.created)
        refusals = CounterMetricFamily(
            "eventbus_quota_refusals",
            "Requests refused by a tenant quota, by quota name (no tenant label)",
            labels=["quota"],
        )
        for quota, count in list(self._quota_refusals.items()):
            refusals.add_metric([quota], count.value, created=count.created)
        yield refusals


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


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
