"""The sidecar fixtures (tests/sidecar/conftest.py), for running the demo app against one."""

from __future__ import annotations

from tests.sidecar.conftest import make_sidecar, metrics, sidecar, spans

__all__ = ["make_sidecar", "metrics", "sidecar", "spans"]
