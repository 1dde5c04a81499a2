"""The rest of OpenAI's API on the API listener: every path an app's SDK may call.

:mod:`.server` routes chat completions to its own handler; everything else
under ``/v1/`` (and Azure's ``/openai/...`` routes, for apps written for the
Azure SDK) lands here. A request is named (:func:`~.runner.operations.operation_for`),
checked as far as the sidecar relies on it (a JSON body is an object, an
inference call's model is allowed, an Azure deployment is one the runtime
serves, an upload fits ``limits.maxUploadBytes``), handed to the runner
(:func:`~.runner.proxying.proxy`) and its answer passed back as it comes, with
the same headers, metrics, span and log line as chat.

Uploads (multipart files, audio, image edits) are streamed through, never
held whole; JSON bodies are read whole (they are small, and the model must be
checked). ``/v1/models`` is upstream's list, narrowed to ``models.allow``.
Realtime WebSocket sessions are refused: the sidecar does not proxy them.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .runner import RunnerError, jsoncodec
from .runner.operations import Operation, operation_for
from .runner.proxying import ProxiedCall, ProxyRequest, proxy
from .runner.streaming import ask_for_usage
from .server import (
    BadRequest,
    add_cost,
    error_response,
    forward_headers,
    model_deployment,
    passthrough,
    read_body,
    settle,
    url_deployment,
)

if TYPE_CHECKING:
    from .app import Sidecar
    from .runner.results import CallOutcome

__all__ = ["SurfaceHandlers"]

_BODY_HEADERS = ("content-type", "idempotency-key")
"""App headers that describe the body (the multipart boundary) or make a retry safe."""
_UPLOAD_HEADERS = (*_BODY_HEADERS, "content-length")
"""A streamed upload also keeps its length (a body in memory may have been rewritten,
and aiohttp counts its bytes)."""
_ANSWER_HEADERS = ("content-type", "content-disposition")


class SurfaceHandlers:
    """Handlers for every route besides chat, bound to one running sidecar."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def v1(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "/" + request.match_info["tail"])

    async def azure_deployment(self, request: web.Request) -> web.StreamResponse:
        deployment = request.match_info["deployment"]
        return await self.handle(request, "/" + request.match_info["tail"], deployment=deployment)

    async def azure_v1(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "/" + request.match_info["tail"], azure_v1=True)

    async def azure_resource(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "/" + request.match_info["tail"])

    async def handle(
        self,
        request: web.Request,
        path: str,
        *,
        deployment: str | None = None,
        azure_v1: bool = False,
    ) -> web.StreamResponse:
        sidecar = self.sidecar
        operation = operation_for(request.method, path)
        trace = sidecar.telemetry.start_call(request.headers, model=None, stream=False)
        trace.set_request(model=None, stream=False, operation=operation.gen_ai or operation.name)
        info: CallOutcome | None = None
        error: RunnerError | None = None
        error_type: str | None = None
        status = 500
        call: ProxiedCall | None = None
        try:
            if operation.name == "realtime" or request.headers.get("Upgrade"):
                raise BadRequest(
                    "Realtime (WebSocket) sessions are not proxied by the openai-runtime "
                    "sidecar; connect to the provider directly for them.",
                    "unsupported_endpoint",
                    status=501,
                )
            variant = sidecar.config.variant.selected
            deployment = url_deployment(variant, deployment)
            body, payload = await self._body(request, operation)
            model = self._check_model(operation, payload, deployment)
            if operation.per_deployment:
                deployment = deployment or model_deployment(variant, model)
            stream = bool(payload and payload.get("stream") is True)
            trace.set_request(model=model, stream=stream)
            body, hide_usage = _ask_for_usage(operation, payload, body)
            headers = forward_headers(request.headers)
            kept = _BODY_HEADERS if isinstance(body, bytes) else _UPLOAD_HEADERS
            headers.update({k: v for k, v in request.headers.items() if k.lower() in kept})
            outgoing = ProxyRequest(
                operation,
                request.method,
                path,
                query=request.query_string,
                headers=headers,
                body=body,
                payload=payload,
                deployment=deployment,
                azure_v1=azure_v1,
                hide_usage_chunk=hide_usage,
            )
            try:
                call = await proxy(sidecar.runner, outgoing, observer=trace)
            except RunnerError as err:
                if isinstance(body, _Upload) and body.refusal is not None:
                    info = err.outcome
                    raise body.refusal from None
                info, error = err.outcome, err
                refused = error_response(err)
                status = refused.status
                return refused
            response = await self._answer(request, operation, call)
            status = response.status
            return response
        except BadRequest as bad:
            status, error_type = bad.status, bad.code
            return bad.response()
        except (asyncio.CancelledError, ConnectionResetError):
            status, error_type = 499, "client_disconnected"
            raise
        finally:
            if call is not None:
                call.close()
                info = call.outcome
            settle(sidecar, request, trace, info, status, error, error_type)

    # -- checks ------------------------------------------------------------

    def _check_model(
        self, operation: Operation, payload: Mapping[str, Any] | None, deployment: str | None
    ) -> str | None:
        """The requested model, refused when ``models.allow`` does not list it."""
        model = payload.get("model") if payload is not None else None
        if model is not None and not isinstance(model, str):
            raise BadRequest("'model' must be a string.", "invalid_type", "model")
        allow = self.sidecar.config.models.allow
        if not operation.inference or not allow or (deployment and not model):
            return model or None
        if not model:
            raise BadRequest(
                "'model' is required: this runtime only serves the models it allows.",
                "missing_model",
                "model",
            )
        if model not in allow:
            raise BadRequest(
                f"The model '{model}' is not allowed by this runtime "
                f"(allowed: {', '.join(allow)}).",
                "model_not_allowed",
                "model",
            )
        return model

    async def _body(
        self, request: web.Request, operation: Operation
    ) -> tuple[bytes | _Upload | None, dict[str, Any] | None]:
        """The body to send on, and the JSON object it is, if it is one."""
        limits = self.sidecar.config.limits
        if request.method in ("GET", "HEAD", "DELETE") and not request.body_exists:
            return None, None
        is_json = request.content_type in ("application/json", "")
        if operation.upload or not is_json:
            length = request.content_length
            if length is not None and length > limits.max_upload_bytes:
                raise BadRequest(
                    f"The upload exceeds the sidecar's limit of {limits.max_upload_bytes} bytes.",
                    "request_too_large",
                    status=413,
                )
            return _Upload(request, limits.max_upload_bytes, limits.body_timeout), None
        raw = await read_body(request, limits)
        if not raw:
            return None, None
        try:
            payload = jsoncodec.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("The request body is not valid JSON.", "invalid_json") from None
        if not isinstance(payload, dict):
            raise BadRequest("The request body must be a JSON object.", "invalid_body")
        return raw, payload

    # -- answers -----------------------------------------------------------

    async def _answer(
        self, request: web.Request, operation: Operation, call: ProxiedCall
    ) -> web.StreamResponse:
        headers = passthrough(call.headers)
        headers.update({k: v for k, v in call.headers.items() if k.lower() in _ANSWER_HEADERS})
        headers["x-openai-runtime-attempts"] = str(call.attempts)
        if operation.name == "models.list" and "json" in call.content_type:
            body = self._allowed_models(await call.body())
            return web.Response(body=body, status=call.status, headers=headers)
        if call.buffered:
            body = await call.body()
            call.close()  # the cost is known now, and goes in a header
            add_cost(headers, call.outcome.cost if call.outcome is not None else None)
            return web.Response(body=body, status=call.status, headers=headers)
        if "text/event-stream" in call.content_type:
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response = web.StreamResponse(status=call.status, headers=headers)
        await response.prepare(request)
        async for chunk in call.chunks():
            await response.write(chunk)
        await response.write_eof()
        return response

    def _allowed_models(self, raw: bytes) -> bytes:
        allow = self.sidecar.config.models.allow
        if not allow:
            return raw
        try:
            listing = jsoncodec.loads(raw)
        except ValueError:
            return raw
        if isinstance(listing, dict) and isinstance(listing.get("data"), list):
            listing["data"] = [
                m for m in listing["data"] if isinstance(m, dict) and m.get("id") in allow
            ]
        return jsoncodec.dumps(listing)


