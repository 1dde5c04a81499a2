"""OpenTelemetry metrics as Prometheus text exposition (format 0.0.4).

Where it sits::

    Telemetry (telemetry.py) -> MeterProvider -> [PrometheusReader] -> render() -> GET /metrics

The sidecar records every metric once, through the OpenTelemetry SDK or, for
the per-call histograms, in plain Python added to what each reader collects
(:mod:`.histograms`); OTLP export and the Prometheus scrape are two readers
of the same data.
:class:`PrometheusReader` collects on demand (at scrape time, nothing runs in
between) with cumulative temporality, which is what Prometheus expects, and
:func:`render` turns the SDK's :class:`MetricsData` into text. Doing this here
instead of depending on ``prometheus_client`` keeps the dependency set small
and the output under our control; the format is small and stable.

Names follow the OpenTelemetry "Prometheus and OpenMetrics compatibility"
spec: invalid characters become ``_``; the unit is appended (``s`` ->
``_seconds``, ``By`` -> ``_bytes``, ``{token}``-style annotations dropped,
``1`` -> ``_ratio`` for gauges); monotonic sums get ``_total``. One deliberate
deviation: units the spec does not map (``USD``) are appended lower-cased, so
``openai_runtime.cost`` in ``USD`` is ``openai_runtime_cost_usd_total`` (the
spec would keep ``_USD``; Prometheus names are conventionally lower-case).
Resource attributes are not rendered (no ``target_info``): the scraper's own
``job``/``instance`` and Kubernetes labels already say which pod this is.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData

__all__ = ["CONTENT_TYPE", "PrometheusReader", "metric_name", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# UCUM units from the compatibility spec's table; anything else is kept as written.
_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
}
_PER_UNITS = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}

_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"__+")
_ANNOTATION = re.compile(r"\{[^}]*\}")


def _sanitize(name: str, invalid: re.Pattern[str]) -> str:
    cleaned = _UNDERSCORES.sub("_", invalid.sub("_", name))
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def _unit_words(unit: str | None, gauge: bool) -> str:
    """The unit as a name suffix (without the leading ``_``); empty for none."""
    unit = _ANNOTATION.sub("", unit or "").strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if gauge else ""
    if "/" in unit:
        top, _, bottom = unit.partition("/")
        first = _unit_words(top, gauge=False) if top != "1" else ""
        second = _PER_UNITS.get(bottom, _unit_words(bottom, gauge=False))
        return f"{first}_per_{second}".strip("_") if second else first
    word = _UNITS.get(unit)
    if word is None:
        word = _sanitize(unit, _INVALID_LABEL).strip("_").lower()
    return word


def metric_name(name: str, unit: str | None, *, counter: bool, gauge: bool = False) -> str:
    """The Prometheus name of an OTel metric (without ``_bucket``/``_sum``/``_count``)."""
    base = _sanitize(name, _INVALID_NAME)
    suffix = _unit_words(unit, gauge)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if counter and not base.endswith("_total"):
        base += "_total"
    return base


def _format_value(value: int | float) -> str:
    if isinstance(value, bool):  # a bool is an int; never print True
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return _format_value(value)
    if isinstance(value, Sequence):
        # The spec renders array attributes as JSON arrays.
        return json.dumps(
            [_label_value(item) if isinstance(item, bool) else item for item in value]
        )
    return str(value)


def _labels(attributes: Mapping[str, Any] | None, extra: Iterable[tuple[str, str]] = ()) -> str:
    merged: dict[str, list[str]] = {}
    # Sorted first, so two keys that sanitize alike join in a stable order (spec: ";").
    for key in sorted(attributes or {}):
        merged.setdefault(_sanitize(key, _INVALID_LABEL), []).append(
            _label_value((attributes or {})[key])
        )
    pairs = [(name, ";".join(values)) for name, values in sorted(merged.items())]
    pairs.extend(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs) + "}"


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    lines: list[str] = field(default_factory=list)


def _number_lines(name: str, points: Sequence[NumberDataPoint]) -> list[str]:
    return [f"{name}{_labels(point.attributes)} {_format_value(point.value)}" for point in points]


def _histogram_lines(name: str, points: Sequence[HistogramDataPoint]) -> list[str]:
    lines: list[str] = []
    for point in points:
        # OTel buckets are per interval; Prometheus buckets are cumulative "<= le".
        running = 0
        bounds = [*(float(bound) for bound in point.explicit_bounds), math.inf]
        for bound, count in zip(bounds, point.bucket_counts, strict=False):
            running += count
            le = (("le", _format_value(bound)),)
            lines.append(f"{name}_bucket{_labels(point.attributes, le)} {running}")
        lines.append(f"{name}_sum{_labels(point.attributes)} {_format_value(point.sum)}")
        lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
    return lines


def _family(metric: Metric) -> _Family | None:
    data = metric.data
    description = metric.description or ""
    if isinstance(data, Sum):
        # A monotonic cumulative sum is a counter; anything else reads as a gauge.
        counter = data.is_monotonic and (
            data.aggregation_temporality is AggregationTemporality.CUMULATIVE
        )
        name = metric_name(metric.name, metric.unit, counter=counter, gauge=not counter)
        kind = "counter" if counter else "gauge"
        return _Family(name, kind, description, _number_lines(name, data.data_points))
    if isinstance(data, Gauge):
        name = metric_name(metric.name, metric.unit, counter=False, gauge=True)
        return _Family(name, "gauge", description, _number_lines(name, data.data_points))
    if isinstance(data, HistogramData):
        name = metric_name(metric.name, metric.unit, counter=False)
        return _Family(name, "histogram", description, _histogram_lines(name, data.data_points))
    # Exponential histograms have no 0.0.4 text form; the sidecar records none.
    return None


def render(data: MetricsData | None) -> str:
    """``data`` as Prometheus text; families sorted by name, one HELP/TYPE each."""
    families: dict[str, _Family] = {}
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                family = _family(metric)
                if family is None:
                    continue
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family
                elif known.kind == family.kind:
                    # Same name from another scope: one family, or the scrape fails.
                    known.lines.extend(family.lines)
                # A clash of types cannot be expressed; the first one wins.
    out: list[str] = []
    for name in sorted(families):
        family = families[name]
        if family.help:
            out.append(f"# HELP {name} {_escape_help(family.help)}")
        out.append(f"# TYPE {name} {family.kind}")
        out.extend(family.lines)
    return "\n".join(out) + "\n" if out else ""


class PrometheusReader(MetricReader):
    """A reader that collects only when asked (a scrape), always cumulatively."""

    def __init__(self) -> None:
        cumulative = AggregationTemporality.CUMULATIVE
        super().__init__(
            preferred_temporality=dict.fromkeys(
                (
                    Counter,
                    UpDownCounter,
                    Histogram,
                    ObservableCounter,
                    ObservableUpDownCounter,
                    ObservableGauge,
                ),
                cumulative,
            )
        )
        # collect() hands the data to _receive_metrics on this thread; the lock
        # keeps two concurrent scrapes from reading each other's result.
        self._lock = threading.Lock()
        self._data: MetricsData | None = None

    def _receive_metrics(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: Any,
    ) -> None:
        self._data = metrics_data

    def collect_data(self) -> MetricsData | None:
        """Run the instruments' callbacks and return everything recorded so far."""
        with self._lock:
            self._data = None
            self.collect()
            data, self._data = self._data, None
        return data

    def text(self) -> str:
        """The exposition text for a ``GET /metrics``."""
        return render(self.collect_data())

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # Nothing buffered, nothing to flush: a scrape after shutdown just sees no data.
        pass
