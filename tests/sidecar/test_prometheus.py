"""Prometheus text exposition of OTel metrics: names, types, buckets, escaping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from openai_runtime_sidecar.prometheus import PrometheusReader, metric_name, render

CUMULATIVE = AggregationTemporality.CUMULATIVE


def number(value: float, **attributes: Any) -> NumberDataPoint:
    return NumberDataPoint(attributes, 0, 1, value)


def histogram_point(
    bounds: Sequence[float], counts: Sequence[int], total: float, **attributes: Any
) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes, 0, 1, sum(counts), total, counts, bounds, min=0.0, max=total
    )


def wrap(*metrics: Metric, scope: str = "test") -> MetricsData:
    scoped = ScopeMetrics(InstrumentationScope(scope), list(metrics), "")
    return MetricsData([ResourceMetrics(Resource({}), [scoped], "")])


def test_render_a_known_set_of_metrics() -> None:
    data = wrap(
        Metric(
            "openai_runtime.cost",
            "Cost of the calls in US dollars.",
            "USD",
            Sum([number(0.3, model="gpt-4o", estimated=False)], CUMULATIVE, is_monotonic=True),
        ),
        Metric(
            "openai_runtime.requests.in_flight",
            "Calls being served now.",
            "{request}",
            Sum([number(2, runtime="a/b")], CUMULATIVE, is_monotonic=False),
        ),
        Metric(
            "gen_ai.client.operation.duration",
            "Duration.",
            "s",
            Histogram(
                [histogram_point([0.5, 1, 2.5], [1, 0, 2, 1], 7.25, **{"error.type": "x"})],
                CUMULATIVE,
            ),
        ),
        Metric("openai_runtime.circuit.state", "", "", Gauge([number(1, state="half_open")])),
    )
    assert render(data) == (
        "# HELP gen_ai_client_operation_duration_seconds Duration.\n"
        "# TYPE gen_ai_client_operation_duration_seconds histogram\n"
        'gen_ai_client_operation_duration_seconds_bucket{error_type="x",le="0.5"} 1\n'
        'gen_ai_client_operation_duration_seconds_bucket{error_type="x",le="1.0"} 1\n'
        'gen_ai_client_operation_duration_seconds_bucket{error_type="x",le="2.5"} 3\n'
        'gen_ai_client_operation_duration_seconds_bucket{error_type="x",le="+Inf"} 4\n'
        'gen_ai_client_operation_duration_seconds_sum{error_type="x"} 7.25\n'
        'gen_ai_client_operation_duration_seconds_count{error_type="x"} 4\n'
        "# TYPE openai_runtime_circuit_state gauge\n"
        'openai_runtime_circuit_state{state="half_open"} 1\n'
        "# HELP openai_runtime_cost_usd_total Cost of the calls in US dollars.\n"
        "# TYPE openai_runtime_cost_usd_total counter\n"
        'openai_runtime_cost_usd_total{estimated="false",model="gpt-4o"} 0.3\n'
        "# HELP openai_runtime_requests_in_flight Calls being served now.\n"
        "# TYPE openai_runtime_requests_in_flight gauge\n"
        'openai_runtime_requests_in_flight{runtime="a/b"} 2\n'
    )


def test_histogram_buckets_are_cumulative_and_end_at_the_count() -> None:
    counts = [3, 0, 5, 0, 2, 1]
    data = wrap(
        Metric(
            "gen_ai.client.token.usage",
            None,
            "{token}",
            Histogram([histogram_point([1, 4, 16, 64, 256], counts, 500)], CUMULATIVE),
        )
    )
    lines = render(data).splitlines()
    buckets = [int(line.rsplit(" ", 1)[1]) for line in lines if "_bucket{" in line]
    assert buckets == [3, 3, 8, 8, 10, 11]
    assert buckets == sorted(buckets)
    assert "gen_ai_client_token_usage_count 11" in lines
    assert "gen_ai_client_token_usage_sum 500" in lines
    assert lines[0] == "# TYPE gen_ai_client_token_usage histogram"  # no HELP when none given


def test_label_values_are_escaped() -> None:
    nasty = 'a\\b "quoted"\nnext'
    data = wrap(Metric("m", "help with \\ and\nnewline", "", Gauge([number(1, path=nasty)])))
    assert render(data) == (
        "# HELP m help with \\\\ and\\nnewline\n"
        "# TYPE m gauge\n"
        'm{path="a\\\\b \\"quoted\\"\\nnext"} 1\n'
    )


def test_label_names_and_values_of_every_type() -> None:
    point = number(
        1, **{"http.status-code": 200, "1st": "x", "flag": True, "ratio": 0.5, "tags": ["a", "b"]}
    )
    text = render(wrap(Metric("m", "", "", Gauge([point]))))
    assert text.splitlines()[1] == (
        'm{_1st="x",flag="true",http_status_code="200",ratio="0.5",tags="[\\"a\\", \\"b\\"]"} 1'
    )


@pytest.mark.parametrize(
    ("name", "unit", "counter", "gauge", "expected"),
    [
        ("gen_ai.client.operation.duration", "s", False, False,
         "gen_ai_client_operation_duration_seconds"),
        ("gen_ai.client.token.usage", "{token}", False, False, "gen_ai_client_token_usage"),
        ("openai_runtime.requests", "{request}", True, False, "openai_runtime_requests_total"),
        ("openai_runtime.cost", "USD", True, False, "openai_runtime_cost_usd_total"),
        ("http.server.request.size", "By", False, False, "http_server_request_size_bytes"),
        ("queue.latency_seconds", "s", False, False, "queue_latency_seconds"),
        ("jobs_total", "", True, False, "jobs_total"),
        ("cpu.utilization", "1", False, True, "cpu_utilization_ratio"),
        ("cpu.time", "1", True, False, "cpu_time_total"),
        ("net.throughput", "By/s", False, True, "net_throughput_bytes_per_second"),
        ("weird..name--x", "", False, False, "weird_name_x"),
        ("9lives", "", False, False, "_9lives"),
    ],
)  # fmt: skip
def test_metric_names(name: str, unit: str, counter: bool, gauge: bool, expected: str) -> None:
    assert metric_name(name, unit, counter=counter, gauge=gauge) == expected


def test_special_values() -> None:
    data = wrap(
        Metric(
            "g",
            "",
            "",
            Gauge([number(math.inf, k="a"), number(-math.inf, k="b"), number(math.nan, k="c")]),
        ),
    )
    assert render(data).splitlines()[1:] == ['g{k="a"} +Inf', 'g{k="b"} -Inf', 'g{k="c"} NaN']


def test_same_name_from_two_scopes_is_one_family_and_a_delta_sum_is_not_a_counter() -> None:
    first = ScopeMetrics(
        InstrumentationScope("one"),
        [Metric("c", "", "", Sum([number(1, s="1")], CUMULATIVE, is_monotonic=True))],
        "",
    )
    second = ScopeMetrics(
        InstrumentationScope("two"),
        [Metric("c", "", "", Sum([number(2, s="2")], CUMULATIVE, is_monotonic=True))],
        "",
    )
    delta = ScopeMetrics(
        InstrumentationScope("three"),
        [Metric("d", "", "", Sum([number(5)], AggregationTemporality.DELTA, is_monotonic=True))],
        "",
    )
    data = MetricsData([ResourceMetrics(Resource({}), [first, second, delta], "")])
    assert render(data) == (
        '# TYPE c_total counter\nc_total{s="1"} 1\nc_total{s="2"} 2\n# TYPE d gauge\nd 5\n'
    )


def test_nothing_to_render() -> None:
    assert render(None) == ""
    assert render(MetricsData([])) == ""


def test_reader_collects_on_demand_and_cumulatively() -> None:
    reader = PrometheusReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("test")
        counter = meter.create_counter("hits", unit="{hit}")
        histogram = meter.create_histogram(
            "wait", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0]
        )
        counter.add(2, {"k": "v"})
        histogram.record(0.05)
        first = reader.text()
        counter.add(3, {"k": "v"})
        histogram.record(5.0)
        second = reader.text()
    finally:
        provider.shutdown()
    assert 'hits_total{k="v"} 2' in first.splitlines()
    # Cumulative: the second scrape includes the first one's counts.
    assert 'hits_total{k="v"} 5' in second.splitlines()
    assert [line for line in second.splitlines() if line.startswith("wait_seconds_")] == [
        'wait_seconds_bucket{le="0.1"} 1',
        'wait_seconds_bucket{le="1.0"} 1',
        'wait_seconds_bucket{le="+Inf"} 2',
        "wait_seconds_sum 5.05",
        "wait_seconds_count 2",
    ]


def test_unregistered_reader_renders_nothing() -> None:
    assert PrometheusReader().text() == ""
