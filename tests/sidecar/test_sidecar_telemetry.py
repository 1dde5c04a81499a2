"""Telemetry of real calls: the official SDK through a real sidecar to the fake upstream.

``test_telemetry.py`` checks :class:`Telemetry` with hand-made CallOutcome; here
the spans, metrics and log lines come from actual requests, and each number
is compared with what the app itself received (usage, the cost header).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import make_mocked_request
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.logs import JsonFormatter
from openai_runtime_sidecar.runner import ManualClock
from openai_runtime_sidecar.runner.credentials import fingerprint
from openai_runtime_sidecar.server import settle
from tests.support import OLD_KEY, points

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{APP_SPAN_ID}-01"
USER = {"role": "user", "content": "Summarise the rotation guarantee"}
APP_KEY = "not-the-real-key"  # what the client fixture sends; never used upstream
# The fake echoes the first 40 characters of the prompt: both must stay inside.
# Markers use letters outside hex, so no random trace or span id can contain them.
PROMPT = "SENTINEL-PROMPT acct zq4242 pin xw9876"
COMPLETION = "Echo: " + PROMPT[:40]


@pytest.fixture
def request_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the sidecar's loggers, DEBUG and up."""
    caplog.set_level(logging.DEBUG, logger="openai_runtime")
    caplog.set_level(logging.DEBUG, logger="openai_runtime_sidecar")
    return caplog


async def eventually(check: Callable[[], bool], *, within: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.01)


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def matching(found: dict[str, list[Any]], name: str, **attributes: Any) -> list[Any]:
    return [
        point
        for point in found.get(name, [])
        if all((point.attributes or {}).get(key) == value for key, value in attributes.items())
    ]


def total(found: dict[str, list[Any]], name: str, **attributes: Any) -> float:
    """Counter values or histogram sums of every point with these attributes, added."""
    return sum(
        point.value if hasattr(point, "value") else point.sum
        for point in matching(found, name, **attributes)
    )


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "openai_runtime.requests"]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, "fields", None)
    assert isinstance(value, dict)
    return value


# -- spans -------------------------------------------------------------------------


async def test_call_span_continues_the_app_trace_with_the_usage_the_app_got(
    client: openai.AsyncOpenAI, spans: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[USER], extra_headers={"traceparent": TRACEPARENT}
    )
    reply = raw.parse()
    assert reply.usage is not None

    found = by_name(spans)
    assert set(found) == {"chat gpt-4o-mini", "attempt 1"}
    (call,), (attempt,) = found["chat gpt-4o-mini"], found["attempt 1"]
    assert call.kind is SpanKind.CLIENT
    assert format(call.context.trace_id, "032x") == TRACE_ID
    assert call.parent is not None and call.parent.is_remote
    assert format(call.parent.span_id, "016x") == APP_SPAN_ID
    attributes = dict(call.attributes or {})
    assert {
        key: attributes.get(key)
        for key in (
            "gen_ai.operation.name",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.response.id",
            "gen_ai.response.finish_reasons",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
        )
    } == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": reply.model,
        "gen_ai.response.id": reply.id,
        "gen_ai.response.finish_reasons": tuple(c.finish_reason for c in reply.choices),
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": reply.usage.completion_tokens,
    }
    assert attributes["openai_runtime.cost.usd"] == pytest.approx(
        float(raw.headers["x-openai-runtime-cost-usd"]), abs=1e-10
    )
    assert attributes["openai_runtime.credential.fingerprint"] == fingerprint(OLD_KEY)
    assert attributes["http.response.status_code"] == 200
    assert call.status.status_code is StatusCode.UNSET

    assert attempt.kind is SpanKind.CLIENT
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert attempt.context.trace_id == call.context.trace_id
    # Upstream continues the trace from the attempt span, not the app's or the call's.
    sent = upstream.requests[-1].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"


async def test_a_retried_call_has_two_attempt_spans_and_the_first_one_failed(
    client: openai.AsyncOpenAI,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricReader,
    upstream: FakeUpstream,
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[USER],
        extra_headers={
            "traceparent": TRACEPARENT,
            "x-fake-scenario": "server-error",
            "x-fake-fail-times": "1",
            "x-fake-sequence": "retried-call",
        },
    )
    assert raw.headers["x-openai-runtime-attempts"] == "2"
    assert [r.outcome for r in upstream.requests] == ["error:500", "ok"]

    found = by_name(spans)
    (call,) = found["chat gpt-4o-mini"]
    (first,), (second,) = found["attempt 1"], found["attempt 2"]
    for attempt, recorded in zip((first, second), upstream.requests, strict=True):
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
        assert format(attempt.context.trace_id, "032x") == TRACE_ID
        assert recorded.headers["traceparent"].split("-")[2] == f"{attempt.context.span_id:016x}"
    first_attributes, second_attributes = (
        dict(first.attributes or {}),
        dict(second.attributes or {}),
    )
    assert first_attributes["error.type"] == "UpstreamUnavailable"
    assert first_attributes["http.response.status_code"] == 500
    assert first.status.status_code is StatusCode.ERROR
    assert "error.type" not in second_attributes
    assert second_attributes["http.request.resend_count"] == 1
    assert second.status.status_code is StatusCode.UNSET
    assert (call.attributes or {})["openai_runtime.attempts"] == 2
    assert "error.type" not in (call.attributes or {}), "the call itself succeeded"

    collected = points(metrics)
    assert total(collected, "openai_runtime.retries", **{"error.type": "UpstreamUnavailable"}) == 1
    assert total(collected, "openai_runtime.requests", outcome="ok") == 1


