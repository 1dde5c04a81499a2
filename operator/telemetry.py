"""The operator's own telemetry: spans for reconciles and rotations, a few counters.

Spans go to the tracer provider given (tests inject one with an in-memory
exporter) or else to OpenTelemetry's global one, which is a no-op unless the
deployment configures it. Every metric is recorded once through an SDK
:class:`MeterProvider` of our own (never the global one: tests run several
operators) and read by the sidecar's :class:`PrometheusReader` for scraping,
plus any readers given. Attributes name runtimes, results and fingerprints,
never a key.

- ``openai_runtime_operator.reconciles{result=ok|invalid|error}``
- ``openai_runtime_operator.rotations``
- ``openai_runtime_operator.pods_nudged``
- ``openai_runtime_operator.resync_errors{scope=runtime|pass}``: a runtime the
  resync could not handle, or a whole pass that failed (:mod:`.resync`)
- ``openai_runtime_operator.budget.spend`` and ``.budget.limit`` (USD, gauges,
  ``namespace`` and ``runtime`` as ``<namespace>/<name>``): this period's
  spend of each runtime with a budget, and its limit, as of the last look
  (:mod:`.budgeting`)

:meth:`OperatorTelemetry.prometheus_text` renders them for ``/metrics``, which
:mod:`.serving` serves on ``--metrics-port``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast

from opentelemetry import trace
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from openai_runtime_sidecar.otlp import OtlpExporters, otlp_resource
from openai_runtime_sidecar.prometheus import PrometheusReader

__all__ = ["SERVICE_NAME", "OperatorTelemetry", "export_traces_from_env"]

_SCOPE = "openai_runtime_operator"
SERVICE_NAME = "openai-runtime-operator"
"""The exports' ``service.name`` unless the deployment sets ``OTEL_SERVICE_NAME``."""


def export_traces_from_env(environ: Mapping[str, str]) -> SdkTracerProvider | None:
    """An SDK tracer provider exporting over OTLP/HTTP, when configured (else None).

    The sidecar's rules decide (:mod:`openai_runtime_sidecar.otlp`), so both
    read the same ``OTEL_*`` variables the same way: a traces or generic
    endpoint must be set, and neither the SDK nor the traces exporter turned
    off. The caller installs the provider and shuts it down.
    """
    exporter = OtlpExporters(environ).traces()
    if exporter is None:
        return None
    provider = SdkTracerProvider(resource=otlp_resource(SERVICE_NAME))
    provider.add_span_processor(BatchSpanProcessor(cast(SpanExporter, exporter)))
    return provider


class OperatorTelemetry:
    """The operator's tracer and instruments; one per :class:`.OperatorContext`."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        metric_readers: Sequence[MetricReader] = (),
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(_SCOPE)
        self.prometheus = PrometheusReader()
        self._meter_provider = MeterProvider(metric_readers=[self.prometheus, *metric_readers])
        meter = self._meter_provider.get_meter(_SCOPE)
        self.reconciles = meter.create_counter(
            "openai_runtime_operator.reconciles",
            "{reconcile}",
            "Reconciliations of runtimes by result (ok, invalid, error).",
        )
        self.rotations = meter.create_counter(
            "openai_runtime_operator.rotations", "{rotation}", "Key rotations recorded."
        )
        self.pods_nudged = meter.create_counter(
            "openai_runtime_operator.pods_nudged",
            "{pod}",
            "Pods annotated with a new credential version.",
        )
        self.resync_errors = meter.create_counter(
            "openai_runtime_operator.resync_errors",
            "{error}",
            "Resync failures: of one runtime (scope=runtime) or of a whole pass (scope=pass).",
        )
        for scope in ("runtime", "pass"):
            # Shown at 0 from the start, so that an alert on its increase sees the first one.
            self.resync_errors.add(0, {"scope": scope})
        self._budgets: dict[tuple[str, str], tuple[float, float]] = {}
        meter.create_observable_gauge(
            "openai_runtime_operator.budget.spend",
            [lambda options: self._budget_readings(0)],
            unit="USD",
            description="Spend this period of each runtime with a budget, as last read.",
        )
        meter.create_observable_gauge(
            "openai_runtime_operator.budget.limit",
            [lambda options: self._budget_readings(1)],
            unit="USD",
            description="The budget's limit per period of each runtime with one.",
        )
        self._shut_down = False

    @contextlib.contextmanager
    def span(self, operation: str, namespace: str, name: str) -> Iterator[Span]:
        """A span ``<operation> <namespace>/<name>``; an escaping error marks it failed."""
        with self._tracer.start_as_current_span(
            f"{operation} {namespace}/{name}",
            attributes={
                "openai_runtime.namespace": namespace,
                "openai_runtime.runtime": name,
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span

    def reconciled(self, span: Span, result: str) -> None:
        """Count one reconcile with ``result`` and put it on its span."""
        span.set_attribute("openai_runtime.result", result)
        if result == "error":
            span.set_status(Status(StatusCode.ERROR))
        self.reconciles.add(1, {"result": result})

    def rotated(self, span: Span, fingerprint: str, rotations: int) -> None:
        """Count one rotation (the fingerprint and count go on the span, never the key)."""
        span.set_attribute("openai_runtime.credential.fingerprint", fingerprint)
        span.set_attribute("openai_runtime.credential.rotations", rotations)
        self.rotations.add(1)

    def nudged(self, pods: int, nudged: int) -> None:
        """Count pods annotated with a new credential version (also on the current span)."""
        span = trace.get_current_span()
        span.set_attribute("openai_runtime.pods", pods)
        span.set_attribute("openai_runtime.pods_nudged", nudged)
        if nudged:
            self.pods_nudged.add(nudged)

    def budget(self, namespace: str, name: str, spend: float, limit: float) -> None:
        """Record a runtime's spend this period and its limit (for the gauges)."""
        self._budgets[namespace, name] = (spend, limit)

    def _budget_readings(self, which: int) -> Iterable[Observation]:
        for (namespace, name), values in list(self._budgets.items()):
            # ``runtime`` as the sidecars' metrics spell it, so dashboards join them.
            attributes = {"namespace": namespace, "runtime": f"{namespace}/{name}"}
            yield Observation(values[which], attributes)

    def resync_failed(self, scope: str) -> None:
        """Count one resync failure: ``runtime`` (one skipped) or ``pass`` (all of them)."""
        self.resync_errors.add(1, {"scope": scope})

    def prometheus_text(self) -> str:
        """Every metric in Prometheus text format 0.0.4."""
        return self.prometheus.text()

    def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            self._meter_provider.shutdown()
