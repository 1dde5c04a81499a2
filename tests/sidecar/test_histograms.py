"""Plain histograms reach every reader, cumulative or delta, with OTel's bucket rules."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from openai_runtime_sidecar.histograms import PlainHistogram, attach
from openai_runtime_sidecar.prometheus import render

SCOPE = InstrumentationScope("openai_runtime_sidecar")


def setup(
    temporality: AggregationTemporality = AggregationTemporality.CUMULATIVE,
) -> tuple[PlainHistogram, InMemoryMetricReader, Any]:
    histogram = PlainHistogram("op.duration", "s", "How long.", (0.1, 1.0))
    reader = InMemoryMetricReader(preferred_temporality={HistogramInstrument: temporality})
    resource = Resource.create({"service.name": "t"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    # An SDK instrument alongside, as in the sidecar: both must arrive together.
    counter = provider.get_meter(SCOPE.name).create_counter("calls")
    attach(reader, [histogram], SCOPE, resource)
    return histogram, reader, counter


def collected(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    [resource_metrics] = data.resource_metrics
    [scope_metrics] = resource_metrics.scope_metrics  # one scope: merged, not doubled
    return {metric.name: metric.data for metric in scope_metrics.metrics}


def test_buckets_follow_otel_upper_inclusive_bounds() -> None:
    histogram, reader, counter = setup()
    counter.add(1)
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.record(value, {"b": "x", "a": 1})
    histogram.record(0.2, {"a": 1, "b": "x"})  # the same series in another order
    data = collected(reader)
    assert set(data) == {"calls", "op.duration"}
    [point] = data["op.duration"].data_points
    assert point.attributes == {"a": 1, "b": "x"}
    assert list(point.bucket_counts) == [2, 3, 1]
    assert point.count == 6 and point.sum == sum((0.05, 0.1, 0.5, 1.0, 7.0, 0.2))
    assert (point.min, point.max) == (0.05, 7.0)


def test_a_delta_reader_gets_what_changed_since_its_last_collection() -> None:
    histogram, reader, counter = setup(AggregationTemporality.DELTA)
    counter.add(1)
    histogram.record(0.5, {"k": "a"})
    histogram.record(0.5, {"k": "b"})
    first = collected(reader)["op.duration"]
    assert first.aggregation_temporality is AggregationTemporality.DELTA
    assert len(first.data_points) == 2

    histogram.record(2.0, {"k": "a"})
    second = collected(reader)["op.duration"]
    [point] = second.data_points  # b did not change: no point
    assert point.attributes == {"k": "a"}
    assert list(point.bucket_counts) == [0, 0, 1] and point.count == 1 and point.sum == 2.0
    assert point.start_time_unix_nano == first.data_points[0].time_unix_nano


def test_prometheus_renders_them_like_sdk_histograms() -> None:
    histogram, reader, counter = setup()
    counter.add(1)
    histogram.record(0.5, {"k": "a"})
    text = render(reader.get_metrics_data())
    assert "# TYPE op_duration_seconds histogram" in text
    assert 'op_duration_seconds_bucket{k="a",le="0.1"} 0' in text
    assert 'op_duration_seconds_bucket{k="a",le="1.0"} 1' in text
    assert 'op_duration_seconds_bucket{k="a",le="+Inf"} 1' in text
    assert 'op_duration_seconds_count{k="a"} 1' in text


def test_nothing_recorded_adds_nothing() -> None:
    _, reader, counter = setup()
    counter.add(1)
    assert set(collected(reader)) == {"calls"}
