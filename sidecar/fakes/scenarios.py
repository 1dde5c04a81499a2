"""The payloads of :mod:`.upstream`: replies, stream chunks and canned failures.

Pure functions of the request: no I/O, no clock except the one HTTP date of
``rate-limit-date``. Every body copies the shape (and, where it matters to a
client, the wording) of what api.openai.com and Azure OpenAI really send.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..runner.errors import error_body

__all__ = [
    "AUTH_ERRORS",
    "AZURE_NOT_FOUND",
    "DEPLOYMENT_NOT_FOUND",
    "INVALID_JSON",
    "MID_STREAM",
    "MODEL_ALIASES",
    "SCENARIOS",
    "Canned",
    "Reply",
    "azure_error",
    "canned",
    "message_text",
    "models",
    "not_found",
    "openai_error",
    "operation_not_supported",
    "split_text",
]

SCENARIOS: dict[str, str] = {
    "rate-limit": "429 with retry-after seconds (x-fake-retry-after, default 1)",
    "rate-limit-ms": "429 with retry-after-ms (x-fake-retry-after-ms, default 100)",
    "rate-limit-date": "429 with retry-after as an HTTP date (x-fake-retry-after seconds ahead)",
    "insufficient-quota": "429 insufficient_quota: billing, not pacing",
    "server-error": "500 server_error",
    "overloaded": "503 server_is_overloaded",
    "status": "any status from x-fake-status (default 500) with an OpenAI error body",
    "context-length": "400 context_length_exceeded",
    "content-filter": "Azure's 400 content_filter with innererror.content_filter_result",
    "content-filter-results": "the same with the plural content_filter_results spelling",
    "content-filter-finish": "200 cut after two pieces with finish_reason content_filter",
    "html-502": "502 with a gateway's HTML page",
    "garbage": "200 application/json whose body is not JSON",
    "hang": "never answers until the client goes away",
    "slow-first-byte": "waits x-fake-delay seconds (default 0.5) before the headers",
    "stall-mid-stream": "two content chunks, x-fake-delay seconds of silence, the rest",
    "reset-mid-stream": "two content chunks, then the TCP connection is aborted",
    "reset-before-headers": "the connection is aborted before any response",
    "truncated": "two content chunks, then a clean end without finish, usage or [DONE]",
    "inband-error": "two content chunks, then an SSE error event, then a clean end",
}
"""Every scenario name, with what it does (``x-fake-scenario`` or model ``fake-<name>``)."""

MID_STREAM = frozenset({"stall-mid-stream", "reset-mid-stream", "truncated", "inband-error"})
"""Scenarios that break a reply after it started (a non-streamed body breaks halfway)."""

MODEL_ALIASES = {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
"""Direct answers an alias with the dated snapshot it points to, as OpenAI does."""

CREATED = 1_730_000_000
"""The fixed ``created`` of every reply: replies are byte-for-byte reproducible."""
SYSTEM_FINGERPRINT = "fp_fake0000"

_SAFE = {"filtered": False, "severity": "safe"}
FILTER_OK: dict[str, Any] = dict.fromkeys(("hate", "self_harm", "sexual", "violence"), _SAFE)
FILTER_HIT: dict[str, Any] = {**FILTER_OK, "violence": {"filtered": True, "severity": "medium"}}
PROMPT_FILTER: list[dict[str, Any]] = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **FILTER_OK,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]

INBAND_ERROR = error_body(
    "The server had an error while processing your request.", error_type="server_error"
)


def openai_error(
    message: str, type_: str | None, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return error_body(message, error_type=type_, param=param, code=code)


def azure_error(code: str, message: str) -> dict[str, Any]:
    """The envelope Azure's gateway uses for its own errors (401, 404, 429)."""
    return {"error": {"code": code, "message": message}}


def dumps(payload: Any) -> bytes:
    """Compact JSON, as OpenAI writes it."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sse(payload: Any) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


# -- successful replies -------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a message ``content``: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def split_text(text: str, n: int) -> list[str]:
    """``text`` in ``n`` contiguous, non-empty, near-equal pieces (fewer if it is shorter)."""
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass(frozen=True, slots=True)
class Reply:
    """The deterministic answer to one chat request.

    Content is ``"Echo: "`` + the first 40 characters of the last user
    message, in ``chunks`` pieces; one piece is one completion token.
    ``prompt_tokens`` is the characters of all message contents // 4 + 7.
    """

    id: str
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    azure: bool
    filters: dict[str, Any] = field(default_factory=lambda: FILTER_OK)
    reasoning_tokens: int = 0

    @classmethod
    def build(
        cls,
        body: Mapping[str, Any],
        *,
        id: str,
        model: str,
        chunks: int,
        cached_tokens: int,
        azure: bool,
        scenario: str | None,
        reasoning_tokens: int = 0,
    ) -> Reply:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        user = [m for m in messages if m.get("role") == "user"]
        text = "Echo: " + (message_text(user[-1].get("content"))[:40] if user else "")
        pieces = split_text(text, chunks)
        finish, filters = "stop", FILTER_OK
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        if scenario == "content-filter-finish":
            pieces, finish, filters = pieces[:2], "content_filter", FILTER_HIT
        prompt = sum(len(message_text(m.get("content"))) for m in messages) // 4 + 7
        return cls(
            id, model, pieces, finish, prompt, cached_tokens, azure, filters, reasoning_tokens
        )

    @property
    def usage(self) -> dict[str, Any]:
        completion = len(self.pieces) + self.reasoning_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def completion(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(self.pieces), "refusal": None},
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        reply: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if self.azure:
            choice["content_filter_results"] = self.filters
            reply["prompt_filter_results"] = PROMPT_FILTER
        return reply

    def frames(self, include_usage: bool) -> list[tuple[str, bytes]]:
        """The SSE frames of the streamed reply, each tagged ``pre``, ``content`` or ``post``."""

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                payload["usage"] = None
            return sse(payload | extra)

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if self.azure:
                out["content_filter_results"] = FILTER_OK if delta.keys() == {"content"} else {}
            return out

        frames: list[tuple[str, bytes]] = []
        if self.azure:
            empty = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
            frames.append(("pre", sse(empty | {"prompt_filter_results": PROMPT_FILTER})))
        role = {"role": "assistant", "content": "", "refusal": None}
        frames.append(("pre", chunk([choice(role)])))
        frames += [("content", chunk([choice({"content": p})])) for p in self.pieces]
        if self.azure:
            filter_only = {
                "index": 0,
                "finish_reason": None,
                "content_filter_results": self.filters,
            }
            frames.append(("post", chunk([filter_only])))
        frames.append(("post", chunk([choice({}, self.finish_reason)])))
        if include_usage:
            frames.append(("post", chunk([], usage=self.usage)))
        frames.append(("post", b"data: [DONE]\n\n"))
        return frames


# -- canned failures ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Canned:
    """A complete answer that is not a completion: an error, or a 200 that is not JSON."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "insufficient-quota": (
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            code="insufficient_quota",
        ),
    ),
    "server-error": (
        500,
        openai_error(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        ),
    ),
    "overloaded": (
        503,
        openai_error(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            code="server_is_overloaded",
        ),
    ),
    "context-length": (
        400,
        openai_error(
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 131072 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        ),
    ),
}


