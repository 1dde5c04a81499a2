"""Which OTLP/HTTP exporters the environment asks for, imported only then.

Where it sits in the flow::

    Telemetry(...) --OtlpExporters(environ)--> .traces() / .metrics()
        --(OTEL_EXPORTER_OTLP_*ENDPOINT set)--> exporter --> BatchSpanProcessor /
                                                             PeriodicExportingMetricReader
        --(not set)--> None: nothing imported, spans not built, /metrics only

The endpoints are read from the environment handed in (the same rules as the
exporter's own), so an injected environment is honoured, not only
``os.environ``. The exporter package is imported lazily, at the first signal
that has an endpoint: a sidecar without a collector never imports it, and
one without the package installed warns once and carries on. The resource
(service name and version) is what the exports say about the process; the
Prometheus text does not render it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.sdk.resources import Resource
from opentelemetry.util.types import AttributeValue

__all__ = ["OTLP_METRICS", "OTLP_TRACES", "OtlpExporters", "otlp_endpoint", "otlp_resource"]

# Under the telemetry logger, where these warnings have always been logged.
log = logging.getLogger(__name__.rpartition(".")[0] + ".telemetry")

OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
OTLP_TRACES = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter")
OTLP_METRICS = ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter")


def otlp_endpoint(environ: Mapping[str, str], signal: str) -> str | None:
    """The OTLP/HTTP URL for ``signal`` (traces, metrics), or None when not configured.

    Computed here from ``environ`` (same rules as the exporter: a per-signal
    URL is used as is, the generic one gets ``/v1/<signal>``) so an injected
    environment is honoured, not only ``os.environ``.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none":
        return None
    specific = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{generic.rstrip('/')}/v1/{signal}" if generic else None


def otlp_resource(service_name: str) -> Resource:
    """The process's resource, with ``service_name`` unless the deployment chose one."""
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME; our
    # name only fills in when the deployment did not choose one.
    resource = Resource.create({})
    own: dict[str, AttributeValue] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        own["service.name"] = service_name
    if "service.version" not in resource.attributes:
        with contextlib.suppress(PackageNotFoundError):  # running from a source tree
            own["service.version"] = version("openai-runtime")
    return resource.merge(Resource(own)) if own else resource


class OtlpExporters:
    """The exporters one :class:`~.telemetry.Telemetry` gets; warns at most once."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._warned = False

    def traces(self) -> object | None:
        """An ``OTLPSpanExporter`` when a traces endpoint is set and the package is there."""
        return self._exporter(OTLP_TRACES, "traces")

    def metrics(self) -> object | None:
        """An ``OTLPMetricExporter`` when a metrics endpoint is set and the package is there."""
        return self._exporter(OTLP_METRICS, "metrics")

    def _exporter(self, where: tuple[str, str], signal: str) -> object | None:
        env = self._environ
        endpoint = otlp_endpoint(env, signal)
        if not endpoint:
            return None
        module_name, class_name = where
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if not self._warned:
                self._warned = True
                log.warning(
                    "OTEL_EXPORTER_OTLP_*ENDPOINT is set but %s is not installed: "
                    "no OTLP export (GET /metrics still works)",
                    OTLP_PACKAGE,
                )
            return None
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip()
        if protocol and protocol != "http/protobuf" and not self._warned:
            self._warned = True
            log.warning("OTLP protocol %r is not supported; exporting http/protobuf", protocol)
        exporter_class: Callable[..., object] = getattr(module, class_name)
        return exporter_class(endpoint=endpoint)
