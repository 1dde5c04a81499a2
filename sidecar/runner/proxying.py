"""Every API call besides chat: one upstream exchange behind the runner's policies.

The sidecar hands :func:`proxy` a :class:`ProxyRequest` (an
:class:`~.operations.Operation`, the path under ``/v1``, the app's query and
forwarded headers, and the body: JSON bytes, or an upload streamed through
as it arrives). The call takes the same road as chat: limiter, breaker,
attempts with the call's credential snapshot, retries as the policy says,
timeouts, classification of upstream's errors. Two things differ:

* **Retries are safe per operation.** A call that creates something (files,
  batches, stored responses...) or whose upload was streamed is repeated only
  when upstream surely did not see it (no connection was made; a 429, for
  a body that can be sent again), or, for a body kept in memory, when the app
  sent an ``Idempotency-Key``, which goes upstream unchanged on every attempt.
* **The answer is passed on as it comes.** :class:`ProxiedCall` yields
  upstream's bytes; JSON answers of operations with usage are read whole and
  parsed for it (embeddings, completions, responses), SSE answers are
  forwarded frame by frame while their usage is picked up (``usage`` chunks
  of legacy completions, the Responses API's ``response.completed`` event),
  anything else (audio, file content) streams through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from . import jsoncodec
from .config import AzureVariant
from .credentials import CredentialSnapshot
from .errors import RateLimited, RunnerError, classify_response
from .operations import Operation, upstream_url
from .ratelimit import RatePermit
from .results import Answered, CallLedger, CallOutcome, Usage
from .sse import SSEDecoder, SSEFrame
from .streaming import COST_FIELD
from .tokens import max_output_tokens
from .transport import Body, UpstreamResponse

if TYPE_CHECKING:
    from .backends import Backend
    from .runner import AttemptObserver, OpenAiRunner

__all__ = ["ProxiedCall", "ProxyRequest", "proxy"]

USER_AGENT = "openai-runtime/0.1"
_USAGE_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """One app request, as the runner sends it on."""

    operation: Operation
    method: str
    path: str
    """Under ``/v1``: ``/embeddings``, ``/files/file-1/content``."""
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The app's headers worth forwarding (credentials already removed)."""
    body: Body = None
    payload: Mapping[str, Any] | None = None
    """The body parsed, when it is a JSON object (the model, estimates)."""
    deployment: str | None = None
    """Azure: the deployment of a per-deployment operation."""
    azure_v1: bool = False
    """Azure: the app called the resource's ``/openai/v1`` routes itself."""
    hide_usage_chunk: bool = False
    """A stream's usage-only chunk was asked for on the app's behalf: not passed on."""

    @property
    def stream(self) -> bool:
        return bool(self.payload and self.payload.get("stream") is True)

    @property
    def model(self) -> str | None:
        model = self.payload.get("model") if self.payload else None
        return model if isinstance(model, str) and model else None


def _may_retry(request: ProxyRequest) -> Callable[[RunnerError], bool] | None:
    """What may be retried, for calls that must not reach upstream twice (None: anything)."""
    replayable = not (request.body is not None and not isinstance(request.body, bytes))
    # The headers keep the app's spelling; the key is only looked for when it matters.
    if replayable and (
        not request.operation.creates or "idempotency-key" in map(str.lower, request.headers)
    ):
        return None

    def unseen(err: RunnerError) -> bool:
        # A 429 is refused before any work; a streamed upload is gone, though.
        return err.never_sent or (replayable and isinstance(err, RateLimited))

    return unseen


