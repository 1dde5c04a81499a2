"""A deterministic stand-in for api.openai.com and Azure OpenAI, on loopback.

In production the sidecar forwards to OpenAI or Azure; in our tests, our demo
and in users' offline tests it forwards here instead::

    app ──▶ sidecar (localhost) ──▶ FakeUpstream  (instead of api.openai.com / Azure)

It speaks both wire dialects closely enough for the official ``openai`` SDK,
across the API surface (:mod:`.routes` has the table):

* Direct, under ``/v1`` (``Authorization: Bearer <key>``; ``base_url = url + "/v1"``):
  ``POST /chat/completions``, ``/completions``, ``/embeddings``, ``/responses``
  (``GET``/``DELETE /responses/{id}``), ``/moderations``, ``/images/generations``,
  ``/audio/transcriptions``, ``/audio/translations``, ``/audio/speech``;
  ``/files`` (upload, list, retrieve, ``/content``, delete), ``/batches`` (create,
  list, retrieve, ``/cancel``), ``/vector_stores`` (create, list, retrieve,
  update, delete), ``GET /models`` and ``/models/{model}``.
* Azure (``api-key`` header; ``azure_endpoint = url``): inference under
  ``/openai/deployments/{deployment}/...?api-version=...`` (an unknown deployment
  is Azure's ``DeploymentNotFound``), files, batches, vector stores, models and
  responses (``model`` = deployment) under ``/openai/...?api-version=...``, and
  everything Direct has under Azure's GA ``/openai/v1/...`` (no api-version).
  Chat streams carry Azure's quirks: an empty first chunk with
  ``prompt_filter_results``, ``content_filter_results`` on chunks and a
  filter-only chunk without ``delta``.

Replies are a fixed function of the request (see :class:`~.scenarios.Reply`
and :mod:`.replies`), so tests assert exact content, usage and ids
(``chatcmpl-<n>``, ``resp_<n>``, ``file-<n>``..., ``n`` counting requests).
Uploads are read streaming (:mod:`.records`): a file costs its size and
sha256, never its bytes. Request headers steer it:

``x-fake-scenario``
    One of the scenarios below (Direct also takes the model ``fake-<scenario>``).
    Every route plays them, after reading the body.
``x-fake-fail-times`` / ``x-fake-sequence``
    The first N requests of a sequence play the scenario (``server-error`` if
    none), later ones succeed: retries can be tested deterministically.
``x-fake-hold``
    Pause a stream or download after its first piece (any other answer: before
    it is sent) until :meth:`FakeUpstream.release`; :meth:`FakeUpstream.wait_held`
    tells when requests are paused there. A released gate stays open.
``x-fake-delay``, ``x-fake-status``, ``x-fake-retry-after``, ``x-fake-retry-after-ms``
    Parameters of the scenarios.
``x-fake-cached-tokens``, ``x-fake-reasoning-tokens``
    Usage details of chat and Responses answers.
``x-fake-remaining-requests``, ``x-fake-remaining-tokens``
    The ``x-ratelimit-remaining-*`` headers.
``x-fake-bytes``
    The size of ``/audio/speech`` audio (default 400 bytes per input character).

Scenarios: ``rate-limit``, ``rate-limit-ms``, ``rate-limit-date``,
``insufficient-quota``, ``server-error``, ``overloaded``, ``status``,
``context-length``, ``content-filter``, ``content-filter-results``,
``content-filter-finish``, ``html-502``, ``garbage``, ``hang``,
``slow-first-byte``, ``stall-mid-stream``, ``reset-mid-stream``,
``reset-before-headers``, ``truncated``, ``inband-error``
(:data:`~.scenarios.SCENARIOS` says what each does).

Every request is kept in :attr:`FakeUpstream.requests` (a
:class:`~.records.RecordedRequest`) with a key fingerprint, never the key.
Nothing logs request bodies or keys. Run it alone with
``openai_runtime_sidecar.fakes.upstream.main`` (``--host``, ``--port``, ``--key``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import routes
from . import scenarios as fs
from .records import (
    MAX_JSON,
    BadBody,
    Call,
    Misuse,
    RecordedRequest,
    fingerprint,
    media_type,
    number,
    read_form,
    read_json,
)
from .store import KEEP_FILE, Store

__all__ = ["FakeUpstream", "RecordedRequest", "main"]

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENTS = {
    "gpt-4o-prod": "gpt-4o-2024-08-06",
    "gpt-4o-mini-prod": "gpt-4o-mini-2024-07-18",
    "text-embedding-3-small-prod": "text-embedding-3-small",
    "gpt-35-turbo-instruct-prod": "gpt-35-turbo-instruct",
    "whisper-prod": "whisper",
    "tts-prod": "tts",
    "dall-e-3-prod": "dall-e-3",
}
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "x-stainless-retry-count")
_ID_HEADERS = ("x-request-id", "x-client-request-id", "x-ms-client-request-id")
_API_HEADERS = ("idempotency-key", "openai-beta", "openai-organization", "openai-project")
_RECORDED_HEADERS = frozenset(_TRACE_HEADERS + _ID_HEADERS + _API_HEADERS)
"""Harmless request headers kept in :attr:`RecordedRequest.headers` (with all ``x-fake-*``)."""


@dataclass
class _Gate:
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0


class FakeUpstream:
    """The fake OpenAI / Azure OpenAI server. See the module docstring."""

    def __init__(
        self,
        *,
        keys: Iterable[str] | None = None,
        azure_deployments: Mapping[str, str] | None = None,
        chunks: int = 5,
        chunk_delay: float = 0.0,
        rate_limit_headers: bool = True,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.set_keys(keys)
        self.deployments = dict(
            DEFAULT_DEPLOYMENTS if azure_deployments is None else azure_deployments
        )
        self.chunks = max(1, chunks)
        self.chunk_delay = chunk_delay
        self.rate_limit_headers = rate_limit_headers
        self.store = Store()
        """Files, batches, vector stores and stored responses (:mod:`.store`)."""
        self._sequences: dict[str, int] = {}
        self._gates: dict[str, _Gate] = {}
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- control ------------------------------------------------------------

    def set_keys(self, keys: Iterable[str] | None) -> None:
        """Which keys are accepted from now on; ``None`` accepts any non-empty key."""
        self._keys = None if keys is None else frozenset(keys)

    def release(self, gate: str) -> None:
        """Open ``gate``: held requests go on, later ones pass straight through."""
        self._gate(gate).opened.set()

    async def wait_held(self, gate: str, count: int = 1) -> None:
        """Return once ``count`` requests are paused at ``gate``."""
        held = self._gate(gate)
        while held.held < count:
            held.arrived.clear()
            await held.arrived.wait()

    def _gate(self, name: str) -> _Gate:
        return self._gates.setdefault(name, _Gate())

    async def _hold(self, name: str) -> None:
        gate = self._gate(name)
        if gate.opened.is_set():
            return
        gate.held += 1
        gate.arrived.set()
        try:
            await gate.opened.wait()
        finally:
            gate.held -= 1

    # -- lifecycle ----------------------------------------------------------

    def app(self) -> web.Application:
        """The routes, for embedding. Serve it with ``handler_cancellation=True``
        (as :meth:`start` and aiohttp's ``TestServer`` do) so that a client going
        away ends ``hang``, holds and stalls."""
        # Uploads are streamed whatever their size; only a JSON body is read whole.
        app = web.Application(client_max_size=MAX_JSON)
        for route in routes.ROUTES.values():
            method, path = route.endpoint.method, route.path
            app.router.add_route(method, path, self._handle, name=route.name)
        app.router.add_route("*", "/{tail:.*}", self._handle, name="unknown")
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); return the base URL."""
        self._closing.clear()
        runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound = runner.addresses[0][1]
        self._url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        log.info("fake upstream listening on %s", self._url)
        return self._url

    async def stop(self) -> None:
        """Open every gate, end hanging requests, close the server."""
        self._closing.set()
        for gate in self._gates.values():
            gate.opened.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``); only after :meth:`start`."""
        if self._url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._url

    # -- request handling ---------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = routes.ROUTES.get(request.match_info.route.name or "")
        if route is not None:
            variant = route.variant
        else:
            variant = "azure" if request.path.startswith("/openai/") else "direct"
        headers = {
            name: value
            for name, value in ((k.lower(), v) for k, v in request.headers.items())
            if name in _RECORDED_HEADERS or name.startswith("x-fake-")
        }
        rec = RecordedRequest(
            variant,
            request.path,
            headers=headers,
            method=request.method,
            endpoint=route.endpoint.name if route else "",
            query=dict(request.query),
            content_type=media_type(request.headers.get("Content-Type")),
        )
        self.requests.append(rec)
        call = Call(request, rec, len(self.requests), route=route)
        try:
            try:
                resp = await self._dispatch(call)
            except Misuse as exc:
                body = fs.openai_error(str(exc), "invalid_request_error", code="fake_misuse")
                resp = self._json(call, 400, body)
            except BadBody as exc:
                resp = self._json(call, exc.status, exc.payload)
            gate = request.headers.get("x-fake-hold")
            if gate and not resp.prepared and rec.outcome != "reset":
                await self._hold(gate)
            if rec.outcome == "pending":
                rec.outcome = "ok" if resp.status < 400 else f"error:{resp.status}"
            return resp
        except (asyncio.CancelledError, ConnectionError):
            rec.outcome = "cancelled"
            raise
        finally:
            rec.finished_at = time.monotonic()
            log.debug(
                "%s %s scenario=%s key=%s -> %s",
                variant,
                rec.path,
                rec.scenario,
                rec.key_fingerprint or "-",
                rec.outcome,
            )

    async def _dispatch(self, call: Call) -> web.StreamResponse:
        """The checks every route shares: URL, api-version, key, deployment; then the body,
        the scenario, and the route's handler."""
        request, rec, route = call.request, call.rec, call.route
        if route is None:
            if rec.variant == "azure":
                return self._json(call, 404, fs.AZURE_NOT_FOUND)
            message = f"Invalid URL ({request.method} {request.path})"
            return self._json(call, 404, fs.openai_error(message, "invalid_request_error"))
        bearer_scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        bearer = bearer.strip() if bearer_scheme.lower() == "bearer" else ""
        if route.dialect == "azure":
            call.api_version = request.query.get("api-version", "")
            if not call.api_version:
                return self._json(call, 404, fs.AZURE_NOT_FOUND)
            if not _API_VERSION.fullmatch(call.api_version):
                error = fs.azure_error("BadRequest", "API version not supported")
                return self._json(call, 400, error)
            key = request.headers.get("api-key", "")
        elif route.dialect == "azure-v1":  # the GA routes also take the key as a Bearer token
            key = request.headers.get("api-key", "") or bearer
        else:
            key = bearer
        rec.key_fingerprint = fingerprint(key) if key else ""
        if not key or (self._keys is not None and key not in self._keys):
            return self._json(call, 401, fs.AUTH_ERRORS[rec.variant])
        if "deployment" in request.match_info:
            rec.deployment = request.match_info["deployment"]
            rec.model = self.deployments.get(rec.deployment)
            if rec.model is None:
                return self._json(call, 404, fs.DEPLOYMENT_NOT_FOUND)
        endpoint = route.endpoint
        if endpoint.body == "self":
            return await endpoint.handler(self, call, {})
        body: dict[str, Any] = {}
        if endpoint.body == "json":
            body = await read_json(call)
        elif endpoint.body == "form":
            body = dict((await read_form(call, keep=KEEP_FILE)).fields)
        model = body.get("model")
        if isinstance(model, str) and model and (missing := self._named(call, model)):
            return missing
        rec.scenario = self._scenario(request, model if rec.variant == "direct" else None)
        call.delay = number(request, "x-fake-delay", 0.5)
        failed = await self._fail(call)
        return failed if failed is not None else await endpoint.handler(self, call, body)

    async def _fail(self, call: Call) -> web.StreamResponse | None:
        """The answer of a scenario that strikes before any content, or ``None``."""
        scenario, rec = call.rec.scenario, call.rec
        if scenario == "hang":
            await self._closing.wait()  # a client leaving cancels this; stop() ends it
            scenario = "reset-before-headers"
        if scenario == "reset-before-headers":
            return self._abort(call, web.Response())
        if scenario == "slow-first-byte":
            await asyncio.sleep(call.delay)
        try:
            canned = fs.canned(scenario, rec.variant, call.request.headers, call.api_version)
        except ValueError as exc:
            raise Misuse(str(exc)) from exc
        if canned is None:
            return None
        if scenario == "garbage":
            rec.outcome = "garbage"
        headers = self._headers(call) | canned.headers | {"Content-Type": canned.content_type}
        return web.Response(status=canned.status, body=canned.body, headers=headers)

    def _named(self, call: Call, model: str) -> web.Response | None:
        """Take the body's ``model``; on Azure's resource-level and ``/openai/v1`` routes it
        names a deployment, which must exist (then the answer is ``None``)."""
        rec = call.rec
        if rec.deployment is not None:  # named by the path
            return None
        if rec.variant == "direct":
            rec.model = model
            return None
        rec.deployment, rec.model = model, self.deployments.get(model)
        return None if rec.model is not None else self._json(call, 404, fs.DEPLOYMENT_NOT_FOUND)

    def _scenario(self, request: web.Request, model: Any) -> str | None:
        scenario = request.headers.get("x-fake-scenario") or None
        if scenario is None and isinstance(model, str) and model.startswith("fake-"):
            scenario = model.removeprefix("fake-")
        if scenario is not None and scenario not in fs.SCENARIOS:
            raise Misuse(f"unknown x-fake-scenario {scenario!r}; known: {', '.join(fs.SCENARIOS)}")
        if "x-fake-fail-times" not in request.headers:
            return scenario
        times = number(request, "x-fake-fail-times", 0)
        sequence = request.headers.get("x-fake-sequence", "")
        seen = self._sequences.get(sequence, 0)
        self._sequences[sequence] = seen + 1
        return (scenario or "server-error") if seen < times else None

    async def _reply(
        self, call: Call, payload: Any, content_type: str = "application/json"
    ) -> web.StreamResponse:
        """A non-streamed 200, or how a scenario breaks it (halfway, or an error body)."""
        scenario = call.rec.scenario
        if scenario == "inband-error":
            return self._json(call, 200, fs.INBAND_ERROR)
        data = payload if isinstance(payload, bytes) else fs.dumps(payload)
        if scenario in fs.MID_STREAM:  # a non-streamed body breaks halfway
            half = len(data) // 2
            halves = [("content", data[:half]), ("content", data[half:])]
            return await self._write(call, halves, 1, content_type=content_type)
        headers = self._headers(call) | {"Content-Type": content_type}
        return web.Response(status=200, body=data, headers=headers)

    async def _write(
        self,
        call: Call,
        frames: Iterable[tuple[str, bytes]],
        cut: int,
        *,
        content_type: str,
        hold: bool = False,
        inband: bytes = fs.sse(fs.INBAND_ERROR),
    ) -> web.StreamResponse:
        """Send ``frames`` one write each (a lazy iterable keeps big downloads out of memory).

        Mid-stream scenarios strike after ``cut`` content pieces; with ``hold``,
        ``x-fake-hold`` pauses after the first one.
        """
        scenario, delay = call.rec.scenario, call.delay
        resp = web.StreamResponse(headers=self._headers(call))
        resp.content_type = content_type
        gate = call.request.headers.get("x-fake-hold") if hold else None
        try:
            await resp.prepare(call.request)
            sent = 0
            for kind, data in frames:
                if kind == "content" and sent and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                await resp.write(data)
                if kind != "content":
                    continue
                sent += 1
                if sent == 1 and gate:
                    await self._hold(gate)
                if sent != cut or scenario not in fs.MID_STREAM:
                    continue
                if scenario == "stall-mid-stream":
                    await asyncio.sleep(delay)
                elif scenario == "reset-mid-stream":
                    return self._abort(call, resp)
                else:  # truncated, inband-error: a clean end without the rest
                    if scenario == "inband-error":
                        await resp.write(inband)
                    call.rec.outcome = scenario
                    await resp.write_eof()
                    return resp
            await resp.write_eof()
            call.rec.outcome = "ok"
        except ConnectionError:
            call.rec.outcome = "cancelled"
        return resp

    def _abort(self, call: Call, resp: web.StreamResponse) -> web.StreamResponse:
        """Drop the TCP connection; aiohttp's later writes fail quietly."""
        call.rec.outcome = "reset"
        resp.force_close()
        if (transport := call.request.transport) is not None:
            transport.abort()
        return resp

    def _headers(self, call: Call) -> dict[str, str]:
        n, get = call.number, call.request.headers.get
        elapsed = int((time.monotonic() - call.rec.started_at) * 1000)
        if call.rec.variant == "azure":
            headers = {"apim-request-id": f"00000000-0000-4000-8000-{n:012x}"}
        else:
            headers = {"x-request-id": f"req_fake{n:08d}"}
        headers["openai-processing-ms"] = str(elapsed)
        if self.rate_limit_headers:
            headers |= {
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-remaining-requests": get("x-fake-remaining-requests", "9999"),
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-remaining-tokens": get("x-fake-remaining-tokens", "1999000"),
                "x-ratelimit-reset-requests": "6ms",
                "x-ratelimit-reset-tokens": "1m0s",
            }
        return headers

    def _json(self, call: Call, status: int, payload: Any) -> web.Response:
        headers = self._headers(call) | {"Content-Type": "application/json"}
        return web.Response(status=status, body=fs.dumps(payload), headers=headers)


async def _serve(upstream: FakeUpstream, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        print(await upstream.start(host, port), flush=True)
        await done.wait()
    finally:
        await upstream.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL once listening."""
    parser = argparse.ArgumentParser(
        prog="fakeupstream", description="A deterministic fake OpenAI / Azure OpenAI server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--key", action="append", help="an accepted API key (repeatable; default: any key)"
    )
    parser.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    args = parser.parse_args(argv)
    upstream = FakeUpstream(keys=args.key, chunks=args.chunks, chunk_delay=args.chunk_delay)
    asyncio.run(_serve(upstream, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
