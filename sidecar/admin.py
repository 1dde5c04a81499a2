"""The admin listener: probes, metrics and a status page for operators.

Bound to ``0.0.0.0:9464`` so kubelet and Prometheus can reach it. It answers
about the sidecar, never for it: nothing here can spend the key, and nothing
here ever shows it (the credential appears as its fingerprint only).

- ``/healthz``: the process is alive and its loop turns.
- ``/readyz``: a config is loaded and a credential is present, and the
  sidecar is not shutting down. An open circuit is reported, not a reason to
  go unready: taking the pod out of its Service would not heal upstream.
- ``/metrics``: Prometheus text.
- ``/status``: JSON for humans and for the operator's convergence report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .app import Sidecar

__all__ = ["build_admin_app", "status_document"]


def status_document(sidecar: Sidecar) -> dict[str, Any]:
    """What ``/status`` shows: configuration identity, credential, breaker, limits, spend."""
    config = sidecar.config
    snapshot = sidecar.credentials.current
    variant = config.variant.selected
    return {
        "runtime": {"namespace": config.runtime.namespace, "name": config.runtime.name},
        "variant": variant.name,
        "upstream": variant.chat_completions_url().split("?")[0],
        "ready": sidecar.ready,
        "uptimeSeconds": round(time.monotonic() - sidecar.started_at, 3),
        "credential": {
            "fingerprint": snapshot.fingerprint if snapshot else None,
            "loadedAt": snapshot.loaded_at if snapshot else None,
            "source": sidecar.credentials.ref.describe(),
            "rotations": sidecar.credentials.rotations,
            "lastError": sidecar.credential_error,
        },
        "config": {
            "generation": sidecar.config_generation,
            "lastError": sidecar.config_error,
        },
        "models": {"allow": config.models.allow, "default": config.models.default},
        "circuit": dict(sidecar.runner.breaker.snapshot()),
        "rateLimits": dict(sidecar.runner.limiter.snapshot()),
        "spend": {model: totals.as_dict() for model, totals in sorted(sidecar.spend.items())},
    }


def build_admin_app(sidecar: Sidecar) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = sidecar.unready_reasons()
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "circuit": sidecar.runner.breaker.state.value,
        }
        return web.json_response(body, status=200 if not reasons else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=sidecar.telemetry.prometheus_text().encode("utf-8"),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(sidecar))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
