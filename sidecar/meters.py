"""Metrics read at collection time rather than recorded per call.

Where it sits in the flow::

    CallTrace.finish() --Sums.add()--> dict of cumulative sums
    Telemetry.observe(circuit=..., limiter=..., connections=...) --> Readings (sources only)
    scrape (GET /metrics) / OTLP export --callbacks--> Sums.observe(), Readings.observe_*()

The two counters every call adds to (cost, requests) are summed in plain
Python and reported by observable counters: a dict update per call instead of
an SDK measurement. The breaker state and the limiter's snapshot are gauges
whose sources are callables, read at every collection, so a reconfigured
runner's new breaker or limiter is read without re-registering anything. A
source that fails is logged by its error's class and yields no point; the
scrape goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.util.types import AttributeValue

__all__ = ["CIRCUIT_VALUES", "ListenerReading", "Readings", "Sums"]

# Under the telemetry logger, where these warnings have always been logged.
log = logging.getLogger(__name__.rpartition(".")[0] + ".telemetry")

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class ListenerReading:
    """One listener's connections, as a collection reads them."""

    listener: str
    open: int
    closed: Mapping[str, int]
    """Cumulative closes by reason: ``refused``, ``evicted``, ``timed_out``."""


class Sums:
    """A cumulative counter kept in a dict and reported by an observable counter."""

    def __init__(self) -> None:
        self._values: dict[tuple[tuple[str, AttributeValue], ...], float] = {}

    def add(self, amount: float, attributes: Mapping[str, AttributeValue]) -> None:
        key = tuple(sorted(attributes.items()))
        self._values[key] = self._values.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # list(): a copy taken at once, should an exporter thread collect mid-call.
        for key, value in list(self._values.items()):
            yield Observation(value, dict(key))


class Readings:
    """The breaker and rate-limit gauges, read from their sources at every collection."""

    def __init__(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes = attributes
        # Set by Telemetry.observe(); None until then (no points).
        self.circuit: Callable[[], Iterable[tuple[str, str, str]]] | None = None
        """(backend, scope, state): per backend ``host`` first, then the scopes not closed."""
        self.limiter: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]] | None = None
        """(backend, snapshot) per backend."""
        self.connections: Callable[[], Iterable[ListenerReading]] | None = None
        """Each listener's open connections and the ones its limits closed."""

    def register(self, meter: Meter) -> None:
        """Create the gauges (circuit state, provider's and local limits) on ``meter``."""
        provider = {
            "requests": "provider_remaining_requests",
            "tokens": "provider_remaining_tokens",
        }
        local = {"requests": "requests_available", "tokens": "tokens_available"}
        for name, callback, description in (
            ("circuit.state", self.observe_circuit, "Breaker: 0 closed, 1 half_open, 2 open."),
            (
                "ratelimit.provider.remaining",
                partial(self.observe_limits, provider),
                "Requests / tokens upstream's last rate-limit headers said remain.",
            ),
            (
                "ratelimit.local.available",
                partial(self.observe_limits, local),
                "Requests / tokens the local limiter would admit now.",
            ),
        ):
            meter.create_observable_gauge(
                f"openai_runtime.{name}", callbacks=[callback], description=description
            )
        meter.create_observable_gauge(
            "openai_runtime.connections.open",
            callbacks=[self.observe_open],
            unit="{connection}",
            description="Client connections open now, per listener (api, admin).",
        )
        meter.create_observable_counter(
            "openai_runtime.connections.closed",
            callbacks=[self.observe_closed],
            unit="{connection}",
            description=(
                "Connections the listener's limits closed: refused (every slot busy), "
                "evicted (idle, for a new one), timed_out (no whole request in time)."
            ),
        )

    def _read(self, source: Callable[[], Any] | None) -> Any:
        if source is None:
            return None
        try:
            return source()
        except Exception as exc:  # a broken gauge must not break the scrape
            log.warning("telemetry gauge source failed: %s", type(exc).__name__)
            return None

    def observe_circuit(self, options: CallbackOptions) -> Iterable[Observation]:
        for backend, scope, state in self._read(self.circuit) or ():
            if state in CIRCUIT_VALUES:
                attributes = {"backend": backend, "scope": scope, "state": state, **self.attributes}
                yield Observation(CIRCUIT_VALUES[state], attributes)

    def observe_open(self, options: CallbackOptions) -> Iterable[Observation]:
        for reading in self._read(self.connections) or ():
            yield Observation(reading.open, {"listener": reading.listener, **self.attributes})

    def observe_closed(self, options: CallbackOptions) -> Iterable[Observation]:
        for reading in self._read(self.connections) or ():
            for reason, count in reading.closed.items():
                attributes = {"listener": reading.listener, "reason": reason, **self.attributes}
                yield Observation(count, attributes)

    def observe_limits(
        self, keys: Mapping[str, str], options: CallbackOptions
    ) -> Iterable[Observation]:
        for backend, snapshot in self._read(self.limiter) or ():
            for kind, key in keys.items():
                value = snapshot.get(key)
                # None means unknown (no headers yet / no local limit): no point, not a zero.
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attributes = {"backend": backend, "kind": kind, **self.attributes}
                    yield Observation(value, attributes)
