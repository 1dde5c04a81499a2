"""The API listener: OpenAI's HTTP surface on loopback, in front of the runner.

Apps send exactly what they would send to api.openai.com (the official SDK
with ``OPENAI_BASE_URL=http://127.0.0.1:8787/v1``). Each request is checked
here (size, JSON, the fields the sidecar itself relies on, the model
allow-list) and then handed to the runner, which adds the real credential;
whatever the client put in ``Authorization`` is ignored. Answers keep
OpenAI's wire shape: upstream's own status and body for upstream errors,
the same shape with a distinct ``code`` for the sidecar's own refusals, SSE
frames forwarded as they arrive. Once the sidecar has spent its own retries
it says ``x-should-retry: false`` so the SDK does not multiply them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import compression_utils, web
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from .config import LimitSettings
from .logs import RequestLog, request_fields
from .runner import (
    CallOutcome,
    ChatStream,
    Cost,
    LocalRateLimited,
    RunnerError,
    UpstreamError,
    jsoncodec,
)
from .runner.config import AzureVariant
from .runner.errors import error_body

if TYPE_CHECKING:
    from .app import Sidecar
    from .telemetry import CallTrace

__all__ = [
    "ApiRunner",
    "BadRequest",
    "add_cost",
    "build_api_app",
    "error_response",
    "forward_headers",
    "model_deployment",
    "openai_error",
    "passthrough",
    "read_body",
    "settle",
    "url_deployment",
]

log = logging.getLogger("openai_runtime.requests")
_REQUEST_LOG = RequestLog(log)

# Upstream response headers worth handing to the app.
_PASS_HEADERS = (
    "x-request-id",
    "apim-request-id",
    "openai-processing-ms",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
_POSITIVE_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")
# App headers never sent upstream: credentials (the sidecar adds its own) and
# headers that describe the app's hop, not ours.
_DROP_HEADERS = frozenset(
    {"x-api-key", "api-key", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
)
# Request Content-Encodings aiohttp itself decodes: gzip and deflate always,
# br and zstd only when their optional decoder is installed. Anything else
# (a list of several, an unknown name) it would pass on undecoded.
_ENCODINGS = frozenset(
    {"identity", "gzip", "deflate"}
    | ({"br"} if compression_utils.HAS_BROTLI else set())
    | ({"zstd"} if compression_utils.HAS_ZSTD else set())
)
_NO_RETRY = {"x-should-retry": "false"}
# How aiohttp's parser names an encoding it has no decoder for: "... brotli (br). Please
# install `Brotli`".
_MISSING_DECODER = re.compile(r"\((br|zstd)\)\. Please install")


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The app's ``x-*`` and ``OpenAI-*`` headers (e.g. OpenAI-Beta), minus credentials."""
    out = {}
    for name, value in headers.items():
        lowered = name.lower()
        if (lowered.startswith(("x-", "openai-"))) and lowered not in _DROP_HEADERS:
            out[name] = value
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def openai_error(
    status: int,
    message: str,
    code: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A local refusal in OpenAI's error shape.

    It says ``x-should-retry: false``: the same request would be refused the
    same way, and the SDK would otherwise retry 408s and 5xx on its own.
    """
    payload = error_body(message, error_type=error_type, param=param, code=code)
    return web.json_response(payload, status=status, headers={**_NO_RETRY, **(headers or {})})


class BadRequest(Exception):
    """A request the sidecar refuses before spending anything on it."""

    def __init__(
        self,
        message: str,
        code: str,
        param: str | None = None,
        status: int = 400,
        *,
        close: bool = False,
    ):
        super().__init__(message)
        self.message, self.code, self.param, self.status = message, code, param, status
        self.close = close
        """Drop the connection after answering (the rest of the request never came)."""

    def response(self) -> web.Response:
        response = openai_error(self.status, self.message, self.code, param=self.param)
        if self.close:
            response.force_close()
        return response


def parse_chat_body(raw: bytes) -> dict[str, Any]:
    """The request as a dict, or :class:`BadRequest` saying what is wrong with it.

    Only what the sidecar relies on is checked; everything else, unknown
    fields included, goes to upstream untouched for it to judge.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8.", "invalid_body") from None
    try:
        body = jsoncodec.loads(text)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", "invalid_json") from None
    except ValueError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", "invalid_body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "invalid_type", "messages")
    if not all(isinstance(message, dict) for message in messages):
        raise BadRequest("Each message must be an object.", "invalid_type", "messages")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("'model' must be a string.", "invalid_type", "model")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise BadRequest("'stream' must be a boolean.", "invalid_type", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", "invalid_type", "stream_options")
    for name in _POSITIVE_INT_FIELDS:
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise BadRequest(f"'{name}' must be a positive integer.", "invalid_value", name)
    return body


def passthrough(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> dict[str, str]:
    """Upstream's headers worth passing on to the app (looked up case-insensitively)."""
    return {name: value for name in _PASS_HEADERS if (value := headers.get(name)) is not None}


def add_cost(headers: dict[str, str], cost: Cost | None) -> None:
    """What a priced call cost, in USD, as ``x-openai-runtime-cost-usd``."""
    if cost is not None and cost.priced:
        headers["x-openai-runtime-cost-usd"] = f"{cost.usd:.10f}".rstrip("0")


def error_response(err: RunnerError) -> web.Response:
    headers = dict(err.response_headers())
    if isinstance(err, UpstreamError):
        headers.update(passthrough(err.headers))
        for name in ("retry-after", "retry-after-ms"):
            value = err.headers.get(name)
            if value is not None:
                headers[name] = value
    if not isinstance(err, LocalRateLimited) or not err.fits:
        # The sidecar already retried as policy allows; a second layer of
        # retries in the SDK would only multiply load on a struggling upstream.
        # An open circuit too: the SDK would sleep out its retry-after (30 s
        # by default) to be refused again, so it fails fast and retry-after
        # stays as information. Only our own limiter's 429 invites a retry:
        # its wait is short and the next try is likely admitted.
        headers["x-should-retry"] = "false"
    headers["x-openai-runtime-attempts"] = str(err.attempts)
    return web.json_response(err.openai_body(), status=err.http_status(), headers=headers)


def settle(
    sidecar: Sidecar,
    request: web.Request,
    trace: CallTrace,
    info: CallOutcome | None,
    status: int,
    error: RunnerError | None,
    error_type: str | None,
) -> None:
    """A finished request's books: span and metrics, spend, the one log line.

    The line's duration is the one the trace measured for the metrics, from
    :meth:`~.telemetry.Telemetry.start_call` (the handler's first step) on.
    """
    trace.finish(info, status=status, error=error, error_type=error_type)
    sidecar.account(info)
    fields = request_fields(
        info,
        status=status,
        duration=trace.elapsed(),
        error_type=error.kind if error is not None else error_type,
        method=request.method,
        path=request.path,
    )
    _REQUEST_LOG.write("request", fields)


async def read_body(request: web.Request, limits: LimitSettings) -> bytes:
    """A body kept in memory, within ``limits``: :class:`BadRequest` says what went wrong."""
    try:
        if request.content.is_eof():
            # Arrived with the headers (most calls): nothing left to wait for.
            return await request.read()
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise BadRequest(
            f"The request body did not arrive within {limits.body_timeout:g} seconds.",
            "request_timeout",
            status=408,
            close=True,
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(
            f"The request body exceeds the sidecar's limit of {limits.max_request_bytes} bytes.",
            "request_too_large",
            status=413,
        ) from None
    except web.RequestPayloadError:
        # The body arrived but cannot be decoded (a broken Content-Encoding).
        raise BadRequest("The request body could not be decoded.", "invalid_body") from None


def url_deployment(variant: object, name: str | None) -> str | None:
    """The Azure deployment an Azure-style URL names; refused unless the runtime serves it.

    None for an OpenAI runtime: there, the URL's deployment means nothing upstream.
    """
    if name is None or not isinstance(variant, AzureVariant):
        return None
    if not variant.allows(name):
        allowed = ", ".join([variant.deployment, *variant.deployments])
        raise BadRequest(
            f"The deployment '{name}' is not served by this runtime (allowed: {allowed}).",
            "deployment_not_allowed",
        )
    return name


def model_deployment(variant: object, model: Any) -> str | None:
    """As on Azure, a ``model`` that names a deployment the runtime serves chooses it."""
    if isinstance(variant, AzureVariant) and isinstance(model, str) and variant.allows(model):
        return model
    return None


class _EventStream(web.StreamResponse):
    """An SSE response whose headers leave with its first bytes.

    aiohttp sends a stream's headers on their own as soon as it is prepared;
    here the first event is already in hand (the runner read it before
    answering), so they go out together: one write, one packet, not two.
    """

    _send_headers_immediately = False


class ApiHandlers:
    """Request handlers bound to one running :class:`~.app.Sidecar`."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def chat(self, request: web.Request) -> web.StreamResponse:
        sidecar = self.sidecar
        info: CallOutcome | None = None
        error: RunnerError | None = None
        error_type: str | None = None
        status = 500
        trace = sidecar.telemetry.start_call(request.headers, model=None, stream=False)
        # A stream as soon as it is open: one the app abandons (the handler is
        # cancelled) is closed there, and its outcome still logged and accounted.
        opened: list[ChatStream] = []
        try:
            variant = sidecar.config.variant.selected
            deployment = url_deployment(variant, request.match_info.get("deployment"))
            body = await self._read_body(request, model_required=deployment is None)
            deployment = deployment or model_deployment(variant, body.get("model"))
            stream = body.get("stream") is True
            trace.set_request(model=body.get("model"), stream=stream)
            extra = forward_headers(request.headers)
            target = {"deployment": deployment, "api_version": request.query.get("api-version")}
            if stream:
                response, info, error = await self._stream(
                    request, body, extra, trace, opened, target
                )
            else:
                response, info, error = await self._chat(body, extra, trace, target)
            status = response.status
            return response
        except BadRequest as bad:
            status, error_type = bad.status, bad.code
            return bad.response()
        except (asyncio.CancelledError, ConnectionResetError):
            status, error_type = 499, "client_disconnected"  # nginx's code for it
            raise
        finally:
            if info is None and opened:
                info = opened[0].outcome
            settle(sidecar, request, trace, info, status, error, error_type)

    async def _read_body(
        self, request: web.Request, *, model_required: bool = True
    ) -> dict[str, Any]:
        """The validated request with its model resolved against the allow-list.

        On an Azure deployment route the deployment chooses the model, so a
        body may name none, as on Azure.
        """
        config = self.sidecar.config
        body = parse_chat_body(await read_body(request, config.limits))
        models = config.models
        if not model_required and not body.get("model"):
            return body
        model = models.resolve(body.get("model"))
        if model is None:
            requested = body.get("model")
            if requested:
                raise BadRequest(
                    f"The model '{requested}' is not allowed by this runtime "
                    f"(allowed: {', '.join(models.allow)}).",
                    "model_not_allowed",
                    "model",
                )
            raise BadRequest("'model' is required.", "missing_model", "model")
        body["model"] = model
        return body

    async def _chat(
        self,
        body: dict[str, Any],
        extra: dict[str, str],
        trace: CallTrace,
        target: Mapping[str, str | None],
    ) -> tuple[web.Response, CallOutcome | None, RunnerError | None]:
        runner = self.sidecar.runner
        try:
            result = await runner.chat(
                body,
                headers=extra,
                observer=trace,
                deployment=target.get("deployment"),
                api_version=target.get("api_version"),
            )
        except RunnerError as err:
            return error_response(err), err.outcome, err
        info = result.outcome
        headers = passthrough(result.headers)
        headers["Content-Type"] = "application/json"
        headers["x-openai-runtime-attempts"] = str(info.attempts)
        add_cost(headers, info.cost)
        return web.Response(body=result.body, status=result.status, headers=headers), info, None

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        extra: dict[str, str],
        trace: CallTrace,
        opened: list[ChatStream],
        target: Mapping[str, str | None],
    ) -> tuple[web.StreamResponse, CallOutcome | None, RunnerError | None]:
        runner = self.sidecar.runner
        try:
            handle = await runner.stream(
                body,
                headers=extra,
                observer=trace,
                deployment=target.get("deployment"),
                api_version=target.get("api_version"),
            )
        except RunnerError as err:
            return error_response(err), err.outcome, err
        opened.append(handle)
        headers = passthrough(handle.headers)
        headers.update(
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "x-openai-runtime-attempts": str(handle.attempts),
            }
        )
        response = _EventStream(status=handle.status, headers=headers)
        error: RunnerError | None = None
        try:
            await response.prepare(request)
            # Frames arrive whole; only a stream cut mid-line ends with an
            # unfinished one. It is held back: SSE clients discard it anyway,
            # and an error event written after it would be glued onto it.
            unfinished = b""
            # Once [DONE] is in, upstream's end follows at once (and the SDK
            # reads to the end anyway): what is left leaves with the response's
            # own end, one write instead of two.
            last = b""
            try:
                async for chunk in handle:
                    data = unfinished + chunk
                    end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
                    data, unfinished = data[:end], data[end:]
                    if handle.finished:
                        last += data
                    elif data:
                        await response.write(data)
            except RunnerError as err:
                error = err
                if not isinstance(err, UpstreamError):
                    # In-band upstream errors were forwarded as they came; a
                    # cut or stalled stream gets one so the SDK raises too.
                    unfinished = b""
                    last += b"data: " + jsoncodec.dumps(err.openai_body()) + b"\n\n"
            await response.write_eof(last + unfinished)
        finally:
            # Also when the app went away (cancelled, reset): stop upstream at
            # once and settle the books.
            await handle.aclose()
        return response, handle.outcome, error


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routing failures in OpenAI's shape rather than aiohttp's HTML.

    And a body in a Content-Encoding aiohttp does not decode is refused before
    it is read: aiohttp would hand it on as it came, and upstream (which never
    sees the header) would get compressed bytes as JSON or as an upload.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding not in _ENCODINGS:
        return _unsupported_encoding(request.headers["Content-Encoding"], close=True)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return openai_error(
            404,
            f"Unknown request URL: {request.method} {request.path}.",
            "unknown_url",
        )
    except web.HTTPMethodNotAllowed as exc:
        return openai_error(
            405,
            f"Method {request.method} is not allowed on {request.path}.",
            "method_not_allowed",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Any other answer aiohttp raises itself: its status, our shape.
        return openai_error(exc.status, exc.reason, exc.reason.lower().replace(" ", "_"))


def _unsupported_encoding(encoding: str, *, close: bool) -> web.Response:
    supported = ", ".join(sorted(_ENCODINGS))
    response = openai_error(
        415,
        f"The Content-Encoding '{encoding[:100]}' is not supported by the sidecar "
        f"(supported: {supported}).",
        "unsupported_content_encoding",
    )
    if close:
        # The body was never read; aiohttp would otherwise linger to drain it.
        response.force_close()
    return response


class _ApiProtocol(RequestHandler):
    """aiohttp's per-connection protocol, answering its own errors in OpenAI's shape.

    aiohttp answers a request it cannot parse (bad request line, invalid or
    over-long header, broken chunked body, a Content-Encoding it has no
    decoder for) and a handler that crashed with ``handle_error``, in text or
    HTML, before or after any middleware could step in. aiohttp offers no hook
    for those answers (aio-libs/aiohttp#3287), so this subclass overrides that
    one method; :class:`ApiRunner` makes the API listener use it.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own first: it logs, and raises when an answer was already
        # partly sent (then the connection is simply dropped).
        super().handle_error(request, status, exc, message)
        missing = (
            _MISSING_DECODER.search(exc.message) if isinstance(exc, ContentEncodingError) else None
        )
        if isinstance(exc, ContentEncodingError) and missing:
            # br or zstd without its optional decoder: refused as soon as the
            # headers are parsed, like any encoding aiohttp does not decode.
            response = _unsupported_encoding(missing.group(1), close=True)
        elif isinstance(exc, ContentEncodingError):
            response = openai_error(400, "The request body could not be decoded.", "invalid_body")
        elif isinstance(exc, LineTooLong):
            response = openai_error(
                400,
                "The request line or a header is longer than the sidecar accepts.",
                "header_too_large",
            )
        elif status < 500:
            detail = (message or "").split("\n", 1)[0].rstrip(": ")
            response = openai_error(
                status,
                f"The request is not valid HTTP: {detail or 'malformed'}.",
                "invalid_http_request",
            )
        else:
            # A crash or timeout of ours, not a verdict on the request: the
            # SDK may retry it as it would any 5xx.
            response = web.json_response(
                error_body(
                    "The sidecar failed to handle the request.",
                    error_type="server_error",
                    code="internal_error" if status == 500 else "handler_timeout",
                ),
                status=status,
            )
        response.force_close()  # as aiohttp's own: the connection's state is unknown
        return response


class _ApiServer(web.Server):
    """aiohttp's low-level server, with :class:`_ApiProtocol` for each connection."""

    def __call__(self) -> RequestHandler:
        return _ApiProtocol(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections answer parse errors in OpenAI's shape.

    The application's server is built as usual (startup signals, handler
    arguments, access log) and re-created as an :class:`_ApiServer` with the
    very same arguments.
    """

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _ApiServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def build_api_app(sidecar: Sidecar) -> web.Application:
    """The aiohttp application for the API listener."""
    # aiohttp enforces the body limit itself; the handler turns it into a 413.
    app = web.Application(
        client_max_size=sidecar.config.limits.max_request_bytes,
        middlewares=[_openai_errors],
    )
    from .surface import SurfaceHandlers  # it builds on this module's helpers

    handlers = ApiHandlers(sidecar)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/chat/completions", handlers.chat)
    # Apps written for Azure may keep their SDK and point it here.
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", handlers.chat)
    app.router.add_post("/openai/v1/chat/completions", handlers.chat)
    # Everything else an SDK may call: one path for all of it.
    surface = SurfaceHandlers(sidecar)
    app.router.add_route("*", "/v1/{tail:.+}", surface.v1)
    app.router.add_route(
        "*", "/openai/deployments/{deployment}/{tail:.+}", surface.azure_deployment
    )
    app.router.add_route("*", "/openai/v1/{tail:.+}", surface.azure_v1)
    app.router.add_route("*", "/openai/{tail:.+}", surface.azure_resource)
    return app
