"""A deterministic stand-in for api.openai.com and Azure OpenAI, on loopback.

In production the sidecar forwards to OpenAI or Azure; in our tests, our demo
and in users' offline tests it forwards here instead::

    app ──▶ sidecar (localhost) ──▶ FakeUpstream  (instead of api.openai.com / Azure)

It speaks both wire dialects closely enough for the official ``openai`` SDK:

* Direct: ``POST /v1/chat/completions`` (``Authorization: Bearer <key>``) and
  ``GET /v1/models``; ``base_url = url + "/v1"``.
* Azure: ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``
  (``api-key`` header); ``azure_endpoint = url``. Streams carry Azure's quirks:
  an empty first chunk with ``prompt_filter_results``, ``content_filter_results``
  on chunks and a filter-only chunk without ``delta``.

Replies are a fixed function of the request (see :class:`~.fakescenarios.Reply`),
so tests assert exact content, usage and ids (``chatcmpl-<n>``, ``n`` counting
requests). Request headers steer it:

``x-fake-scenario``
    One of the scenarios below (Direct also takes the model ``fake-<scenario>``).
``x-fake-fail-times`` / ``x-fake-sequence``
    The first N requests of a sequence play the scenario (``server-error`` if
    none), later ones succeed: retries can be tested deterministically.
``x-fake-hold``
    Pause a stream after its first content chunk (any other answer: before it
    is sent) until :meth:`FakeUpstream.release`; :meth:`FakeUpstream.wait_held`
    tells when streams are paused there. A released gate stays open.
``x-fake-delay``, ``x-fake-status``, ``x-fake-retry-after``, ``x-fake-retry-after-ms``
    Parameters of the scenarios.
``x-fake-cached-tokens``, ``x-fake-remaining-requests``, ``x-fake-remaining-tokens``
    ``usage.prompt_tokens_details.cached_tokens`` and the ``x-ratelimit-remaining-*`` headers.

Scenarios: ``rate-limit``, ``rate-limit-ms``, ``rate-limit-date``,
``insufficient-quota``, ``server-error``, ``overloaded``, ``status``,
``context-length``, ``content-filter``, ``content-filter-results``,
``content-filter-finish``, ``html-502``, ``garbage``, ``hang``,
``slow-first-byte``, ``stall-mid-stream``, ``reset-mid-stream``,
``reset-before-headers``, ``truncated``, ``inband-error``
(:data:`~.fakescenarios.SCENARIOS` says what each does).

Every request is kept in :attr:`FakeUpstream.requests` with a key fingerprint,
never the key. Nothing logs request bodies or keys. Run it alone with
``openai_runtime_sidecar.fakeupstream.main`` (``--host``, ``--port``, ``--key``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import fakescenarios as fs

__all__ = ["FakeUpstream", "RecordedRequest", "main"]

log = logging.getLogger(__name__)

DEFAULT_DEPLOYMENTS = {
    "gpt-4o-prod": "gpt-4o-2024-08-06",
    "gpt-4o-mini-prod": "gpt-4o-mini-2024-07-18",
}
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "x-stainless-retry-count")
_ID_HEADERS = ("x-request-id", "x-client-request-id", "x-ms-client-request-id")
_RECORDED_HEADERS = frozenset(_TRACE_HEADERS + _ID_HEADERS)
"""Harmless request headers kept in :attr:`RecordedRequest.headers` (with all ``x-fake-*``)."""


def _fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class RecordedRequest:
    """What upstream saw of one request. Holds a fingerprint of the key, never the key.

    ``outcome`` is ``pending`` while it runs, then ``ok``, ``error:<status>``,
    ``reset``, ``cancelled`` (the client left), ``truncated``,
    ``inband-error`` or ``garbage``.
    """

    variant: str
    path: str
    key_fingerprint: str = ""
    model: str | None = None
    deployment: str | None = None
    stream: bool = False
    include_usage: bool = False
    scenario: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    outcome: str = "pending"


class _Misuse(Exception):
    """A malformed ``x-fake-*`` header: answered 400 so the test's mistake is loud."""


