"""The admin listener: probes, metrics and a status page for operators.

Bound to ``0.0.0.0:9464`` so kubelet and Prometheus can reach it. It answers
about the sidecar, never for it: nothing here can spend the key, and nothing
here ever shows it (the credential appears as its fingerprint only).

The port is open to the whole pod network without authentication, so what
it tells depends on who asks, decided per request from the connection's
peer address (never from headers such as ``X-Forwarded-For``, which anyone
can send):

- ``/healthz``: the process is alive and its loop turns.
- ``/readyz``: a config is loaded and a credential is present, and the
  sidecar is not shutting down. An open circuit is reported, not a reason to
  go unready: taking the pod out of its Service would not heal upstream.
  Over the network only ``ready`` and reason ``codes``; from loopback also
  the reasons in words (they name the key file) and the circuit state.
- ``/metrics``: Prometheus text, to anyone (its labels carry no secrets).
  Collected and rendered in a worker thread (:class:`Scrapes`), one render
  at a time shared by the scrapes that overlap it: at the label bound the
  text takes a few hundred milliseconds to build, which on the loop would
  hold up every API call for as long.
- ``/status``: from loopback (``kubectl exec``, a debug container) the full
  JSON for humans; over the network only what the operator reads: the
  ``credential.fingerprint`` its convergence check compares, and ``spend``
  (this process's instance id, USD in all and per model) that its budget
  sums. No upstream URL, deployment, key file path, tokens or reload errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .app import Sidecar

__all__ = [
    "Scrapes",
    "build_admin_app",
    "is_loopback_peer",
    "network_status_document",
    "status_document",
    "unready_codes",
]


def is_loopback_peer(request: web.BaseRequest) -> bool:
    """Whether the connection comes from this pod's own network namespace.

    Read from the socket's peer address, not ``request.remote`` (which
    ``request.clone(remote=...)`` or a forwarding middleware may rewrite) and
    never from a header. Anything unknown counts as the network: fail closed.
    """
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    # A dual-stack ``[::]`` listener sees IPv4 loopback as ``::ffff:127.0.0.1``.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


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
        "uptimeSeconds": round(sidecar.clock.monotonic() - sidecar.started_at, 3),
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
        "circuit": sidecar.runner.circuits.snapshot(),
        "fallbacks": [
            {
                "name": backend.name,
                "variant": backend.variant.name,
                "upstream": backend.variant.chat_completions_url().split("?")[0],
                "credential": {
                    "fingerprint": backend.credentials.current.fingerprint
                    if backend.credentials.current
                    else None,
                    "source": backend.credentials.ref.describe(),
                    "rotations": backend.credentials.rotations,
                },
                "circuit": backend.circuits.snapshot(),
                "rateLimits": dict(backend.limiter.snapshot()),
            }
            for backend in sidecar.runner.backends[1:]
        ],
        "rateLimits": dict(sidecar.runner.limiter.snapshot()),
        "backends": backends_document(sidecar),
        "spend": {
            **spend_document(sidecar),
            "models": {model: t.as_dict() for model, t in sorted(sidecar.spend.items())},
        },
        "budget": budget_document(sidecar),
    }


def budget_document(sidecar: Sidecar) -> dict[str, Any]:
    """The budget as the operator last judged it, and what this pod spent since."""
    gate = sidecar.runner.budget
    return {
        **gate.settings.model_dump(by_alias=True, mode="json", exclude_none=True),
        "spentSinceUsd": round(gate.spent_usd, 10),
    }


def backends_document(sidecar: Sidecar) -> dict[str, str]:
    """Each backend's health by name: ``closed`` (healthy), ``degraded`` (a model's or
    deployment's circuit is not closed), ``open`` or ``half_open`` (the host's), or
    ``paused``: its circuits are closed but its upstream asked for a pause (a
    retry-after still running, or its rate-limit headers say its budget is spent),
    so calls that can go elsewhere do; ``no_key``: no key loaded, never called."""
    health: dict[str, str] = {}
    for backend in sidecar.runner.backends:
        states = backend.circuits.states()
        host = states[0][1].value
        if backend.credentials.current is None:
            host = "no_key"
        elif host == "closed" and len(states) > 1:
            host = "degraded"
        elif host == "closed" and (
            backend.limiter.resting or backend.limiter.snapshot()["blocked_until"] is not None
        ):
            host = "paused"
        health[backend.name] = host
    return health


def spend_document(sidecar: Sidecar) -> dict[str, Any]:
    """USD since this process started, in all and per model, and which process it is."""
    by_model = {model: round(t.usd, 10) for model, t in sorted(sidecar.spend.items()) if t.usd}
    return {
        "instance": sidecar.instance,
        "usd": round(sum(t.usd for t in sidecar.spend.values()), 10),
        "byModel": by_model,
    }


def network_status_document(sidecar: Sidecar) -> dict[str, Any]:
    """What ``/status`` shows off loopback: what the operator reads, only.

    The operator asks each pod over the pod network for ``credential.fingerprint``
    (``openai_runtime_operator.convergence``), ``spend`` and, with fallbacks,
    each backend's health (``openai_runtime_operator.budgeting``) and reads
    nothing else; a field added here is shown to every pod in the cluster.
    """
    snapshot = sidecar.credentials.current
    document: dict[str, Any] = {
        "credential": {"fingerprint": snapshot.fingerprint if snapshot else None},
        "spend": spend_document(sidecar),
    }
    if len(sidecar.runner.backends) > 1:
        document["backends"] = backends_document(sidecar)
    return document


_REASON_CODES = (
    ("shutting down", "shutting_down"),
    ("no API key", "no_credential"),
    ("API listener not started", "api_not_listening"),
)
"""Leading words of :meth:`Sidecar.unready_reasons` and the code each shows as."""


def unready_codes(reasons: list[str]) -> list[str]:
    """The worded unready reasons as fixed codes, safe to show anyone.

    The words name the key file, so the network gets these instead: one code
    per reason, in order, so ``ready`` and the codes never disagree. A reason
    this table does not know shows as ``unready`` rather than in words.
    """
    codes = []
    for reason in reasons:
        code = next((c for prefix, c in _REASON_CODES if reason.startswith(prefix)), "unready")
        codes.append(code)
    return codes


class Scrapes:
    """``/metrics`` bodies rendered off the event loop, one at a time.

    The OpenTelemetry SDK collects from another thread by design (its
    periodic OTLP reader does), so the loop keeps serving calls and only
    shares the interpreter with the render. A scrape that arrives while a
    render runs waits for that one, so a flood of scrapes costs one render
    and one body in memory, not one each.
    """

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._pending: asyncio.Future[bytes] | None = None

    def _encoded(self) -> bytes:
        return self._render().encode("utf-8")

    async def body(self) -> bytes:
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(asyncio.to_thread(self._encoded))
            pending.add_done_callback(self._finished)
        # Shielded: a scraper that hangs up must not cancel the others' render.
        return await asyncio.shield(pending)

    def _finished(self, future: asyncio.Future[bytes]) -> None:
        if self._pending is future:
            self._pending = None
        if not future.cancelled():
            future.exception()  # retrieved: a failed render is each waiter's error


def build_admin_app(sidecar: Sidecar) -> web.Application:
    scrapes = Scrapes(lambda: sidecar.telemetry.prometheus_text())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = sidecar.unready_reasons()
        body: dict[str, Any] = {"ready": not reasons, "codes": unready_codes(reasons)}
        if is_loopback_peer(request):
            body["reasons"] = reasons
            body["circuit"] = {
                scope: state.value for scope, state in sidecar.runner.circuits.states()
            }
        return web.json_response(body, status=200 if not reasons else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=await scrapes.body(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def status(request: web.Request) -> web.Response:
        if is_loopback_peer(request):
            return web.json_response(status_document(sidecar))
        return web.json_response(network_status_document(sidecar))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
