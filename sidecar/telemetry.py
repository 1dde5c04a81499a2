"""Traces and metrics for every call the sidecar proxies.

Where it sits in the flow of one request::

    app --(traceparent)--> server --start_call()--> CallTrace (span "chat {model}")
        runner attempt loop --attempt_started()--> span "attempt {n}" --(traceparent)--> upstream
                            <--attempt_finished()--
    server --finish(info)--> span attributes + metrics --> OTLP exporter / GET /metrics

The app's W3C trace context is continued, so the sidecar's spans sit between
the app's span and upstream's; each upstream attempt gets a child span whose
context is what upstream receives, so a retry is visible as a second child.
Metrics follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``) plus
the runtime's own (cost, requests, retries, circuit, rate limits, reloads).

Everything recorded comes from :class:`~.runner.results.CallOutcome`, which by
construction holds only counts, names, ids and the key's fingerprint: no API
key, prompt or completion text ever reaches a span or a metric. Error spans
carry the error's class name, never its message (an upstream message may
quote the input).

The OTLP exporter is imported only when ``OTEL_EXPORTER_OTLP_*ENDPOINT`` is
set (:mod:`.otlp`), so a sidecar without a collector pays for nothing but the
Prometheus reader, which collects only when scraped; the counters every call
adds to and the gauges are read at collection (:mod:`.meters`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from .histograms import PlainHistogram, attach
from .meters import ListenerReading, Readings, Sums
from .otlp import OtlpExporters, otlp_resource
from .prometheus import PrometheusReader
from .runner.clock import Clock, SystemClock
from .runner.credentials import ReloadOutcome
from .runner.errors import RunnerError
from .runner.results import CallOutcome

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

__all__ = ["SERVICE_NAME", "CallTrace", "Telemetry"]

SERVICE_NAME = "openai-runtime-sidecar"
_SCOPE = "openai_runtime_sidecar"

# Semantic-convention advice for the two GenAI client histograms.
TOKEN_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# An explicit propagator: the app speaks W3C trace context to us and upstream
# gets the same, whatever OTEL_PROPAGATORS says for the rest of the process.
_PROPAGATOR = TraceContextTextMapPropagator()


_NO_PARENT = Context()


def _trace_carrier(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The app's W3C trace headers, or None when it sent no ``traceparent``.

    aiohttp's headers are looked up case-insensitively at once; another
    mapping is lower-cased first, as the propagator reads keys as written.
    """
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        parent = headers.get("traceparent")
        if parent is None:
            return None
        carrier = {"traceparent": parent}
        state = headers.get("tracestate")
        if state is not None:
            carrier["tracestate"] = state
        return carrier
    lowered = {key.lower(): value for key, value in headers.items()}
    return lowered if "traceparent" in lowered else None