def _ask_for_usage(
    operation: Operation, payload: dict[str, Any] | None, body: Any
) -> tuple[Any, bool]:
    """A streamed legacy completion asks upstream for usage, as chat's streams do.

    Returns the body to send and whether the usage-only chunk must be hidden
    from an app that did not ask for it.
    """
    if operation.name != "completions" or not payload or payload.get("stream") is not True:
        return body, False
    rewritten = copy.copy(payload)  # keeps jsoncodec's mark: NaN is written back as NaN
    requested = ask_for_usage(rewritten)
    return jsoncodec.dumps(rewritten), not requested


class _Upload:
    """The request body as it arrives: never more than ``limit`` bytes, never stalled.

    A body without a Content-Length can only be found too large on the way;
    sending it then fails, and :attr:`refusal` says why, for the app's answer.
    """

    def __init__(self, request: web.Request, limit: int, idle: float) -> None:
        self._request, self._limit, self._idle = request, limit, idle
        self.refusal: BadRequest | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        total = 0
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await self._request.content.readany()
            except TimeoutError:
                self.refusal = BadRequest(
                    f"The upload stalled for more than {self._idle:g} seconds.",
                    "request_timeout",
                    status=408,
                    close=True,
                )
                raise
            if not chunk:
                return
            total += len(chunk)
            if total > self._limit:
                self.refusal = BadRequest(
                    f"The upload exceeds the sidecar's limit of {self._limit} bytes.",
                    "request_too_large",
                    status=413,
                    close=True,
                )
                raise self.refusal
            yield chunk