AUTH_ERRORS: dict[str, dict[str, Any]] = {
    "direct": openai_error(
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    ),
    "azure": azure_error(
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
    ),
}
AZURE_NOT_FOUND = azure_error("404", "Resource not found")
DEPLOYMENT_NOT_FOUND = azure_error(
    "DeploymentNotFound",
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again.",
)
INVALID_JSON = openai_error(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)",
    "invalid_request_error",
)


def operation_not_supported(operation: str, model: str) -> dict[str, Any]:
    """Azure's 400 for a deployment whose model cannot do ``operation`` (embeddings on gpt-4o)."""
    return azure_error(
        "OperationNotSupported",
        f"The {operation} operation does not work with the specified model, {model}. Please "
        "choose different model and try again. You can learn more about which models can be "
        "used with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993.",
    )


def not_found(message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's 404 body for a missing object (file, batch, response...)."""
    return openai_error(message, "invalid_request_error", param)


def models(names: set[str]) -> dict[str, Any]:
    """The ``GET /v1/models`` list."""
    data = [
        {"id": name, "object": "model", "created": CREATED, "owned_by": "system"}
        for name in sorted(names)
    ]
    return {"object": "list", "data": data}


def _content_filter(key: str) -> dict[str, Any]:
    inner = {"code": "ResponsibleAIPolicyViolation", key: FILTER_HIT}
    body = openai_error(_FILTER_MESSAGE, None, "prompt", "content_filter")
    body["error"] |= {"status": 400, "innererror": inner}
    return body


def _rate_limited(variant: str, api_version: str, wait: str) -> dict[str, Any]:
    if variant == "azure":
        return azure_error(
            "429",
            f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            f"{api_version} have exceeded token rate limit of your current OpenAI S0 pricing "
            f"tier. Please retry after {wait}.",
        )
    return openai_error(
        "Rate limit reached for requests in organization org-fake on requests per min (RPM): "
        f"Limit 10000, Used 10000, Requested 1. Please try again in {wait}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "requests",
        code="rate_limit_exceeded",
    )


def canned(
    scenario: str | None, variant: str, headers: Mapping[str, str], api_version: str = ""
) -> Canned | None:
    """The fixed answer ``scenario`` gives, or ``None`` when it answers with a completion.

    Raises :class:`ValueError` when a numeric ``x-fake-*`` header is malformed.
    """
    if scenario in _ERRORS:
        status, body = _ERRORS[scenario]
        return Canned(status, dumps(body))
    if scenario in ("content-filter", "content-filter-results"):
        key = "content_filter_result" if scenario == "content-filter" else "content_filter_results"
        return Canned(400, dumps(_content_filter(key)))
    if scenario in ("rate-limit", "rate-limit-date"):
        after = headers.get("x-fake-retry-after", "1")
        retry_after = after
        if scenario == "rate-limit-date":
            retry_after = email.utils.formatdate(math.ceil(time.time() + float(after)), usegmt=True)
        body = _rate_limited(variant, api_version, f"{after}s")
        return Canned(429, dumps(body), headers={"retry-after": retry_after})
    if scenario == "rate-limit-ms":
        after_ms = headers.get("x-fake-retry-after-ms", "100")
        body = _rate_limited(variant, api_version, f"{after_ms}ms")
        return Canned(429, dumps(body), headers={"retry-after-ms": after_ms})
    if scenario == "status":
        status = int(headers.get("x-fake-status", "500"))
        if not 200 <= status <= 599:
            raise ValueError(f"x-fake-status must be 200..599, not {status}")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return Canned(status, dumps(openai_error(f"Fake upstream answered {status}.", kind)))
    if scenario == "html-502":
        return Canned(502, _HTML_502, "text/html")
    if scenario == "garbage":
        return Canned(200, b"<<this is not JSON>>\n")
    return None