def _traceparent(context: SpanContext) -> dict[str, str]:
    """What the W3C propagator injects for ``context``, formatted directly."""
    if not context.is_valid:
        return {}
    carrier = {
        "traceparent": (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
    }
    if context.trace_state:
        carrier["tracestate"] = context.trace_state.to_header()
    return carrier


class Telemetry:
    """The sidecar's tracer and instruments; one per process (per runner).

    ``clock`` times each call (its span's start to :meth:`CallTrace.finish`):
    the :class:`~.app.Sidecar` hands in the one its runner runs on, so a
    :class:`~.runner.clock.ManualClock` moves durations too.
    """

    def __init__(
        self,
        *,
        runtime: str,
        variant: str,
        server_address: str,
        tracer_provider: TracerProvider | None = None,
        metric_readers: Sequence[MetricReader] = (),
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.clock: Clock = clock or SystemClock()
        self.runtime = runtime
        self.provider_name = "azure.ai.openai" if variant == "azure" else "openai"
        self.server_address = server_address
        otlp = OtlpExporters(env)
        resource = otlp_resource(SERVICE_NAME)
        self._init_tracer(tracer_provider, otlp, resource)
        readers = self._init_metric_readers(metric_readers, otlp)
        # Always ours, never global: tests build several, and the server owns the lifecycle.
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        meter = self._meter_provider.get_meter(_SCOPE)
        self._init_attributes()
        self._init_histograms(readers, resource)
        self._init_call_sums(meter)
        self._init_counters(meter)
        # Sources are set by observe(); callables so a reconfigured runner's
        # new breaker or limiter is read without re-registering anything.
        self._readings = Readings(self.runtime_attributes)
        self._readings.register(meter)
        self._shut_down = False

    def _init_tracer(
        self, tracer_provider: TracerProvider | None, otlp: OtlpExporters, resource: Resource
    ) -> None:
        self._own_tracer_provider: SdkTracerProvider | None = None
        # Spans nobody receives are not built: without an exporter (and with no
        # provider handed in) each call gets only span contexts, so upstream
        # still sees a traceparent continuing the app's trace, at a fraction
        # of the cost of recording attributes that would be dropped. The trace
        # SDK is then not even imported (a few MB of an idle sidecar).
        self._recording = True
        if tracer_provider is None:
            exporter = otlp.traces()
            if exporter is None:
                self._recording = False
                tracer_provider = trace.NoOpTracerProvider()
            else:
                from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

                own = SdkTracerProvider(resource=resource)
                own.add_span_processor(BatchSpanProcessor(cast(SpanExporter, exporter)))
                self._own_tracer_provider = tracer_provider = own
        self._tracer = tracer_provider.get_tracer(_SCOPE)

    def _init_metric_readers(
        self, metric_readers: Sequence[MetricReader], otlp: OtlpExporters
    ) -> list[MetricReader]:
        self.prometheus = PrometheusReader()
        readers: list[MetricReader] = [self.prometheus, *metric_readers]
        exporter = otlp.metrics()
        if exporter is not None:
            readers.append(PeriodicExportingMetricReader(cast(MetricExporter, exporter)))
        return readers

    def _init_attributes(self) -> None:
        # The runtime's own metrics carry short labels (runtime, model, ...);
        # the GenAI ones carry the semantic-convention attributes below.
        self.runtime_attributes: dict[str, AttributeValue] = {"runtime": self.runtime}
        self.model_label: Callable[[str | None], str | None] = lambda name: name
        """Bounds the model names metrics carry (:class:`~.labels.ModelLabels`); spans
        keep the real names."""
        self.base_attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.provider_name,
            "server.address": self.server_address,
            "openai_runtime.runtime": self.runtime,
        }

    def _init_histograms(self, readers: Sequence[MetricReader], resource: Resource) -> None:
        # Recorded in plain Python (three per call), added to what every reader
        # collects: see histograms.py.
        self.token_usage = PlainHistogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Input and output tokens per call.",
            TOKEN_BUCKETS,
        )
        self.duration = PlainHistogram(
            "gen_ai.client.operation.duration",
            "s",
            "Duration of the chat call as the sidecar served it.",
            DURATION_BUCKETS,
        )
        self.time_to_first_token = PlainHistogram(
            "openai_runtime.time_to_first_token",
            "s",
            "Seconds until upstream's first streamed bytes.",
            DURATION_BUCKETS,
        )
        histograms = (self.token_usage, self.duration, self.time_to_first_token)
        scope = InstrumentationScope(_SCOPE)
        for reader in readers:
            attach(reader, histograms, scope, resource)

    def _init_call_sums(self, meter: Meter) -> None:
        # The two counters every call adds to are summed here and read at
        # collection: a dict update instead of an SDK measurement per call.
        self.cost = Sums()
        meter.create_observable_counter(
            "openai_runtime.cost",
            callbacks=[self.cost.observe],
            unit="USD",
            description="Cost of the calls in US dollars.",
        )
        self.requests = Sums()
        meter.create_observable_counter(
            "openai_runtime.requests",
            callbacks=[self.requests.observe],
            unit="{request}",
            description="Calls by outcome.",
        )
        # A plain count read at collection: two measurements fewer per call.
        self.in_flight = 0
        meter.create_observable_up_down_counter(
            "openai_runtime.requests.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="Calls being served now.",
        )

    def _init_counters(self, meter: Meter) -> None:
        counter = meter.create_counter
        self.retries = counter(
            "openai_runtime.retries", "{retry}", "Attempts after the first, by the last error."
        )
        self.credential_reloads = counter(
            "openai_runtime.credential.reloads", "{reload}", "API key reloads by result."
        )
        self.config_reloads = counter(
            "openai_runtime.config.reloads", "{reload}", "Config file reloads by result."
        )

    # -- per call ------------------------------------------------------------

    def _start_span(
        self, name: str, parent: Context, attributes: Mapping[str, AttributeValue]
    ) -> Span:
        """A client span under ``parent``; only a span context when nothing records spans."""
        if self._recording:
            return self._tracer.start_span(
                name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
            )
        above = trace.get_current_span(parent).get_span_context()
        span_id = random.getrandbits(64) or 1
        if above.is_valid:
            context = SpanContext(
                above.trace_id,
                span_id,
                is_remote=False,
                trace_flags=above.trace_flags,
                trace_state=above.trace_state,
            )
        else:  # a new trace, sampled as the SDK's default sampler would
            trace_id = random.getrandbits(128) or 1
            context = SpanContext(
                trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
            )
        return NonRecordingSpan(context)

    def start_call(
        self, headers: Mapping[str, str], *, model: str | None, stream: bool
    ) -> CallTrace:
        """Open the call's span as a child of the app's trace context, if it sent one.

        The call is timed from here, before the span is built: handlers start
        it first thing, so the duration is the handler's.
        """
        started = self.clock.monotonic()
        carrier = _trace_carrier(headers)
        parent = _PROPAGATOR.extract(carrier) if carrier is not None else _NO_PARENT
        attributes: dict[str, AttributeValue] = {
            **self.base_attributes,
            "gen_ai.system": self.provider_name,
            "openai_runtime.stream": stream,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        span = self._start_span(f"chat {model}" if model else "chat", parent, attributes)
        self.in_flight += 1
        return CallTrace(self, span, model=model, stream=stream, started=started)

    # -- events --------------------------------------------------------------

    def credential_reloaded(self, outcome: ReloadOutcome, backend: str = "primary") -> None:
        """Count a key reload of ``backend``: ``loaded`` (first key), ``rotated``,
        ``unchanged`` or ``failed``."""
        if outcome.error is not None:
            result = "failed"
        elif not outcome.changed:
            result = "unchanged"
        else:
            result = "rotated" if outcome.previous is not None else "loaded"
        attributes = {"result": result, "backend": backend, **self.runtime_attributes}
        self.credential_reloads.add(1, attributes)

    def config_reloaded(self, ok: bool) -> None:
        result = "applied" if ok else "rejected"
        self.config_reloads.add(1, {"result": result, **self.runtime_attributes})

    def observe(
        self,
        *,
        circuit: Callable[[], Iterable[tuple[str, str, str]]],
        limiter: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]],
        connections: Callable[[], Iterable[ListenerReading]] | None = None,
    ) -> None:
        """Read the breakers' states and limiters' snapshots at every collection.

        ``circuit`` gives (backend, scope, state): per backend ``host``, then
        each model or deployment whose circuit is not closed; ``limiter``
        (backend, snapshot) per backend.
        """
        self._readings.circuit = circuit
        self._readings.limiter = limiter
        self._readings.connections = connections

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.in_flight, self.runtime_attributes)

    # -- export --------------------------------------------------------------

    def prometheus_text(self) -> str:
        """Every metric in Prometheus text format 0.0.4 (see :mod:`.prometheus`)."""
        return self.prometheus.text()

    def shutdown(self) -> None:
        """Flush and stop what we built; an injected tracer provider is the caller's."""
        if self._shut_down:
            return
        self._shut_down = True
        self._meter_provider.shutdown()
        if self._own_tracer_provider is not None:
            self._own_tracer_provider.shutdown()


