"""Prometheus metrics of one server process.

Label sets stay bounded: routes are labelled by their template (``/v1/topics/{topic}``),
never by the path, and nothing is labelled by topic or partition, which come and go, except
the ten busiest partitions' write rates (``gateway/autoscaling.py``; left out when metrics
are public, since they name tenants and topics). Per-partition numbers are summed over the
partitions at scrape time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from partitions.idempotency import AnswerTable
from partitions.worker import WorkerTotals


class _WorkerCollector(Collector):
    def __init__(self, totals: Callable[[], WorkerTotals], waiting: Callable[[], int]) -> None:
        self._totals = totals
        self._waiting = waiting

    def collect(self) -> Iterator[Metric]:
        totals = self._totals()
        yield GaugeMetricFamily(
            "eventbus_partitions_open", "Partition logs open here", totals.partitions_open
        )
        yield CounterMetricFamily(
            "eventbus_log_appends", "Batches appended durably", totals.appends
        )
        yield CounterMetricFamily(
            "eventbus_log_group_commits", "fsyncs that made appends durable", totals.group_commits
        )
        yield CounterMetricFamily(
            "eventbus_long_poll_wakeups",
            "Times a waiting reader was woken by new data (one per publish it saw)",
            totals.wait_wakeups,
        )
        yield GaugeMetricFamily(
            "eventbus_long_polls_waiting", "Reads waiting for data now", self._waiting()
        )


class _IdempotencyCollector(Collector):
    def __init__(self, broker: BrokerLike) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        table = self._broker.answers
        yield GaugeMetricFamily(
            "eventbus_idempotency_entries",
            "Idempotent produce requests remembered (for ten minutes each)",
            len(table),
        )
        yield CounterMetricFamily(
            "eventbus_idempotency_replays",
            "Produce retries answered from memory without appending",
            self._broker.idempotent_replays,
        )
        yield CounterMetricFamily(
            "eventbus_idempotency_forgotten_early",
            "Answers dropped before ten minutes because the table was full",
            table.forgotten_early,
        )


class SchedulerLike(Protocol):
    @property
    def in_service(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def admitted(self) -> int: ...


class _SchedulerCollector(Collector):
    def __init__(self, scheduler: SchedulerLike) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "eventbus_requests_in_service",
            "Tenant requests being served now (at most --max-concurrent-requests)",
            self._scheduler.in_service,
        )
        yield GaugeMetricFamily(
            "eventbus_requests_queued",
            "Tenant requests waiting for their turn",
            self._scheduler.queued,
        )
        yield CounterMetricFamily(
            "eventbus_requests_admitted",
            "Tenant requests admitted to service (long-polls again after their wait)",
            self._scheduler.admitted,
        )


class BrokerLike(Protocol):
    @property
    def answers(self) -> AnswerTable: ...

    @property
    def idempotent_replays(self) -> int: ...


class Metrics:
    def __init__(self) -> None:
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
        # The other worker processes' metrics, when there are others (gateway/cluster.py).
        self.gather: Callable[[], Awaitable[list[bytes]]] | None = None

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

    def watch_worker(self, totals: Callable[[], WorkerTotals], waiting: Callable[[], int]) -> None:
        self.registry.register(_WorkerCollector(totals, waiting))

    def watch_idempotency(self, broker: BrokerLike) -> None:
        self.registry.register(_IdempotencyCollector(broker))

    def watch_scheduler(self, scheduler: SchedulerLike) -> None:
        self.registry.register(_SchedulerCollector(scheduler))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def render_all(self) -> tuple[bytes, str]:
        """This process's metrics, summed with the other worker processes' (``gather``)."""
        body, content_type = self.render()
        if self.gather is None:
            return body, content_type
        return merge_metrics([body, *await self.gather()]), content_type


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
