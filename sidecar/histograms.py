"""Histograms kept in plain Python, turned into OpenTelemetry points when a reader collects.

Where it sits in the flow::

    CallTrace.finish() --record()--> PlainHistogram (a list of bucket counts per series)
    scrape (GET /metrics) / OTLP export / any reader's collect
        --> the reader's MetricsData, with these histograms added (attach())

Recording through the SDK's ``Histogram`` costs an attribute set, a lock and
a measurement object per call and per reader: three of them per call were a
sixth of the request handler's time. Here a record is a dict lookup, a
bisect and two additions; the points are built only when someone reads them.
Every reader still sees them (the Prometheus scrape, the OTLP exporter, a
test's in-memory reader): :func:`attach` adds them to what the reader
receives, cumulative or as deltas since its last collection, whichever the
reader asked for.

Collections may run on another thread (the OTLP reader's, the scrape's
worker) while the loop records: each series is copied in one step (``list()``
of a list is atomic under the interpreter lock) and its count is the sum of
that copy, so ``count`` always equals the last bucket of the cumulative form.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue

__all__ = ["PlainHistogram", "attach"]

_Key = tuple[tuple[str, AttributeValue], ...]


class _Series:
    __slots__ = ("counts", "max", "min", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class PlainHistogram:
    """One histogram instrument: explicit bucket bounds, one series per attribute set."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(float(bound) for bound in bounds)
        self._series: dict[_Key, _Series] = {}
        self.start_ns = time.time_ns()

    def record(self, value: float, attributes: Mapping[str, AttributeValue]) -> None:
        key = tuple(sorted(attributes.items()))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(len(self.bounds) + 1)
        # OTel buckets are (previous bound, bound]: bisect_left puts a value
        # equal to a bound in that bound's bucket.
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value
        if value < series.min:
            series.min = value
        if value > series.max:
            series.max = value

    def snapshot(self) -> list[tuple[_Key, list[int], float, float, float]]:
        """Every series as (attributes, bucket counts, sum, min, max), copied."""
        return [
            (key, list(series.counts), series.sum, series.min, series.max)
            for key, series in list(self._series.items())
        ]


class _Attachment:
    """What one reader receives: the SDK's data plus the plain histograms."""

    def __init__(
        self,
        histograms: Sequence[PlainHistogram],
        scope: InstrumentationScope,
        resource: Resource,
        delta: bool,
    ) -> None:
        self._histograms = histograms
        self._scope = scope
        self._resource = resource
        self._delta = delta
        # Delta readers: what the last collection reported, per histogram and series.
        self._last: dict[str, dict[_Key, tuple[list[int], float]]] = {}
        self._last_ns: dict[str, int] = {}

    def metrics(self, now_ns: int) -> list[Metric]:
        out = []
        temporality = (
            AggregationTemporality.DELTA if self._delta else AggregationTemporality.CUMULATIVE
        )
        for histogram in self._histograms:
            points = self._points(histogram, now_ns)
            if points:
                data = Histogram(data_points=points, aggregation_temporality=temporality)
                out.append(Metric(histogram.name, histogram.description, histogram.unit, data))
        return out

    def _points(self, histogram: PlainHistogram, now_ns: int) -> list[HistogramDataPoint]:
        points = []
        start = histogram.start_ns
        last: dict[_Key, tuple[list[int], float]] = {}
        if self._delta:
            last = self._last.get(histogram.name, {})
            start = self._last_ns.get(histogram.name, start)
            self._last_ns[histogram.name] = now_ns
        seen: dict[_Key, tuple[list[int], float]] = {}
        for key, counts, total, low, high in histogram.snapshot():
            seen[key] = (counts, total)
            if self._delta and key in last:
                before, before_total = last[key]
                counts = [now - then for now, then in zip(counts, before, strict=True)]
                total -= before_total
                if not any(counts):
                    continue
            points.append(
                HistogramDataPoint(
                    attributes=dict(key),
                    start_time_unix_nano=start,
                    time_unix_nano=now_ns,
                    count=sum(counts),
                    sum=total,
                    bucket_counts=counts,
                    explicit_bounds=list(histogram.bounds),
                    # Delta points keep the lifetime extremes: the interval's are not tracked.
                    min=low,
                    max=high,
                    exemplars=[],
                )
            )
        if self._delta:
            self._last[histogram.name] = seen
        return points

    def merge(self, data: MetricsData) -> MetricsData:
        extra = self.metrics(time.time_ns())
        if not extra:
            return data
        resource_metrics = list(data.resource_metrics)
        if not resource_metrics:
            resource_metrics = [ResourceMetrics(self._resource, [], "")]
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for index, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self._scope.name:
                merged = [*scope_metrics.metrics, *extra]
                scopes[index] = ScopeMetrics(scope_metrics.scope, merged, scope_metrics.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(self._scope, extra, ""))
        resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resource_metrics=resource_metrics)


def attach(
    reader: MetricReader,
    histograms: Sequence[PlainHistogram],
    scope: InstrumentationScope,
    resource: Resource,
) -> None:
    """Make ``reader`` receive ``histograms`` with everything else it collects.

    A reader hands what it collected to its ``_receive_metrics``, the method
    every reader implements (an exporter's, Prometheus', an in-memory one);
    wrapping it on this one instance is the one place the SDK lets data that
    is not an SDK instrument reach every kind of reader.
    """
    # What the reader was built with (an OTLP exporter's, from
    # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE); cumulative otherwise.
    preferred = (reader._preferred_temporality or {}).get(HistogramInstrument)
    attachment = _Attachment(
        histograms, scope, resource, delta=preferred is AggregationTemporality.DELTA
    )
    receive = reader._receive_metrics

    def receive_with_histograms(metrics_data: MetricsData, *args: Any, **kwargs: Any) -> None:
        receive(attachment.merge(metrics_data), *args, **kwargs)

    reader._receive_metrics = receive_with_histograms  # type: ignore[method-assign]
