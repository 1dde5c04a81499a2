"""Telemetry: spans continue the app's trace, metrics equal the call's outcome, no content leaks."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from openai_runtime_sidecar import telemetry as telemetry_module
from openai_runtime_sidecar.runner import ManualClock
from openai_runtime_sidecar.runner.credentials import CredentialSnapshot, ReloadOutcome
from openai_runtime_sidecar.runner.errors import RateLimited, UpstreamUnavailable
from openai_runtime_sidecar.runner.pricing import Cost
from openai_runtime_sidecar.runner.results import CallOutcome, Usage
from openai_runtime_sidecar.telemetry import CallTrace, Telemetry
from tests.support import points

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{APP_SPAN_ID}-01"
# Strings that must never leave the process through telemetry.
SECRET_KEY = "sk-SENTINEL-KEY-do-not-export-0123456789"
SECRET_PROMPT = "SENTINEL-PROMPT: my account number is zq4242"
FINGERPRINT = "sha256:abcdef012345"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def clock() -> ManualClock:
    """The telemetry's clock, moved by hand."""
    return ManualClock(1000.0)


@pytest.fixture
def telemetry(
    provider: TracerProvider, reader: InMemoryMetricReader, clock: ManualClock
) -> Iterator[Telemetry]:
    made = Telemetry(
        runtime="team-a/chat",
        variant="direct",
        server_address="api.openai.com",
        tracer_provider=provider,
        metric_readers=[reader],
        environ={},
        clock=clock,
    )
    yield made
    made.shutdown()


def make_info(
    *,
    stream: bool = False,
    usage: Usage | None = None,
    cost: Cost | None = None,
    attempts: int = 1,
) -> CallOutcome:
    return CallOutcome(
        stream=stream,
        variant="direct",
        server_address="api.openai.com",
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        response_id="chatcmpl-123",
        request_id="req-abc",
        status=200,
        usage=usage if usage is not None else Usage(123, 45, 168, cached_tokens=100),
        finish_reasons=("stop",),
        attempts=attempts,
        credential_fingerprint=FINGERPRINT,
        cost=cost if cost is not None else price(0.000123456789),
    )


def price(usd: float, *, estimated: bool = False) -> Cost:
    return Cost(
        usd=usd,
        input_usd=usd / 2,
        cached_input_usd=0.0,
        output_usd=usd / 2,
        model="gpt-4o",
        priced=True,
        estimated=estimated,
    )


