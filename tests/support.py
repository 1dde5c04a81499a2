"""Helpers shared by tests: test keys and a Secret volume written the kubelet way."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openai_runtime_sidecar.secretvolume import SecretVolume

OLD_KEY = "sk-test-old-0000000000000000"
NEW_KEY = "sk-test-new-1111111111111111"


__all__ = ["NEW_KEY", "OLD_KEY", "SecretVolume", "points"]


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader holds, by metric name."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found
