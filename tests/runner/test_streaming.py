"""A stream read chunk by chunk where it can be comes to what reading it frame by frame does.

Upstream is a real aiohttp server on loopback that writes the given pieces;
the reading side is the real transport and :class:`StreamAttempt`, once as
shipped and once with its whole-chunk path switched off.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web

from openai_runtime_sidecar.runner.config import TimeoutSettings
from openai_runtime_sidecar.runner.errors import RunnerError
from openai_runtime_sidecar.runner.streaming import StreamAttempt
from openai_runtime_sidecar.runner.transport import Transport
from tests.support import on_loopback


class _FrameByFrame(StreamAttempt):
    def _plain_prefix(self, chunk: bytes) -> int:
        return 0


def _event(payload: dict[str, Any], ending: str = "\n", *, spaced: bool = False) -> bytes:
    # Compact, as OpenAI writes it; spaced as other servers may.
    text = json.dumps(payload, separators=(", ", ": ") if spaced else (",", ":"))
    return f"data: {text}{ending}{ending}".encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [choice], **extra}


_CONTENT = [_event(_chunk({"content": f"word{i} é "})) for i in range(30)]
_HEAD = [_event(_chunk({"role": "assistant", "content": ""}))]
_TAIL = [
    _event(_chunk({}, "stop")),
    _event(
        {
            "id": "chatcmpl-1",
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 31, "total_tokens": 36},
        }
    ),
    b"data: [DONE]\n\n",
]

CASES: dict[str, Sequence[bytes]] = {
    "one event per write": [*_HEAD, *_CONTENT, *_TAIL],
    "many events per write": [b"".join(_HEAD + _CONTENT[:10]), b"".join(_CONTENT[10:]), *_TAIL],
    "everything at once": [b"".join(_HEAD + _CONTENT + _TAIL)],
    "frames split across writes": [
        b"".join(_HEAD),
        b"".join(_CONTENT)[:-7],
        b"".join(_CONTENT)[-7:],
        *_TAIL,
    ],
    "crlf frames": [*_HEAD, *[_event(_chunk({"content": "x"}), "\r\n")] * 5, *_CONTENT, *_TAIL],
    "a comment and a multi-line frame": [
        *_HEAD,
        b": keep-alive\n\n",
        b'data: {"id": "chatcmpl-1", "model": "gpt-4o-mini",\ndata: "choices": []}\n\n',
        *_CONTENT,
        *_TAIL,
    ],
    "key-like text inside the content": [
        *_HEAD,
        _event(_chunk({"content": 'say "usage" and "error" and [DONE]'})),
        *_CONTENT,
        *_TAIL,
    ],
    "cut before its usage": [*_HEAD, *_CONTENT],
    # Read in one go: the id never comes, or only after thousands of frames.
    "an upstream that never sends an id": [
        b"".join(
            _event({"choices": [{"index": 0, "delta": {"content": "x"}}]}) for _ in range(3000)
        ),
        b"data: [DONE]\n\n",
    ],
    "thousands of keep-alives first": [
        b": keep-alive\n\n" * 3000 + b"".join(_HEAD + _CONTENT + _TAIL)
    ],
    "spaced json": [
        *_HEAD,
        *[_event(_chunk({"content": f"w{i}"}), spaced=True) for i in range(5)],
        _event(_chunk({}, "length"), spaced=True),
        *_TAIL,
    ],
    "a finish reason mid-read": [*_HEAD, *_CONTENT[:5], _event(_chunk({}, "stop")), *_CONTENT[5:]],
    "several choices": [
        *_HEAD,
        *[
            _event(
                _chunk({"content": "a"})
                | {"choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}
            )
            for _ in range(3)
        ],
        *_TAIL,
    ],
}


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, dict[str, Sequence[bytes]]]]:
    plan: dict[str, Sequence[bytes]] = {}

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in plan["pieces"]:
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    async with on_loopback(app) as url:
        yield f"{url}/v1/chat/completions", plan


async def _read(url: str, kind: type[StreamAttempt]) -> tuple[object, ...]:
    async with Transport(TimeoutSettings()) as transport:
        response = await transport.send(url, {}, b"{}", stream=True, budget=30)
        attempt = kind(response, 0.0, usage_requested=True)  # nothing held back
        await attempt.prime()
        forwarded: list[bytes] = []
        error = None
        try:
            async for piece in attempt.forward():
                forwarded.append(piece)
        except RunnerError as err:  # the cut stream ends so
            error = type(err).__name__
        attempt.close()
    return (
        b"".join(forwarded),
        error,
        attempt.events,
        attempt.done,
        attempt.usage,
        attempt.finish_reasons,
        attempt.response_id,
        attempt.response_model,
        attempt.estimate_usage(5),
    )


@pytest.mark.parametrize("case", list(CASES))
async def test_whole_chunks_come_to_what_frames_do(
    upstream: tuple[str, dict[str, Sequence[bytes]]], case: str
) -> None:
    url, plan = upstream
    plan["pieces"] = CASES[case]
    shipped = await _read(url, StreamAttempt)
    reference = await _read(url, _FrameByFrame)
    assert shipped == reference
    assert shipped[0] == b"".join(CASES[case]), "forwarded byte for byte"