def rate_limited(message: str = "Rate limit reached") -> RateLimited:
    payload = {"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}}
    return RateLimited(message, status=429, body=message.encode(), payload=payload)


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def one(found: dict[str, list[Any]], name: str, **attributes: Any) -> Any:
    matching = [
        point
        for point in found.get(name, [])
        if all((point.attributes or {}).get(key) == value for key, value in attributes.items())
    ]
    assert len(matching) == 1, (name, attributes, found.get(name))
    return matching[0]


def run_call(trace: CallTrace, info: CallOutcome) -> dict[str, str]:
    upstream = trace.attempt_started(1)
    trace.attempt_finished(1, 200, None)
    trace.finish(info, status=200)
    return upstream


# -- spans ---------------------------------------------------------------------


def test_call_span_continues_the_app_trace_and_upstream_sees_the_attempt_span(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    headers = {"Traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    trace = telemetry.start_call(headers, model="gpt-4o", stream=False)
    upstream = run_call(trace, make_info())

    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"chat gpt-4o", "attempt 1"}
    call, attempt = spans["chat gpt-4o"], spans["attempt 1"]
    assert call.kind is SpanKind.CLIENT and attempt.kind is SpanKind.CLIENT
    assert format(call.context.trace_id, "032x") == TRACE_ID
    assert call.parent is not None and format(call.parent.span_id, "016x") == APP_SPAN_ID
    assert call.parent.is_remote
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert attempt.context.trace_id == call.context.trace_id
    assert trace.trace_id == TRACE_ID
    # Upstream is told about the attempt span, not the call span nor the app's.
    assert upstream == {
        "traceparent": f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01",
        "tracestate": "vendor=abc",
    }


def test_call_span_attributes(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    trace = telemetry.start_call({}, model="gpt-4o", stream=False)
    run_call(trace, make_info(attempts=1))
    call = by_name(exporter.get_finished_spans())["chat gpt-4o"]
    assert call.parent is None  # no traceparent: a new trace
    assert dict(call.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "server.address": "api.openai.com",
        "openai_runtime.runtime": "team-a/chat",
        "openai_runtime.stream": False,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "chatcmpl-123",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 123,
        "gen_ai.usage.output_tokens": 45,
        "openai_runtime.usage.cached_tokens": 100,
        "openai_runtime.usage.reasoning_tokens": 0,
        "openai_runtime.usage.estimated": False,
        "openai_runtime.cost.usd": 0.000123456789,
        "openai_runtime.cost.estimated": False,
        "openai_runtime.cost.priced": True,
        "openai_runtime.attempts": 1,
        "openai_runtime.upstream.request_id": "req-abc",
        "openai_runtime.credential.fingerprint": FINGERPRINT,
        "openai_runtime.backend": "primary",
        "http.response.status_code": 200,
    }
    assert call.status.status_code is StatusCode.UNSET


def test_azure_provider_name(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    azure = Telemetry(
        runtime="team-a/chat",
        variant="azure",
        server_address="res.openai.azure.com",
        tracer_provider=provider,
        environ={},
    )
    try:
        azure.start_call({}, model="gpt-4o", stream=True).finish(make_info(), status=200)
    finally:
        azure.shutdown()
    (call,) = exporter.get_finished_spans()
    attributes = call.attributes or {}
    assert attributes["gen_ai.provider.name"] == "azure.ai.openai"
    assert attributes["gen_ai.system"] == "azure.ai.openai"
    assert attributes["openai_runtime.stream"] is True


def test_set_request_names_the_span_once_the_body_is_read(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    trace = telemetry.start_call({}, model=None, stream=False)
    trace.set_request(model="gpt-4o-mini", stream=True)
    trace.finish(make_info(stream=True), status=200)
    (call,) = exporter.get_finished_spans()
    assert call.name == "chat gpt-4o-mini"
    assert (call.attributes or {})["gen_ai.request.model"] == "gpt-4o-mini"
    assert (call.attributes or {})["openai_runtime.stream"] is True


def test_a_retry_is_a_second_attempt_span_and_a_retry_count(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    trace = telemetry.start_call({"traceparent": TRACEPARENT}, model="gpt-4o", stream=False)
    first = trace.attempt_started(1)
    trace.attempt_finished(1, 429, rate_limited())
    second = trace.attempt_started(2)
    trace.attempt_finished(2, 200, None)
    trace.finish(make_info(attempts=2), status=200)

    spans = by_name(exporter.get_finished_spans())
    call, one_, two = spans["chat gpt-4o"], spans["attempt 1"], spans["attempt 2"]
    for attempt in (one_, two):
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert first["traceparent"] != second["traceparent"]
    assert second["traceparent"].split("-")[2] == f"{two.context.span_id:016x}"
    assert one_.status.status_code is StatusCode.ERROR
    assert (one_.attributes or {})["error.type"] == "RateLimited"
    assert (one_.attributes or {})["http.response.status_code"] == 429
    assert "http.request.resend_count" not in (one_.attributes or {})
    assert two.status.status_code is StatusCode.UNSET
    assert (two.attributes or {})["http.request.resend_count"] == 1
    assert (call.attributes or {})["openai_runtime.attempts"] == 2
    assert call.status.status_code is StatusCode.UNSET  # the call itself succeeded

    found = points(reader)
    retry = one(found, "openai_runtime.retries")
    assert retry.value == 1
    assert dict(retry.attributes) == {"error.type": "RateLimited", "runtime": "team-a/chat"}


def test_final_upstream_error_marks_the_call_span(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    error = UpstreamUnavailable("The server had an error", status=503)
    info = replace(make_info(), usage=None, cost=None, response_model=None, finish_reasons=())
    trace = telemetry.start_call({}, model="gpt-4o", stream=False)
    trace.attempt_started(1)
    trace.attempt_finished(1, 503, error)
    trace.finish(info, status=503, error=error)

    call = by_name(exporter.get_finished_spans())["chat gpt-4o"]
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "UpstreamUnavailable"
    assert (call.attributes or {})["error.type"] == "UpstreamUnavailable"
    assert (call.attributes or {})["http.response.status_code"] == 503
    found = points(reader)
    assert "gen_ai.client.token.usage" not in found
    assert "openai_runtime.cost" not in found
    duration = one(found, "gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "UpstreamUnavailable"
    assert one(found, "openai_runtime.requests", outcome="UpstreamUnavailable").value == 1


def test_an_error_raised_while_streaming_is_read_from_info(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    info = replace(make_info(stream=True), error=UpstreamUnavailable("stream broke", status=200))
    telemetry.start_call({}, model="gpt-4o", stream=True).finish(info, status=200)
    (call,) = exporter.get_finished_spans()
    assert (call.attributes or {})["error.type"] == "UpstreamUnavailable"


def test_a_request_that_never_reached_the_runner(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    trace = telemetry.start_call({}, model=None, stream=False)
    trace.finish(None, status=400, error_type="invalid_json")

    (call,) = exporter.get_finished_spans()
    assert call.name == "chat"
    assert (call.attributes or {})["error.type"] == "invalid_json"
    assert (call.attributes or {})["http.response.status_code"] == 400
    assert call.status.status_code is StatusCode.ERROR
    found = points(reader)
    request = one(found, "openai_runtime.requests")
    assert dict(request.attributes) == {
        "outcome": "invalid_json",
        "stream": False,
        "runtime": "team-a/chat",
        "backend": "primary",
    }
    assert one(found, "openai_runtime.requests.in_flight").value == 0
    assert one(found, "gen_ai.client.operation.duration").attributes["error.type"] == (
        "invalid_json"
    )


def test_an_http_error_without_a_type_is_named_by_its_status(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    telemetry.start_call({}, model=None, stream=False).finish(None, status=502)
    (call,) = exporter.get_finished_spans()
    assert (call.attributes or {})["error.type"] == "502"


def test_finish_is_idempotent_and_ends_a_dangling_attempt(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    trace = telemetry.start_call({}, model="gpt-4o", stream=False)
    trace.attempt_started(1)  # cancelled before upstream answered: no attempt_finished
    trace.finish(None, status=499, error_type="client_disconnected")
    trace.finish(None, status=499, error_type="client_disconnected")

    spans = by_name(exporter.get_finished_spans())
    assert len(exporter.get_finished_spans()) == 2
    assert (spans["attempt 1"].attributes or {})["error.type"] == "client_disconnected"
    found = points(reader)
    assert one(found, "openai_runtime.requests").value == 1
    assert one(found, "openai_runtime.requests.in_flight").value == 0


def test_a_sampled_out_parent_still_propagates_and_counts(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    traceparent = f"00-{TRACE_ID}-{APP_SPAN_ID}-00"
    trace = telemetry.start_call({"traceparent": traceparent}, model="gpt-4o", stream=False)
    upstream = run_call(trace, make_info())
    assert exporter.get_finished_spans() == ()
    version, trace_id, _, flags = upstream["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
    assert one(points(reader), "openai_runtime.requests").value == 1


# -- metrics -------------------------------------------------------------------


def test_metrics_equal_the_usage_and_cost_given(
    telemetry: Telemetry, reader: InMemoryMetricReader, clock: ManualClock
) -> None:
    usd = 0.1 + 0.2  # not a "nice" float: the counter must carry it unchanged
    trace = telemetry.start_call({}, model="gpt-4o", stream=False)
    assert one(points(reader), "openai_runtime.requests.in_flight").value == 1
    clock.advance(1.5)
    run_call(trace, make_info(usage=Usage(123, 45, 168, cached_tokens=100), cost=price(usd)))

    found = points(reader)
    genai = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "server.address": "api.openai.com",
        "openai_runtime.runtime": "team-a/chat",
    }
    for token_type, count in (("input", 123), ("output", 45)):
        usage: HistogramDataPoint = one(
            found, "gen_ai.client.token.usage", **{"gen_ai.token.type": token_type}
        )
        assert dict(usage.attributes or {}) == {**genai, "gen_ai.token.type": token_type}
        assert (usage.count, usage.sum) == (1, count)
        assert tuple(usage.explicit_bounds) == telemetry_module.TOKEN_BUCKETS
    duration: HistogramDataPoint = one(found, "gen_ai.client.operation.duration")
    assert dict(duration.attributes or {}) == genai
    assert (duration.count, duration.sum) == (1, 1.5)
    assert tuple(duration.explicit_bounds) == telemetry_module.DURATION_BUCKETS
    cost: NumberDataPoint = one(found, "openai_runtime.cost")
    assert cost.value == usd
    assert dict(cost.attributes or {}) == {
        "model": "gpt-4o-2024-08-06",
        "runtime": "team-a/chat",
        "estimated": False,
        "backend": "primary",
    }
    request = one(found, "openai_runtime.requests")
    assert dict(request.attributes) == {
        "outcome": "ok",
        "stream": False,
        "model": "gpt-4o-2024-08-06",
        "runtime": "team-a/chat",
        "backend": "primary",
    }
    assert one(found, "openai_runtime.requests.in_flight").value == 0
    assert "openai_runtime.time_to_first_token" not in found  # not a stream
    assert "openai_runtime.retries" not in found


def test_costs_add_up_per_model_and_estimation(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    for usd, estimated in ((0.5, False), (0.25, False), (0.125, True)):
        trace = telemetry.start_call({}, model="gpt-4o", stream=True)
        trace.finish(make_info(stream=True, cost=price(usd, estimated=estimated)), status=200)
    found = points(reader)
    assert one(found, "openai_runtime.cost", estimated=False).value == 0.75
    assert one(found, "openai_runtime.cost", estimated=True).value == 0.125
    assert one(found, "openai_runtime.requests", stream=True).value == 3


def test_streams_record_time_to_first_token(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    info = replace(make_info(stream=True), time_to_first_byte=0.25)
    telemetry.start_call({}, model="gpt-4o", stream=True).finish(info, status=200)
    ttft: HistogramDataPoint = one(points(reader), "openai_runtime.time_to_first_token")
    assert (ttft.count, ttft.sum) == (1, 0.25)


def test_gauges_read_the_breaker_and_the_limiter_at_collection(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    state = ["closed"]
    snapshot: dict[str, Any] = {
        "requests_available": 59,
        "tokens_available": 149000.5,
        "provider_remaining_requests": None,
        "provider_remaining_tokens": None,
    }
    telemetry.observe(
        circuit=lambda: [("primary", "host", state[0])], limiter=lambda: [("primary", snapshot)]
    )
    found = points(reader)
    circuit = one(found, "openai_runtime.circuit.state")
    assert (circuit.value, circuit.attributes["state"]) == (0, "closed")
    assert (circuit.attributes["scope"], circuit.attributes["backend"]) == ("host", "primary")
    assert "openai_runtime.ratelimit.provider.remaining" not in found  # unknown, not zero
    assert one(found, "openai_runtime.ratelimit.local.available", kind="requests").value == 59
    assert one(found, "openai_runtime.ratelimit.local.available", kind="tokens").value == 149000.5

    state[0] = "open"
    snapshot.update(provider_remaining_requests=3, provider_remaining_tokens=1200)
    found = points(reader)
    circuit = one(found, "openai_runtime.circuit.state")  # the old state is not kept
    assert (circuit.value, circuit.attributes["state"]) == (2, "open")
    assert one(found, "openai_runtime.ratelimit.provider.remaining", kind="requests").value == 3
    assert one(found, "openai_runtime.ratelimit.provider.remaining", kind="tokens").value == 1200

    state[0] = "half_open"
    assert one(points(reader), "openai_runtime.circuit.state").value == 1


def test_the_circuit_gauge_has_a_point_per_scope(
    telemetry: Telemetry, reader: InMemoryMetricReader
) -> None:
    states = [("a", "host", "closed"), ("a", "gpt-4o", "open"), ("a", "", "half_open")]
    states.append(("b", "host", "open"))
    telemetry.observe(circuit=lambda: states, limiter=list)
    found = points(reader)["openai_runtime.circuit.state"]
    by_scope = {
        (p.attributes["backend"], p.attributes["scope"]): (p.attributes["state"], p.value)
        for p in found
    }
    assert by_scope == {
        ("a", "host"): ("closed", 0),
        ("a", "gpt-4o"): ("open", 2),
        ("a", ""): ("half_open", 1),
        ("b", "host"): ("open", 2),
    }


def test_a_failing_gauge_source_does_not_break_collection(
    telemetry: Telemetry, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[tuple[str, str, str]]:
        raise RuntimeError(SECRET_KEY)

    telemetry.observe(circuit=broken, limiter=lambda: [("primary", {"requests_available": 1})])
    found = points(reader)
    assert "openai_runtime.circuit.state" not in found
    assert one(found, "openai_runtime.ratelimit.local.available").value == 1
    assert "RuntimeError" in caplog.text and SECRET_KEY not in caplog.text


def test_reload_counters(telemetry: Telemetry, reader: InMemoryMetricReader) -> None:
    old = CredentialSnapshot("sk-old", "sha256:000000000000", 0.0, "file:/k")
    new = CredentialSnapshot("sk-new", "sha256:111111111111", 1.0, "file:/k")
    telemetry.credential_reloaded(ReloadOutcome(True, old, None))
    telemetry.credential_reloaded(ReloadOutcome(True, new, old))
    telemetry.credential_reloaded(ReloadOutcome(False, new, new))
    telemetry.credential_reloaded(ReloadOutcome(False, new, new))
    telemetry.credential_reloaded(ReloadOutcome(False, new, new, error="key file is empty"))
    telemetry.config_reloaded(True)
    telemetry.config_reloaded(False)
    telemetry.config_reloaded(False)
    found = points(reader)
    reloads = {p.attributes["result"]: p.value for p in found["openai_runtime.credential.reloads"]}
    assert reloads == {"loaded": 1, "rotated": 1, "unchanged": 2, "failed": 1}
    configs = {p.attributes["result"]: p.value for p in found["openai_runtime.config.reloads"]}
    assert configs == {"applied": 1, "rejected": 2}


def test_prometheus_text_has_every_instrument(telemetry: Telemetry) -> None:
    telemetry.observe(
        circuit=lambda: [("primary", "host", "closed")],
        limiter=lambda: [("primary", {"requests_available": 5})],
    )
    trace = telemetry.start_call({}, model="gpt-4o", stream=True)
    trace.attempt_started(1)
    trace.attempt_finished(1, 429, rate_limited())
    trace.attempt_started(2)
    trace.attempt_finished(2, 200, None)
    info = replace(make_info(stream=True, cost=price(0.5)), time_to_first_byte=0.3)
    trace.finish(info, status=200)
    text = telemetry.prometheus_text()
    for line in (
        "# TYPE gen_ai_client_token_usage histogram",
        "# TYPE gen_ai_client_operation_duration_seconds histogram",
        "# TYPE openai_runtime_time_to_first_token_seconds histogram",
        "# TYPE openai_runtime_cost_usd_total counter",
        "# TYPE openai_runtime_requests_total counter",
        "# TYPE openai_runtime_requests_in_flight gauge",
        "# TYPE openai_runtime_retries_total counter",
        "# TYPE openai_runtime_circuit_state gauge",
        "# TYPE openai_runtime_ratelimit_local_available gauge",
        'openai_runtime_cost_usd_total{backend="primary",estimated="false",'
        'model="gpt-4o-2024-08-06",runtime="team-a/chat"} 0.5',
        'openai_runtime_circuit_state{backend="primary",runtime="team-a/chat",'
        'scope="host",state="closed"} 0',
        'openai_runtime_requests_in_flight{runtime="team-a/chat"} 0',
        'openai_runtime_retries_total{error_type="RateLimited",runtime="team-a/chat"} 1',
    ):
        assert line in text.splitlines(), line
    assert any(
        line.startswith("gen_ai_client_token_usage_bucket{")
        and 'gen_ai_token_type="input"' in line
        and 'le="256.0"' in line
        and line.endswith(" 1")
        for line in text.splitlines()
    )


# -- nothing secret leaves ------------------------------------------------------


def test_no_key_or_content_reaches_spans_metrics_or_prometheus(
    telemetry: Telemetry, exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    """The app's headers carry the key and the upstream error quotes the prompt.

    Telemetry gets all of them and must export neither; the fingerprint (which
    is allowed) is checked too, so the search is known to look in the right place.
    """
    headers = {
        "traceparent": TRACEPARENT,
        "authorization": f"Bearer {SECRET_KEY}",
        "api-key": SECRET_KEY,
        "x-user-prompt": SECRET_PROMPT,
    }
    trace = telemetry.start_call(headers, model="gpt-4o", stream=False)
    upstream = trace.attempt_started(1)
    quoted = rate_limited(f"Request rejected: '{SECRET_PROMPT}' (key {SECRET_KEY})")
    trace.attempt_finished(1, 429, quoted)
    trace.attempt_started(2)
    trace.attempt_finished(2, 429, quoted)
    info = replace(make_info(attempts=2), error=quoted)
    trace.finish(info, status=429, error=quoted)

    assert set(upstream) == {"traceparent"}
    exported = [span.to_json() for span in exporter.get_finished_spans()]
    data: MetricsData | None = reader.get_metrics_data()
    assert data is not None
    everything = "\n".join([*exported, data.to_json(), telemetry.prometheus_text()])
    assert FINGERPRINT in everything
    assert "RateLimited" in everything
    for secret in (SECRET_KEY, "SENTINEL", "zq4242"):
        assert secret not in everything


# -- exporters -----------------------------------------------------------------

TRACES_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
METRICS_MODULE = "opentelemetry.exporter.otlp.proto.http.metric_exporter"


def test_without_otlp_env_nothing_is_imported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Would raise ImportError if imported: no warning proves no import was tried.
    monkeypatch.setitem(sys.modules, TRACES_MODULE, None)
    monkeypatch.setitem(sys.modules, METRICS_MODULE, None)
    own = Telemetry(runtime="a/b", variant="direct", server_address="h", environ={})
    try:
        own.start_call({}, model="m", stream=False).finish(None, status=200)
        assert "openai_runtime_requests_total" in own.prometheus_text()
    finally:
        own.shutdown()
        own.shutdown()  # idempotent
    assert caplog.records == []


def test_missing_otlp_package_warns_once_and_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, TRACES_MODULE, None)
    monkeypatch.setitem(sys.modules, METRICS_MODULE, None)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    with caplog.at_level(logging.WARNING):
        own = Telemetry(runtime="a/b", variant="direct", server_address="h", environ=environ)
    try:
        own.start_call({}, model="m", stream=False).finish(None, status=200)
        assert "openai_runtime_requests_total" in own.prometheus_text()
    finally:
        own.shutdown()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "opentelemetry-exporter-otlp-proto-http" in warnings[0].getMessage()


class FakeSpanExporter(SpanExporter):
    made: list[FakeSpanExporter] = []  # noqa: RUF012 - a test registry

    def __init__(self, *, endpoint: str) -> None:
        self.endpoint = endpoint
        self.names: list[str] = []
        FakeSpanExporter.made.append(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.names.extend(span.name for span in spans)
        return SpanExportResult.SUCCESS


class FakeMetricExporter(MetricExporter):
    made: list[FakeMetricExporter] = []  # noqa: RUF012 - a test registry

    def __init__(self, *, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.names: set[str] = set()
        FakeMetricExporter.made.append(self)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        for resource_metrics in metrics_data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                self.names.update(metric.name for metric in scope_metrics.metrics)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("environ", "traces", "metrics"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
            "http://collector:4318/v1/traces",
            "http://collector:4318/v1/metrics",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces",
            },
            "http://tempo:4318/v1/traces",
            "http://collector:4318/v1/metrics",
        ),
        (
            {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://mimir/otlp/v1/metrics"},
            None,
            "http://mimir/otlp/v1/metrics",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
            None,
            "http://c:4318/v1/metrics",
        ),
    ],
)
def test_otlp_exporters_are_wired_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    traces: str | None,
    metrics: str | None,
) -> None:
    for name, attribute, fake in (
        (TRACES_MODULE, "OTLPSpanExporter", FakeSpanExporter),
        (METRICS_MODULE, "OTLPMetricExporter", FakeMetricExporter),
    ):
        module = types.ModuleType(name)
        setattr(module, attribute, fake)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(FakeSpanExporter, "made", [])
    monkeypatch.setattr(FakeMetricExporter, "made", [])

    own = Telemetry(runtime="a/b", variant="direct", server_address="h", environ=environ)
    own.start_call({}, model="m", stream=False).finish(None, status=200)
    own.shutdown()  # flushes: the batch processor and the periodic reader export now

    assert [e.endpoint for e in FakeSpanExporter.made] == ([traces] if traces else [])
    assert [e.endpoint for e in FakeMetricExporter.made] == ([metrics] if metrics else [])
    if traces:
        assert FakeSpanExporter.made[0].names == ["chat m"]
    assert "openai_runtime.requests" in FakeMetricExporter.made[0].names


def test_shutdown_leaves_an_injected_tracer_provider_running(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    own = Telemetry(
        runtime="a/b", variant="direct", server_address="h", tracer_provider=provider, environ={}
    )
    own.shutdown()
    provider.get_tracer("test").start_span("after").end()
    assert [span.name for span in exporter.get_finished_spans()] == ["after"]