class CallTrace:
    """One call's span and its attempts; the runner's ``AttemptObserver``.

    It also times the call, once, on the telemetry's clock: the duration
    histogram and the request's log line (:meth:`elapsed`) read the same
    measurement.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        span: Span,
        *,
        model: str | None,
        stream: bool,
        started: float | None = None,
    ):
        self._telemetry = telemetry
        self.span = span
        self._model = model
        self._stream = stream
        self._operation = "chat"
        self._started = telemetry.clock.monotonic() if started is None else started
        self._duration: float | None = None
        self._attempts: dict[int, Span] = {}
        self._last_error: str | None = None
        self._finished = False

    def elapsed(self) -> float:
        """Seconds from the call's start to :meth:`finish`, or to now before it."""
        if self._duration is not None:
            return self._duration
        return max(0.0, self._telemetry.clock.monotonic() - self._started)

    @property
    def trace_id(self) -> str:
        """The trace id as 32 hex digits, for log lines."""
        return format(self.span.get_span_context().trace_id, "032x")

    def set_request(self, *, model: str | None, stream: bool, operation: str | None = None) -> None:
        """Name the call once the body is parsed (the span starts before it is read).

        ``operation`` is ``gen_ai.operation.name`` (``embeddings``,
        ``text_completion``...) or, beyond inference, the API operation
        (``files.create``); the default is ``chat``.
        """
        self._model = model or self._model
        self._stream = stream
        if operation:
            self._operation = operation
            self.span.set_attribute("gen_ai.operation.name", operation)
        self.span.update_name(f"{self._operation} {model}" if model else self._operation)
        if model:
            self.span.set_attribute("gen_ai.request.model", model)
        self.span.set_attribute("openai_runtime.stream", stream)

    def attempt_started(self, attempt: int) -> dict[str, str]:
        """Open span ``attempt {n}``; its trace context is what upstream receives."""
        telemetry = self._telemetry
        if attempt >= 2:
            attributes = {"error.type": self._last_error or "unknown"}
            telemetry.retries.add(1, {**attributes, **telemetry.runtime_attributes})
        previous = self._attempts.pop(attempt, None)
        if previous is not None:  # the same number twice: never leak the first span
            previous.end()
        span_attributes: dict[str, AttributeValue] = {
            "openai_runtime.attempt": attempt,
            "http.request.method": "POST",
            "server.address": telemetry.server_address,
        }
        if attempt >= 2:
            span_attributes["http.request.resend_count"] = attempt - 1
        span = telemetry._start_span(
            f"attempt {attempt}", trace.set_span_in_context(self.span), span_attributes
        )
        self._attempts[attempt] = span
        return _traceparent(span.get_span_context())

    def attempt_finished(self, attempt: int, status: int | None, error: RunnerError | None) -> None:
        span = self._attempts.pop(attempt, None)
        if error is not None:
            self._last_error = error.kind
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error.kind)
            span.set_status(Status(StatusCode.ERROR, error.kind))
        span.end()

    def finish(
        self,
        info: CallOutcome | None,
        *,
        status: int,
        error: RunnerError | None = None,
        error_type: str | None = None,
    ) -> None:
        """End the call span and record the call's metrics; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        telemetry = self._telemetry
        self._duration = duration = max(0.0, telemetry.clock.monotonic() - self._started)
        span = self.span
        if error is None and info is not None:
            error = info.error
        kind = error.kind if error is not None else error_type
        if kind is None and status >= 400:
            kind = str(status)  # semconv: the status code when nothing better is known

        for dangling in self._attempts.values():  # e.g. cancelled while upstream was asked
            dangling.set_attribute("error.type", kind or "incomplete")
            dangling.end()
        self._attempts.clear()

        request_model = self._model or (info.request_model if info is not None else None)
        response_model = info.response_model if info is not None else None
        if request_model and not self._model:
            span.update_name(f"{self._operation} {request_model}")
            span.set_attribute("gen_ai.request.model", request_model)
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if info is not None:
                span.set_attributes(_span_attributes(info))
            if kind is not None:
                span.set_attribute("error.type", kind)
                span.set_status(Status(StatusCode.ERROR, kind))
        span.end()

        attributes = dict(telemetry.base_attributes)
        attributes["gen_ai.operation.name"] = self._operation
        if label := telemetry.model_label(request_model):
            attributes["gen_ai.request.model"] = label
        if label := telemetry.model_label(response_model):
            attributes["gen_ai.response.model"] = label
        telemetry.duration.record(
            duration, {**attributes, "error.type": kind} if kind else attributes
        )
        if info is not None and info.usage is not None:
            usage = info.usage
            telemetry.token_usage.record(
                usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"}
            )
            telemetry.token_usage.record(
                usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"}
            )
        if self._stream and info is not None and info.time_to_first_byte is not None:
            telemetry.time_to_first_token.record(info.time_to_first_byte, attributes)

        runtime = telemetry.runtime_attributes
        named = telemetry.model_label(response_model or request_model)
        model: dict[str, AttributeValue] = {"model": named} if named else {}
        # Which upstream served it, by its name (a handful at most).
        backend = info.backend if info is not None else "primary"
        if info is not None and info.cost is not None:
            cost = info.cost
            labels = {**model, **runtime, "estimated": cost.estimated, "backend": backend}
            telemetry.cost.add(cost.usd, labels)
        outcome = kind or "ok"
        telemetry.requests.add(
            1, {"outcome": outcome, "stream": self._stream, **model, **runtime, "backend": backend}
        )
        telemetry.in_flight -= 1


def _span_attributes(info: CallOutcome) -> dict[str, AttributeValue]:
    """What a finished call adds to its span: counts, names and ids only."""
    usage, cost = info.usage, info.cost
    candidates: dict[str, AttributeValue | None] = {
        "openai_runtime.attempts": info.attempts,
        "gen_ai.response.model": info.response_model,
        "gen_ai.response.id": info.response_id,
        "gen_ai.response.finish_reasons": list(info.finish_reasons) or None,
        "openai_runtime.upstream.request_id": info.request_id,
        "openai_runtime.credential.fingerprint": info.credential_fingerprint,
        "openai_runtime.backend": info.backend,
        "gen_ai.usage.input_tokens": usage.prompt_tokens if usage else None,
        "gen_ai.usage.output_tokens": usage.completion_tokens if usage else None,
        "openai_runtime.usage.cached_tokens": usage.cached_tokens if usage else None,
        "openai_runtime.usage.reasoning_tokens": usage.reasoning_tokens if usage else None,
        "openai_runtime.usage.estimated": info.usage_estimated if usage else None,
        "openai_runtime.cost.usd": cost.usd if cost else None,
        "openai_runtime.cost.estimated": cost.estimated if cost else None,
        "openai_runtime.cost.priced": cost.priced if cost else None,
        "openai_runtime.time_to_first_byte": info.time_to_first_byte,
    }
    return {key: value for key, value in candidates.items() if value is not None and value != ""}
