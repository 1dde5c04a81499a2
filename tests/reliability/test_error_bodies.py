"""A 200 whose body is ``{"error": ...}`` is the upstream error it says it is.

Passed on as a success, the official SDK returned a completion with
``choices=None`` and the app crashed on it. The sidecar classifies such a body
by its code and type, as it does an in-band stream error: retried when that is
worth it, counted by the breaker, answered with a non-2xx status and OpenAI's
error shape. The fake upstream has no scenario answering a plain 200 error
body to a non-streamed chat, so a tiny aiohttp upstream on loopback does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.support import on_loopback

from .harness import MODEL, assert_openai_error, running

SERVER_ERROR = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
BAD_REQUEST = {
    "error": {
        "message": "Invalid value for 'temperature'.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
}


class ErrorUpstream:
    """Answers every chat request with 200 and ``body``, counting what it saw."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def _chat(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        return web.json_response(self.body, status=200)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[ErrorUpstream]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        async with on_loopback(app) as self.url:
            yield self


def sdk(url: str) -> openai.AsyncOpenAI:
    # The SDK's own retries stay on (the default 2): x-should-retry: false
    # from the sidecar is what must keep it from multiplying the attempts.
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")


async def test_a_200_server_error_body_is_retried_then_surfaced_as_an_error(
    tmp_path: Path,
) -> None:
    upstream = ErrorUpstream(SERVER_ERROR)
    async with (
        upstream.serving(),
        running(tmp_path, variant={"direct": {"endpoint": upstream.url + "/v1"}}) as rig,
        sdk(rig.url) as client,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}]
            )
        error = caught.value
        assert error.status_code == 502, "an upstream failure, not a success"
        payload = error.response.json()
        assert_openai_error(payload)
        assert payload == SERVER_ERROR, "upstream's error is replayed as it said it"
        assert error.response.headers["x-should-retry"] == "false"
        max_attempts = rig.sidecar.config.retry.max_attempts
        assert error.response.headers["x-openai-runtime-attempts"] == str(max_attempts)
        # The sidecar's retries happened, and the SDK added none of its own.
        assert len(upstream.requests) == max_attempts == 3
        breaker = rig.sidecar.runner.circuits.scope(MODEL).snapshot()
        assert breaker["consecutive_failures"] == max_attempts
        assert len(rig.clock.sleeps) == max_attempts - 1, "backoff between attempts"
        [call] = rig.calls
        assert call.error is not None and call.error.kind == "UpstreamUnavailable"


async def test_a_200_invalid_request_body_is_a_400_and_not_retried(tmp_path: Path) -> None:
    upstream = ErrorUpstream(BAD_REQUEST)
    async with (
        upstream.serving(),
        running(tmp_path, variant={"direct": {"endpoint": upstream.url + "/v1"}}) as rig,
        sdk(rig.url) as client,
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], temperature=0.5
            )
        assert caught.value.status_code == 400
        assert caught.value.response.json() == BAD_REQUEST
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert len(upstream.requests) == 1, "a permanent error is not retried"
        breaker = rig.sidecar.runner.circuits.scope(MODEL).snapshot()
        assert breaker["consecutive_failures"] == 0, "the request's fault, not upstream's health"


async def test_a_real_completion_still_passes_through(tmp_path: Path) -> None:
    """The check looks for an error object only: a completion is untouched."""
    async with running(tmp_path) as rig, sdk(rig.url) as client:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "Echo: hello"
        raw = await rig.chat("hello")
        assert raw.status == 200 and "error" not in json.loads(raw.raw)
