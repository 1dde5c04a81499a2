"""Helpers shared by tests: test keys, a Secret volume written the kubelet way, JSON patches."""

from __future__ import annotations

import copy
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openai_runtime_sidecar.secretvolume import SecretVolume

OLD_KEY = "sk-test-old-0000000000000000"
NEW_KEY = "sk-test-new-1111111111111111"


__all__ = ["NEW_KEY", "OLD_KEY", "SecretVolume", "apply_patch", "points"]


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


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A minimal RFC 6902 applier (add, remove, replace) for the ops kopf emits."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            doc = copy.deepcopy(op["value"])
            continue
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            else:
                raise AssertionError(f"unexpected op {op}")
        elif kind in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise AssertionError(f"unexpected op {op}")
    return doc