# -- metrics -----------------------------------------------------------------------


async def test_metrics_equal_the_real_usage_and_the_cost_headers(
    client: openai.AsyncOpenAI, sidecar: Sidecar, metrics: InMemoryMetricReader
) -> None:
    usage = {"input": 0, "output": 0}
    cost: dict[str, float] = {}
    for model, content in (
        ("gpt-4o-mini", "short"),
        ("gpt-4o-mini", "a longer question about how the key rotates " * 4),
        ("gpt-4o", "what does it cost?"),
    ):
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}]
        )
        reply = raw.parse()
        assert reply.usage is not None
        usage["input"] += reply.usage.prompt_tokens
        usage["output"] += reply.usage.completion_tokens
        cost[reply.model] = cost.get(reply.model, 0.0) + float(
            raw.headers["x-openai-runtime-cost-usd"]
        )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[USER],
            extra_headers={"x-fake-scenario": "context-length"},
        )

    found = points(metrics)
    for token_type, expected in usage.items():
        assert total(found, "gen_ai.client.token.usage", **{"gen_ai.token.type": token_type}) == (
            expected
        )
        histograms = matching(
            found, "gen_ai.client.token.usage", **{"gen_ai.token.type": token_type}
        )
        assert sum(point.count for point in histograms) == 3
    for model, usd in cost.items():
        assert total(found, "openai_runtime.cost", model=model) == pytest.approx(usd, abs=1e-9)
    assert total(found, "openai_runtime.cost", estimated=True) == 0
    assert total(found, "openai_runtime.requests", outcome="ok") == 3
    assert total(found, "openai_runtime.requests", outcome="ContextLengthExceeded") == 1
    assert total(found, "openai_runtime.requests") == 4
    assert total(found, "openai_runtime.requests.in_flight") == 0
    durations = matching(found, "gen_ai.client.operation.duration")
    assert sum(point.count for point in durations) == 4
    assert "openai_runtime.time_to_first_token" not in found, "no stream yet"

    # The same numbers on the Prometheus scrape.
    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + "/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    assert "# TYPE gen_ai_client_token_usage histogram" in text
    assert "# TYPE openai_runtime_cost_usd_total counter" in text
    for model, usd in cost.items():
        line = re.search(
            rf'^openai_runtime_cost_usd_total\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$',
            text,
            re.MULTILINE,
        )
        assert line is not None, (model, text)
        assert float(line.group(1)) == pytest.approx(usd, abs=1e-9)
    input_sums = re.findall(
        r'^gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="input"[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert sum(float(value) for value in input_sums) == usage["input"]


async def test_a_stream_records_time_to_first_token_and_its_usage(
    client: openai.AsyncOpenAI, metrics: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    final = chunks[-1].usage
    assert final is not None

    # The handler finishes its books just after the last bytes reach the app.
    await eventually(lambda: "chat gpt-4o-mini" in by_name(spans), what="call span ended")
    found = points(metrics)
    (ttft,) = matching(found, "openai_runtime.time_to_first_token")
    assert ttft.count == 1 and ttft.sum >= 0
    assert total(found, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == (
        final.prompt_tokens
    )
    assert total(found, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == (
        final.completion_tokens
    )
    assert total(found, "openai_runtime.requests", outcome="ok", stream=True) == 1
    assert total(found, "openai_runtime.requests.in_flight") == 0
    (call,) = by_name(spans)["chat gpt-4o-mini"]
    attributes = dict(call.attributes or {})
    assert attributes["openai_runtime.stream"] is True
    assert attributes["gen_ai.usage.output_tokens"] == final.completion_tokens
    assert attributes["openai_runtime.usage.estimated"] is False


# -- logs --------------------------------------------------------------------------


async def test_one_log_line_per_request_with_status_model_tokens_and_cost(
    client: openai.AsyncOpenAI, request_log: pytest.LogCaptureFixture
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[USER]
    )
    reply = raw.parse()
    assert reply.usage is not None
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[USER],
            extra_headers={"x-fake-scenario": "context-length"},
        )

    first, second = request_records(request_log)
    ok = fields(first)
    assert first.getMessage() == "request"
    assert {
        key: ok[key]
        for key in (
            "method",
            "path",
            "status",
            "model",
            "response_model",
            "stream",
            "attempts",
            "prompt_tokens",
            "completion_tokens",
            "error_type",
            "credential_fingerprint",
        )
    } == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "model": "gpt-4o-mini",
        "response_model": reply.model,
        "stream": False,
        "attempts": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "error_type": None,
        "credential_fingerprint": fingerprint(OLD_KEY),
    }
    assert ok["cost_usd"] == pytest.approx(float(raw.headers["x-openai-runtime-cost-usd"]))
    assert ok["cost_estimated"] is False
    assert ok["duration_ms"] >= 0

    failed = fields(second)
    assert failed["status"] == 400
    assert failed["error_type"] == "ContextLengthExceeded"
    assert failed["prompt_tokens"] is None and failed["cost_usd"] is None


async def test_the_log_line_and_the_histogram_read_the_sidecars_one_clock(
    tmp_path: Path, request_log: pytest.LogCaptureFixture
) -> None:
    """A call is timed once, on the clock the sidecar hands its runner and telemetry."""
    key_file = tmp_path / "key"
    key_file.write_text(OLD_KEY)
    config = SidecarConfig.model_validate(
        {
            "runtime": {"namespace": "team-a", "name": "chat"},
            "variant": {"direct": {"endpoint": "http://127.0.0.1:9/v1"}},
            "apiKey": {"file": str(key_file)},
            "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        }
    )
    clock = ManualClock(50.0)
    sidecar = Sidecar(config, clock=clock)
    try:
        assert sidecar.runner.clock is clock
        assert sidecar.telemetry.clock is clock
        trace = sidecar.telemetry.start_call({}, model="gpt-4o-mini", stream=False)
        clock.advance(1.5)
        request = make_mocked_request("POST", "/v1/chat/completions")
        settle(sidecar, request, trace, None, 400, None, "invalid_json")
        clock.advance(7.0)  # after the books are settled: counts nowhere
        assert trace.elapsed() == 1.5

        (line,) = request_records(request_log)
        assert fields(line)["duration_ms"] == 1500.0
        sums = [
            text_line
            for text_line in sidecar.telemetry.prometheus_text().splitlines()
            if text_line.startswith("gen_ai_client_operation_duration_seconds_sum{")
        ]
        assert len(sums) == 1 and sums[0].endswith(" 1.5"), sums
    finally:
        sidecar.telemetry.shutdown()


# -- nothing secret leaves ------------------------------------------------------------


async def test_no_prompt_completion_or_key_in_spans_metrics_or_logs(
    client: openai.AsyncOpenAI,
    sidecar: Sidecar,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricReader,
    request_log: pytest.LogCaptureFixture,
) -> None:
    message = {"role": "user", "content": PROMPT}
    reply = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[message], extra_headers={"traceparent": TRACEPARENT}
    )
    assert reply.choices[0].message.content == COMPLETION, "the sentinels did travel"
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[message], stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == COMPLETION
    for scenario in ("context-length", "inband-error"):
        with pytest.raises(openai.APIError):
            created = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[message],
                stream=scenario == "inband-error",
                extra_headers={"x-fake-scenario": scenario},
            )
            if isinstance(created, openai.AsyncStream):
                async for _ in created:
                    pass
    await eventually(lambda: len(request_records(request_log)) == 4, what="four request lines")
    await eventually(lambda: len(by_name(spans).get("chat gpt-4o-mini", [])) == 4)

    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + "/metrics") as response,
    ):
        prometheus = await response.text()
    data = metrics.get_metrics_data()
    assert data is not None
    formatter = JsonFormatter()
    sidecar_records = [
        record for record in request_log.records if record.name.startswith("openai_runtime")
    ]
    everything = "\n".join(
        [
            *(span.to_json() for span in spans.get_finished_spans()),
            data.to_json(),
            prometheus,
            *(formatter.format(record) for record in sidecar_records),
            *(repr(getattr(record, "fields", None)) for record in sidecar_records),
        ]
    )
    # The search looks where the data is: the fingerprint and the numbers are there.
    assert fingerprint(OLD_KEY) in everything
    assert "gen_ai.usage.input_tokens" in everything and '"status":200' in everything
    for secret in (
        PROMPT,
        COMPLETION,
        "SENTINEL",
        "zq4242",
        "xw9876",
        OLD_KEY,
        "sk-test",
        APP_KEY,
    ):
        assert secret not in everything, secret