def _estimate(request: ProxyRequest) -> tuple[int, int]:
    """(prompt, output) tokens to pre-charge the limiter with: inference calls only."""
    payload = request.payload
    if not request.operation.inference or payload is None or not isinstance(request.body, bytes):
        return 0, 0
    prompt = max(1, len(request.body) // 4)
    if request.operation.usage == "embeddings":
        return prompt, 0
    limit = payload.get("max_output_tokens")
    output = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
    return prompt, output or max_output_tokens(payload, default=1024)


def _scope(runner: OpenAiRunner, request: ProxyRequest) -> Callable[[Backend], str]:
    """The breaker scope: Azure's deployment for per-deployment calls, else the model."""

    def scope(backend: Backend) -> str:
        if not backend.primary or backend.models:
            return backend.scope(request.model, request.deployment)
        per_deployment = request.operation.per_deployment and not request.azure_v1
        if isinstance(backend.variant, AzureVariant) and per_deployment:
            return runner.circuit_scope(None, request.deployment)
        return request.model or ""

    return scope


def _pool(runner: OpenAiRunner, request: ProxyRequest) -> tuple[Backend, ...]:
    """The backends that may serve ``request``: fallbacks only for inference on a JSON body
    kept in memory (what can be sent again, and named by its model everywhere)."""
    portable = (
        request.operation.inference
        and request.payload is not None
        and isinstance(request.body, bytes)
        and not request.azure_v1
    )
    return runner.backends if portable else runner.backends[:1]


def _target(backend: Backend, request: ProxyRequest) -> tuple[str, Body]:
    """Where ``request`` goes at ``backend``, and the body it goes with."""
    variant = backend.variant
    body = request.body
    if not isinstance(variant, AzureVariant):
        url = upstream_url(
            "direct", variant.endpoint, request.operation, request.path, query=request.query
        )
        mapped = backend.upstream_model(request.model)
        if mapped != request.model and request.payload is not None:
            body = jsoncodec.dumps({**request.payload, "model": mapped})
        return url, body
    if request.azure_v1:
        url = f"{variant.base_url()}/openai/v1{request.path}"
        return (f"{url}?{request.query}" if request.query else url), body
    deployment: str | None
    if backend.primary and not backend.models:
        deployment = request.deployment or variant.deployment
    else:
        deployment = backend.deployment(request.model, request.deployment)
    url = upstream_url(
        "azure",
        variant.base_url(),
        request.operation,
        request.path,
        deployment=deployment,
        api_version=variant.api_version,
        query=request.query,
    )
    return url, body


async def proxy(
    runner: OpenAiRunner, request: ProxyRequest, *, observer: AttemptObserver | None = None
) -> ProxiedCall:
    """Send ``request`` upstream; the answer once its headers arrived (errors are raised)."""
    ledger = CallLedger(
        stream=request.stream,
        variant=runner.config.variant.selected.name,
        server_address=runner.server_address,
        request_model=request.model,
        started_at=runner.clock.monotonic(),
    )
    prompt, output = _estimate(request)
    pool = runner.order(_pool(runner, request))
    permit = await runner._admit(ledger, prompt + output, pool, spends=request.method == "POST")

    async def send(
        backend: Backend, snapshot: CredentialSnapshot, extra: dict[str, str], budget: float
    ) -> UpstreamResponse:
        url, body = _target(backend, request)
        headers = dict(extra)
        headers.update(backend.variant.auth_headers(snapshot.value))
        headers["User-Agent"] = USER_AGENT
        response = await runner.transport.request(
            request.method, url, headers, body, stream=request.stream, budget=budget
        )
        runner._observe(ledger, response.headers, backend)
        if not 200 <= response.status < 300:
            raw = await response.read()
            now = runner.clock.time()
            raise classify_response(response.status, response.headers, raw, now=now)
        return response

    response = await runner._call(
        ledger,
        permit,
        send,
        request.headers,
        observer,
        _may_retry(request),
        scope=_scope(runner, request),
        pool=pool,
    )
    runner._opened(ledger, response.status)
    return ProxiedCall(runner, request, response, ledger, permit)


class ProxiedCall:
    """Upstream's answer on its way to the app; the books close when it is done.

    Read :meth:`body` (JSON answers with usage) or iterate :meth:`chunks`
    (everything else); either way call :meth:`close` at the end, also when
    the app went away: :attr:`outcome` is built there. What the answer says
    (model, id, usage) is kept here until then, never written into the
    runner's ledger as it goes.
    """

    def __init__(
        self,
        runner: OpenAiRunner,
        request: ProxyRequest,
        response: UpstreamResponse,
        ledger: CallLedger,
        permit: RatePermit,
    ) -> None:
        self._runner = runner
        self._backend = ledger.backend
        self._request = request
        self._response = response
        self._ledger = ledger
        self._permit = permit
        self.attempts = ledger.attempts
        """Upstream attempts it took to get this answer."""
        self.outcome: CallOutcome | None = None
        """What the call came to: set by :meth:`close`."""
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.status = response.status
        self.headers = CIMultiDict(response.headers)
        self._usage: Usage | None = None
        self._rewritten: bytes | None = None
        self._complete = False
        self._closed = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def buffered(self) -> bool:
        """Whether the answer is read whole: a JSON answer that reports usage."""
        return self._request.operation.usage is not None and "json" in self.content_type

    async def body(self) -> bytes:
        """The whole answer, its usage and model recorded."""
        raw = await self._response.read()
        self._complete = True
        try:
            payload = jsoncodec.loads(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        if isinstance(payload, dict):
            self._record(payload)
        return raw

    async def chunks(self) -> AsyncIterator[bytes]:
        """The answer as it arrives; SSE is passed on frame by frame and read for usage."""
        sse = "text/event-stream" in self.content_type
        decoder = SSEDecoder() if sse else None
        async for chunk in self._response.chunks():
            if decoder is None:
                yield chunk
                continue
            out = self._forward(decoder.feed(chunk))
            if out:
                yield out
        if decoder is not None:
            out = self._forward(decoder.flush())
            if out:
                yield out
        self._complete = True

    def _forward(self, frames: list[SSEFrame]) -> bytes:
        out = []
        for frame in frames:
            if self._scan(frame):
                out.append(self._rewritten or frame.raw)
                self._rewritten = None
        return b"".join(out)

    def _scan(self, frame: SSEFrame) -> bool:
        """Record what ``frame`` says of the call; whether to pass it on."""
        data = frame.data
        if not data or data == "[DONE]" or ('"usage"' not in data and self.response_id):
            return True
        try:
            event: Any = jsoncodec.loads(data)
        except ValueError:
            return True
        if not isinstance(event, dict):
            return True
        usage_only = event.get("choices") == [] and isinstance(event.get("usage"), dict)
        outer = event
        if event.get("type") in ("response.created", *_USAGE_EVENTS):
            event = event.get("response")
            if not isinstance(event, dict):
                return True
        self._record(event)
        if usage_only and self._request.hide_usage_chunk:
            return False
        self._with_cost(frame, outer, event)
        return True

    def _with_cost(self, frame: SSEFrame, outer: dict[str, Any], event: dict[str, Any]) -> None:
        """The event carrying a stream's usage also says what the call cost (as chat's)."""
        usage = event.get("usage")
        if self._usage is None or not isinstance(usage, dict):
            return
        cost = self._runner.price(
            self._usage,
            model=self.response_model,
            fallback_model=self._request.model,
            backend=self._backend,
        )
        if not cost.priced:
            return
        usage[COST_FIELD] = round(cost.usd, 10)
        data = jsoncodec.dumps(outer)
        head = b"event: " + frame.event.encode("utf-8") + b"\n" if frame.event else b""
        self._rewritten = head + b"data: " + data + b"\n\n"

    def _record(self, payload: Mapping[str, Any]) -> None:
        model, rid = payload.get("model"), payload.get("id")
        if isinstance(model, str) and model:
            self.response_model = model
        if isinstance(rid, str) and rid and self.response_id is None:
            self.response_id = rid
        usage = Usage.from_payload(payload.get("usage"))
        if usage is not None:
            self._usage = usage

    def close(self) -> None:
        """Release upstream's connection and settle the books (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._complete:
            self._response.release()
        else:
            self._response.close()
        answered = Answered(self.response_model, self.response_id)
        self.outcome = self._runner._conclude(
            self._ledger, self._permit, self._usage, answered=answered
        )

    async def aclose(self) -> None:
        self.close()