@dataclass
class _Gate:
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0


@dataclass
class _Call:
    request: web.Request
    rec: RecordedRequest
    number: int
    api_version: str = ""


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
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle, name="chat")
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._handle, name="azure"
        )
        app.router.add_get("/v1/models", self._handle, name="models")
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
        variant = "azure" if "deployment" in request.match_info else "direct"
        headers = {
            name: value
            for name, value in ((k.lower(), v) for k, v in request.headers.items())
            if name in _RECORDED_HEADERS or name.startswith("x-fake-")
        }
        rec = RecordedRequest(variant, request.path, headers=headers)
        self.requests.append(rec)
        call = _Call(request, rec, len(self.requests))
        try:
            try:
                resp = await self._dispatch(call)
            except _Misuse as exc:
                body = fs.openai_error(str(exc), "invalid_request_error", code="fake_misuse")
                resp = self._json(call, 400, body)
            gate = request.headers.get("x-fake-hold")
            if gate and not resp.prepared and rec.outcome != "reset":
                await self._hold(gate)
            if rec.outcome == "pending":
                rec.outcome = "ok" if resp.status < 400 else f"error:{resp.status}"
            return resp
        except asyncio.CancelledError:
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

    async def _dispatch(self, call: _Call) -> web.StreamResponse:
        request, rec = call.request, call.rec
        route = request.match_info.route.name
        if route == "unknown":
            message = f"Invalid URL ({request.method} {request.path})"
            return self._json(call, 404, fs.openai_error(message, "invalid_request_error"))
        if route == "azure":
            call.api_version = request.query.get("api-version", "")
            if not call.api_version:
                return self._json(call, 404, fs.azure_error("404", "Resource not found"))
            if not _API_VERSION.fullmatch(call.api_version):
                body = fs.azure_error("BadRequest", "API version not supported")
                return self._json(call, 400, body)
            key = request.headers.get("api-key", "")
        else:
            scheme, _, key = request.headers.get("Authorization", "").partition(" ")
            key = key.strip() if scheme.lower() == "bearer" else ""
        rec.key_fingerprint = _fingerprint(key) if key else ""
        if not key or (self._keys is not None and key not in self._keys):
            return self._json(call, 401, fs.AUTH_ERRORS[rec.variant])
        if route == "models":
            names = {*fs.MODEL_ALIASES, *fs.MODEL_ALIASES.values(), *self.deployments.values()}
            return self._json(call, 200, fs.models(names))
        if route == "azure":
            rec.deployment = request.match_info["deployment"]
            rec.model = self.deployments.get(rec.deployment)
            if rec.model is None:
                return self._json(call, 404, fs.DEPLOYMENT_NOT_FOUND)
        return await self._chat(call)

    async def _chat(self, call: _Call) -> web.StreamResponse:
        request, rec = call.request, call.rec
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._json(call, 400, fs.INVALID_JSON)
        rec.body = body
        if not isinstance(body.get("messages"), list):
            message = "Missing required parameter: 'messages'."
            if "messages" in body:
                message = "Invalid type for 'messages': expected an array."
            error = fs.openai_error(message, "invalid_request_error", "messages")
            return self._json(call, 400, error)
        model = body.get("model")
        if rec.variant == "direct":
            if not isinstance(model, str) or not model:
                error = fs.openai_error(
                    "you must provide a model parameter", "invalid_request_error"
                )
                return self._json(call, 400, error)
            rec.model = model
        options = body.get("stream_options")
        rec.stream = body.get("stream") is True
        rec.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        if options is not None and not rec.stream:
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            error = fs.openai_error(message, "invalid_request_error", "stream_options")
            return self._json(call, 400, error)

        scenario = rec.scenario = self._scenario(
            request, model if rec.variant == "direct" else None
        )
        delay = _number(request, "x-fake-delay", 0.5)
        if scenario == "hang":
            await self._closing.wait()  # a client leaving cancels this; stop() ends it
            scenario = "reset-before-headers"
        if scenario == "reset-before-headers":
            return self._abort(call, web.Response())
        if scenario == "slow-first-byte":
            await asyncio.sleep(delay)
        try:
            canned = fs.canned(scenario, rec.variant, request.headers, call.api_version)
        except ValueError as exc:
            raise _Misuse(str(exc)) from exc
        if canned is not None:
            if scenario == "garbage":
                rec.outcome = "garbage"
            headers = self._headers(call) | canned.headers | {"Content-Type": canned.content_type}
            return web.Response(status=canned.status, body=canned.body, headers=headers)

        assert rec.model is not None
        reply = fs.Reply.build(
            body,
            id=f"chatcmpl-{call.number}",
            model=rec.model
            if rec.variant == "azure"
            else fs.MODEL_ALIASES.get(rec.model, rec.model),
            chunks=self.chunks,
            cached_tokens=int(_number(request, "x-fake-cached-tokens", 0)),
            azure=rec.variant == "azure",
            scenario=scenario,
        )
        if rec.stream:
            frames = reply.frames(rec.include_usage)
            cut = min(2, sum(kind == "content" for kind, _ in frames))
            return await self._write(call, frames, scenario, delay, cut)
        if scenario == "inband-error":
            return self._json(call, 200, fs.INBAND_ERROR)
        payload = fs.dumps(reply.completion())
        if scenario in fs.MID_STREAM:  # a non-streamed body breaks halfway
            half = len(payload) // 2
            halves = [("content", payload[:half]), ("content", payload[half:])]
            return await self._write(call, halves, scenario, delay, 1)
        return self._json(call, 200, reply.completion())

    def _scenario(self, request: web.Request, model: Any) -> str | None:
        scenario = request.headers.get("x-fake-scenario") or None
        if scenario is None and isinstance(model, str) and model.startswith("fake-"):
            scenario = model.removeprefix("fake-")
        if scenario is not None and scenario not in fs.SCENARIOS:
            raise _Misuse(f"unknown x-fake-scenario {scenario!r}; known: {', '.join(fs.SCENARIOS)}")
        if "x-fake-fail-times" not in request.headers:
            return scenario
        times = _number(request, "x-fake-fail-times", 0)
        sequence = request.headers.get("x-fake-sequence", "")
        seen = self._sequences.get(sequence, 0)
        self._sequences[sequence] = seen + 1
        return (scenario or "server-error") if seen < times else None

    async def _write(
        self,
        call: _Call,
        frames: list[tuple[str, bytes]],
        scenario: str | None,
        delay: float,
        cut: int,
    ) -> web.StreamResponse:
        """Send ``frames`` one write each; mid-stream scenarios strike after ``cut`` pieces."""
        sse = call.rec.stream
        resp = web.StreamResponse(headers=self._headers(call))
        resp.content_type = "text/event-stream" if sse else "application/json"
        gate = call.request.headers.get("x-fake-hold") if sse else None
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
                        await resp.write(fs.sse(fs.INBAND_ERROR))
                    call.rec.outcome = scenario
                    await resp.write_eof()
                    return resp
            await resp.write_eof()
            call.rec.outcome = "ok"
        except ConnectionError:
            call.rec.outcome = "cancelled"
        return resp

    def _abort(self, call: _Call, resp: web.StreamResponse) -> web.StreamResponse:
        """Drop the TCP connection; aiohttp's later writes fail quietly."""
        call.rec.outcome = "reset"
        resp.force_close()
        if (transport := call.request.transport) is not None:
            transport.abort()
        return resp

    def _headers(self, call: _Call) -> dict[str, str]:
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

    def _json(self, call: _Call, status: int, payload: Any) -> web.Response:
        headers = self._headers(call) | {"Content-Type": "application/json"}
        return web.Response(status=status, body=fs.dumps(payload), headers=headers)


def _number(request: web.Request, name: str, default: float) -> float:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise _Misuse(f"{name} must be a non-negative number, not {raw!r}")
    return value


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
