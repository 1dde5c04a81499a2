"""The operator's own HTTP listener: ``/metrics``, ``/healthz`` and ``/readyz``.

:mod:`.main` binds it on ``--metrics-port`` before kopf starts, so a port that
cannot be bound ends the process with the reason instead of leaving a replica
that reconciles nothing. ``/metrics`` is the Prometheus text of
:mod:`.telemetry`. ``/readyz`` is the Deployment's readiness probe: with
``failurePolicy: Fail`` the webhook Service must only send admission requests
to replicas whose webhook server listens, so readiness waits for it (and for
the first login), while liveness stays on kopf's own ``--liveness`` endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from openai_runtime_sidecar.prometheus import CONTENT_TYPE

from .telemetry import OperatorTelemetry

__all__ = ["Readiness", "start_admin_server"]

Readiness = Callable[[], Mapping[str, bool]]
"""Named checks, all True when the replica is ready."""


async def start_admin_server(
    telemetry: OperatorTelemetry, host: str, port: int, readiness: Readiness
) -> tuple[web.AppRunner, int]:
    """Serve the three routes on ``host:port``; the runner and the bound port.

    Raises :class:`OSError` when the port cannot be bound.
    """

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=telemetry.prometheus_text().encode("utf-8"),
            headers={"Content-Type": CONTENT_TYPE},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = dict(readiness())
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
