"""Prometheus metrics of the server itself, in a registry per application."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lunasentri_core.model import SeriesValue

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lunasentri_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lunasentri_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingested_points = Counter(
            "lunasentri_ingested_points", "Points committed by ingest.", registry=self.registry
        )
        self.write_batch_points = Histogram(
            "lunasentri_write_transaction_points",
            "Points per storage write transaction (coalesced ingest batches).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "lunasentri_write_queue_depth",
            "Ingest batches waiting for the writer.",
            registry=self.registry,
        )

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def expose_series(self, latest: Callable[[], Iterable[tuple[str, SeriesValue]]]) -> None:
        """Opt-in: the latest stored value of every series, labelled by machine name."""
        self.registry.register(_SeriesCollector(latest))


class _SeriesCollector(Collector):
    """Runs in the thread that renders /metrics, so it may read storage directly."""

    def __init__(self, latest: Callable[[], Iterable[tuple[str, SeriesValue]]]) -> None:
        self._latest = latest

    def collect(self) -> Iterable[Metric]:
        by_name: dict[str, list[tuple[str, SeriesValue]]] = {}
        for machine_name, value in self._latest():
            name = "lunasentri_" + value.series.metric.replace(".", "_")
            by_name.setdefault(name, []).append((machine_name, value))
        return [_family(name, values) for name, values in sorted(by_name.items())]

    def describe(self) -> Iterable[Metric]:
        return []


def _family(name: str, values: list[tuple[str, SeriesValue]]) -> GaugeMetricFamily:
    # One family per name: Prometheus needs the same label names on every sample of
    # a metric, so series lacking a label get it empty.
    label_names = sorted({label for _, v in values for label, _ in v.series.labels} - {"machine"})
    family = GaugeMetricFamily(
        name, f"Latest stored {values[0][1].series.metric}.", labels=["machine", *label_names]
    )
    for machine_name, value in values:
        labels = dict(value.series.labels)
        family.add_metric(
            [machine_name, *(labels.get(label, "") for label in label_names)],
            value.value,
            timestamp=value.timestamp.timestamp(),
        )
    return family
