"""The route table of :mod:`.upstream` and the handlers of everything beyond chat.

::

    client ──▶ FakeUpstream._handle: record, dialect, key, deployment, body, scenario
                   └─▶ a handler here ──▶ replies (the shapes), store (files, batches...)

Every endpoint of :data:`ENDPOINTS` (paths under ``/v1``) is served three ways:

* Direct ``/v1/<path>`` (``Authorization: Bearer``);
* Azure's GA ``/openai/v1/<path>`` (``api-key`` or Bearer, no ``api-version``;
  an inference body's ``model`` names a deployment);
* classic Azure (``api-key``, ``api-version`` required): inference under
  ``/openai/deployments/{deployment}/<path>``, the rest of the resource under
  ``/openai/<path>`` (``/openai/responses`` takes the deployment as ``model``).
  Moderations are not served there, as Azure has none.

Failure scenarios (``x-fake-scenario``, ``x-fake-fail-times``) strike every route
before its handler runs, after the body was read; mid-stream ones also break
streamed and binary answers. Objects kept between calls (files, batches, vector
stores, stored responses) are :mod:`.store`'s.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from . import replies as fr
from . import scenarios as fs
from . import store as st
from .records import Call, number, read_json

if TYPE_CHECKING:
    from .upstream import FakeUpstream

__all__ = ["ENDPOINTS", "ROUTES", "Endpoint", "Route", "model_names", "routes"]

Handler = Callable[["FakeUpstream", Call, dict[str, Any]], Awaitable[web.StreamResponse]]
Dialect = Literal["direct", "azure", "azure-v1"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    method: str
    path: str
    """Under ``/v1``, with aiohttp's ``{placeholders}``."""
    handler: Handler
    body: Literal["json", "form", "none", "self"]
    """How the core reads the body before the handler (``self``: the handler reads it)."""
    azure: Literal["deployment", "resource", None]
    """Where classic Azure serves it; ``None``: only under ``/openai/v1``."""


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    dialect: Dialect
    path: str

    @property
    def variant(self) -> str:
        return "direct" if self.dialect == "direct" else "azure"

    @property
    def name(self) -> str:
        return f"{self.dialect}:{self.endpoint.name}"


# -- helpers -------------------------------------------------------------------------

_CAPABLE = {
    "completions": ("instruct", "davinci", "babbage"),
    "embeddings": ("embedding",),
    "audio.transcriptions": ("whisper", "transcribe"),
    "audio.translations": ("whisper",),
    "audio.speech": ("tts",),
    "images.generations": ("dall-e", "gpt-image"),
}
"""Azure refuses a deployment whose model cannot do the operation; chat is not checked."""


