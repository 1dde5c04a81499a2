"""Built-in Kubernetes objects checked against the API's own OpenAPI schemas.

Shared by the kustomize and the Helm tests: both must hand the API server only
objects it accepts, at the oldest supported version and the newest.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import pytest

__all__ = ["api_group", "schema_problems"]


def api_group(obj: Mapping[str, Any]) -> str:
    """``apps`` for ``apps/v1``; empty for the core group."""
    return str(obj["apiVersion"]).rpartition("/")[0]


def schema_problems(
    objects: Iterable[Mapping[str, Any]], version: str, skip_groups: Collection[str]
) -> list[str]:
    """One line per object that ``kubernetes-validate`` refuses at ``version``
    (``latest``: the newest it knows); kinds of ``skip_groups`` have no built-in schema."""
    kv = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kv.latest_version()
    problems = []
    for obj in objects:
        if api_group(obj) in skip_groups:
            continue
        try:
            kv.validate(dict(obj), version, strict=True)
        except kv.ValidationError as exc:
            problems.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )
    return problems