def _streaming(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.Response | None:
    """Record ``stream`` and ``include_usage``; refuse ``stream_options`` without a stream."""
    rec = call.rec
    options = body.get("stream_options")
    rec.stream = body.get("stream") is True
    rec.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if options is not None and not rec.stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return st.bad(up, call, message, "stream_options")
    return None


_NO_MODEL = "you must provide a model parameter"


def _model(up: FakeUpstream, call: Call, default: str | None = None) -> str | web.Response:
    """The model to answer with, or the refusal: none given, or an Azure model unable to."""
    rec = call.rec
    model = rec.model or default
    if model is None:
        return st.bad(up, call, _NO_MODEL, "model")
    if rec.variant == "direct":
        return fs.MODEL_ALIASES.get(model, model)
    needs = _CAPABLE.get(rec.endpoint)
    if needs and not any(word in model for word in needs):
        operation = rec.endpoint.replace(".", " ").replace("audio ", "")
        return up._json(call, 400, fs.operation_not_supported(operation, model))
    return model


def model_names(up: FakeUpstream) -> set[str]:
    return {*fs.MODEL_ALIASES, *fs.MODEL_ALIASES.values(), *up.deployments.values(), *fr.CATALOG}


# -- inference -------------------------------------------------------------------------


async def chat(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    """Chat reads its own body: it checks it before playing any scenario."""
    request, rec = call.request, call.rec
    body = await read_json(call)
    if not isinstance(body.get("messages"), list):
        message = "Missing required parameter: 'messages'."
        if "messages" in body:
            message = "Invalid type for 'messages': expected an array."
        return st.bad(up, call, message, "messages")
    model = body.get("model")
    if rec.deployment is None and (not isinstance(model, str) or not model):
        return up._json(call, 400, fs.openai_error(_NO_MODEL, "invalid_request_error"))
    if isinstance(model, str) and model and (missing := up._named(call, model)):
        return missing
    if (refused := _streaming(up, call, body)) is not None:
        return refused

    scenario = rec.scenario = up._scenario(request, model if rec.variant == "direct" else None)
    call.delay = number(request, "x-fake-delay", 0.5)
    if (failed := await up._fail(call)) is not None:
        return failed
    assert rec.model is not None
    azure = rec.variant == "azure"
    reply = fs.Reply.build(
        body,
        id=f"chatcmpl-{call.number}",
        model=rec.model if azure else fs.MODEL_ALIASES.get(rec.model, rec.model),
        chunks=up.chunks,
        cached_tokens=int(number(request, "x-fake-cached-tokens", 0)),
        azure=azure,
        scenario=scenario,
        reasoning_tokens=int(number(request, "x-fake-reasoning-tokens", 0)),
    )
    if rec.stream:
        frames = reply.frames(rec.include_usage)
        cut = min(2, sum(kind == "content" for kind, _ in frames))
        return await up._write(call, frames, cut, content_type="text/event-stream", hold=True)
    return await up._reply(call, reply.completion())


async def embeddings(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    model = _model(up, call)
    if isinstance(model, web.Response):
        return model
    if "input" not in body:
        return st.missing(up, call, "input")
    reply = fr.embeddings(body, model)
    if reply is None:
        message = "Invalid 'input': expected a non-empty string, array of strings or token arrays."
        return st.bad(up, call, message, "input")
    return await up._reply(call, reply)


async def responses_create(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    model = _model(up, call)
    if isinstance(model, web.Response):
        return model
    if not isinstance(body.get("input", ""), str | list):
        return st.bad(up, call, "Invalid type for 'input': expected a string or array.", "input")
    reply = fr.ResponsesReply.build(
        body,
        id=f"resp_{call.number}",
        model=model,
        chunks=up.chunks,
        cached_tokens=int(number(call.request, "x-fake-cached-tokens", 0)),
        reasoning_tokens=int(number(call.request, "x-fake-reasoning-tokens", 0)),
    )
    if body.get("store") is not False:
        up.store.responses[reply.id] = reply.response()
    if body.get("stream") is True:
        call.rec.stream = True  # usage always comes, in response.completed
        frames = reply.frames()
        cut = min(2, len(reply.pieces))
        return await up._write(
            call,
            frames,
            cut,
            content_type="text/event-stream",
            hold=True,
            inband=fr.INBAND_RESPONSES_ERROR,
        )
    return await up._reply(call, reply.response())


async def completions(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    rec = call.rec
    model = _model(up, call)
    if isinstance(model, web.Response):
        return model
    if "prompt" not in body:
        return st.missing(up, call, "prompt")
    if (refused := _streaming(up, call, body)) is not None:
        return refused
    reply = fr.TextReply.build(body, id=f"cmpl-{call.number}", model=model, chunks=up.chunks)
    if rec.stream:
        frames = reply.frames(rec.include_usage)
        cut = min(2, len(reply.pieces))
        return await up._write(call, frames, cut, content_type="text/event-stream", hold=True)
    return await up._reply(call, reply.completion())


_MODERATION_SNAPSHOTS = {
    "omni-moderation-latest": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
}


async def moderations(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    model = call.rec.model or "omni-moderation-latest"
    answer = _MODERATION_SNAPSHOTS.get(model, model)
    if "input" not in body:
        return st.missing(up, call, "input")
    reply = fr.moderation(body, id=f"modr-{call.number}", model=answer)
    if reply is None:
        return st.bad(up, call, "Invalid 'input': expected a string or an array.", "input")
    return await up._reply(call, reply)


async def images(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    model = _model(up, call, default="dall-e-2")
    if isinstance(model, web.Response):
        return model
    if "prompt" not in body:
        return st.missing(up, call, "prompt")
    reply = fr.images(body, model)
    if reply is None:
        return st.bad(up, call, "Invalid 'prompt' or 'n': a non-empty prompt, n from 1 to 10.")
    return await up._reply(call, reply)


async def transcriptions(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    model = _model(up, call)
    if isinstance(model, web.Response):
        return model
    assert call.form is not None
    upload = call.form.file("file")
    if upload is None:
        return st.missing(up, call, "file")
    task = call.rec.endpoint.removeprefix("audio.").removesuffix("s")
    kind, data = fr.transcription(
        body, filename=upload.filename, size=upload.size, model=model, task=task
    )
    return await up._reply(call, data, content_type=kind)


_AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


async def speech(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    """Audio of ``x-fake-bytes`` bytes (default 400 per input character), streamed out."""
    model = _model(up, call)
    if isinstance(model, web.Response):
        return model
    text, voice = body.get("input"), body.get("voice")
    if not isinstance(text, str) or not text:
        return st.missing(up, call, "input")
    if not isinstance(voice, str | dict) or not voice:
        return st.missing(up, call, "voice")
    kind = _AUDIO_TYPES.get(body.get("response_format", "mp3"))
    if kind is None:
        message = f"Invalid 'response_format': expected one of {', '.join(_AUDIO_TYPES)}."
        return st.bad(up, call, message, "response_format")
    size = int(number(call.request, "x-fake-bytes", 400 * len(text)))
    seed = hashlib.sha256(f"{voice}:{text}".encode()).digest()
    chunks = fr.filler(size, seed, fr.piece_size(size))
    if body.get("stream_format") != "sse":
        return await st.download(up, call, size, chunks, kind)
    call.rec.stream = True
    out = math.ceil(size / 1000)
    usage = {"input_tokens": fr.tokens(text), "output_tokens": out}
    usage["total_tokens"] = usage["input_tokens"] + out
    deltas = (
        ("content", fs.sse({"type": "speech.audio.delta", "audio": _b64(chunk)}))
        for chunk in chunks
    )
    done = ("post", fs.sse({"type": "speech.audio.done", "usage": usage}))
    cut = min(2, math.ceil(size / fr.piece_size(size)))
    frames = itertools.chain(deltas, [done])
    return await up._write(call, frames, cut, content_type="text/event-stream", hold=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- models and the table ------------------------------------------------------------------------


async def models_list(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    return up._json(call, 200, fs.models(model_names(up)))


async def models_retrieve(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    model = call.request.match_info["model"]
    if model not in model_names(up):
        message = f"The model '{model}' does not exist or you do not have access to it."
        error = fs.openai_error(message, "invalid_request_error", "model", "model_not_found")
        return up._json(call, 404, error)
    return up._json(call, 200, fs.models({model})["data"][0])


# How the core reads the body: JSON, a multipart form, none, or the handler does.
J: Final = "json"
F: Final = "form"
N: Final = "none"
S: Final = "self"
# Where classic Azure serves the endpoint: per deployment or per resource.
D: Final = "deployment"
R: Final = "resource"
_V = "/vector_stores/{vector_store_id}"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("chat.completions", "POST", "/chat/completions", chat, S, D),
    Endpoint("completions", "POST", "/completions", completions, J, D),
    Endpoint("embeddings", "POST", "/embeddings", embeddings, J, D),
    Endpoint("responses.create", "POST", "/responses", responses_create, J, R),
    Endpoint("responses.retrieve", "GET", "/responses/{response_id}", st.responses_retrieve, N, R),
    Endpoint("responses.delete", "DELETE", "/responses/{response_id}", st.responses_delete, N, R),
    Endpoint("moderations", "POST", "/moderations", moderations, J, None),
    Endpoint("images.generations", "POST", "/images/generations", images, J, D),
    Endpoint("audio.transcriptions", "POST", "/audio/transcriptions", transcriptions, F, D),
    Endpoint("audio.translations", "POST", "/audio/translations", transcriptions, F, D),
    Endpoint("audio.speech", "POST", "/audio/speech", speech, J, D),
    Endpoint("files.create", "POST", "/files", st.files_create, F, R),
    Endpoint("files.list", "GET", "/files", st.files_list, N, R),
    Endpoint("files.retrieve", "GET", "/files/{file_id}", st.files_retrieve, N, R),
    Endpoint("files.delete", "DELETE", "/files/{file_id}", st.files_delete, N, R),
    Endpoint("files.content", "GET", "/files/{file_id}/content", st.files_content, N, R),
    Endpoint("batches.create", "POST", "/batches", st.batches_create, J, R),
    Endpoint("batches.list", "GET", "/batches", st.batches_list, N, R),
    Endpoint("batches.retrieve", "GET", "/batches/{batch_id}", st.batches_retrieve, N, R),
    Endpoint("batches.cancel", "POST", "/batches/{batch_id}/cancel", st.batches_cancel, N, R),
    Endpoint("vector_stores.create", "POST", "/vector_stores", st.vector_stores_create, J, R),
    Endpoint("vector_stores.list", "GET", "/vector_stores", st.vector_stores_list, N, R),
    Endpoint("vector_stores.retrieve", "GET", _V, st.vector_stores_retrieve, N, R),
    Endpoint("vector_stores.update", "POST", _V, st.vector_stores_update, J, R),
    Endpoint("vector_stores.delete", "DELETE", _V, st.vector_stores_delete, N, R),
    Endpoint("models.list", "GET", "/models", models_list, N, R),
    Endpoint("models.retrieve", "GET", "/models/{model}", models_retrieve, N, R),
)  # fmt: skip


def routes() -> Iterator[Route]:
    """Every (endpoint, dialect) pair with its full aiohttp path."""
    for endpoint in ENDPOINTS:
        yield Route(endpoint, "direct", "/v1" + endpoint.path)
        yield Route(endpoint, "azure-v1", "/openai/v1" + endpoint.path)
        if endpoint.azure == "deployment":
            yield Route(endpoint, "azure", "/openai/deployments/{deployment}" + endpoint.path)
        elif endpoint.azure == "resource":
            yield Route(endpoint, "azure", "/openai" + endpoint.path)


ROUTES: dict[str, Route] = {route.name: route for route in routes()}
"""Every route by its aiohttp route name (``<dialect>:<endpoint>``)."""
