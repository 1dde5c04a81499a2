"""Malformed requests: each refused with its status and OpenAI-shaped code, none spent upstream."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .harness import CHAT, assert_openai_error, running

LIMIT = 64 * 1024
MODELS = {"allow": ["gpt-4o-mini", "gpt-4o"]}  # no default: a request must name one
JSON = {"Content-Type": "application/json"}
USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [USER]} | fields).encode()


def without(name: str) -> bytes:
    document: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [USER]}
    del document[name]
    return json.dumps(document).encode()


def nested(depth: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b"}]}"


# (id, method, path, body, headers, status, code, param)
CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str, str | None]] = [
    ("invalid-json", "POST", CHAT, b"{not json", JSON, 400, "invalid_json", None),
    ("truncated-json", "POST", CHAT, b'{"messages": [', JSON, 400, "invalid_json", None),
    ("empty-body", "POST", CHAT, b"", JSON, 400, "invalid_json", None),
    ("non-utf8", "POST", CHAT, b'{"messages": "\xff\xfe"}', JSON, 400, "invalid_body", None),
    ("utf16", "POST", CHAT, body().decode().encode("utf-16"), JSON, 400, "invalid_body", None),
    ("array", "POST", CHAT, b"[1, 2, 3]", JSON, 400, "invalid_body", None),
    ("string", "POST", CHAT, b'"hello"', JSON, 400, "invalid_body", None),
    ("null", "POST", CHAT, b"null", JSON, 400, "invalid_body", None),
    ("number", "POST", CHAT, b"42", JSON, 400, "invalid_body", None),
    ("no-messages", "POST", CHAT, without("messages"), JSON, 400, "invalid_type", "messages"),
    ("messages-string", "POST", CHAT, body(messages="hi"), JSON, 400, "invalid_type", "messages"),
    ("messages-object", "POST", CHAT, body(messages=USER), JSON, 400, "invalid_type", "messages"),
    ("messages-empty", "POST", CHAT, body(messages=[]), JSON, 400, "invalid_type", "messages"),
    ("message-number", "POST", CHAT, body(messages=[1]), JSON, 400, "invalid_type", "messages"),
    ("message-null", "POST", CHAT, body(messages=[None]), JSON, 400, "invalid_type", "messages"),
    ("model-int", "POST", CHAT, body(model=7), JSON, 400, "invalid_type", "model"),
    ("model-list", "POST", CHAT, body(model=["gpt-4o"]), JSON, 400, "invalid_type", "model"),
    ("model-null", "POST", CHAT, body(model=None), JSON, 400, "invalid_type", "model"),
    ("model-bool", "POST", CHAT, body(model=True), JSON, 400, "invalid_type", "model"),
    ("model-empty", "POST", CHAT, body(model=""), JSON, 400, "missing_model", "model"),
    ("no-model", "POST", CHAT, without("model"), JSON, 400, "missing_model", "model"),
    ("model-denied", "POST", CHAT, body(model="gpt-5"), JSON, 400, "model_not_allowed", "model"),
    ("stream-string", "POST", CHAT, body(stream="yes"), JSON, 400, "invalid_type", "stream"),
    ("stream-int", "POST", CHAT, body(stream=1), JSON, 400, "invalid_type", "stream"),
    ("stream-object", "POST", CHAT, body(stream={}), JSON, 400, "invalid_type", "stream"),
    (
        "stream-options-string",
        "POST",
        CHAT,
        body(stream=True, stream_options="usage"),
        JSON,
        400,
        "invalid_type",
        "stream_options",
    ),
    ("max-tokens-negative", "POST", CHAT, body(max_tokens=-1), JSON, 400, "invalid_value", None),
    ("max-tokens-zero", "POST", CHAT, body(max_tokens=0), JSON, 400, "invalid_value", None),
    ("max-tokens-string", "POST", CHAT, body(max_tokens="5"), JSON, 400, "invalid_value", None),
    ("max-tokens-float", "POST", CHAT, body(max_tokens=1.5), JSON, 400, "invalid_value", None),
    ("max-tokens-bool", "POST", CHAT, body(max_tokens=True), JSON, 400, "invalid_value", None),
    (
        "max-completion-tokens-zero",
        "POST",
        CHAT,
        body(max_completion_tokens=0),
        JSON,
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    ("n-zero", "POST", CHAT, body(n=0), JSON, 400, "invalid_value", "n"),
    ("n-string", "POST", CHAT, body(n="2"), JSON, 400, "invalid_value", "n"),
    ("deep-array", "POST", CHAT, b"[" * 30_000 + b"]" * 30_000, JSON, 400, "invalid_json", None),
    ("deep-content", "POST", CHAT, nested(30_000), JSON, 400, "invalid_json", None),
    (
        "huge",
        "POST",
        CHAT,
        body(messages=[{"role": "user", "content": "x" * LIMIT}]),
        JSON,
        413,
        "request_too_large",
        None,
    ),
    (
        "gzip-bomb",
        "POST",
        CHAT,
        gzip.compress(body(messages=[{"role": "user", "content": "x" * (4 * 1024 * 1024)}])),
        JSON | {"Content-Encoding": "gzip"},
        413,
        "request_too_large",
        None,
    ),
    (
        "broken-gzip",
        "POST",
        CHAT,
        b"this is not gzip",
        JSON | {"Content-Encoding": "gzip"},
        400,
        "invalid_body",
        None,
    ),
    (
        "form-encoded",
        "POST",
        CHAT,
        b"model=gpt-4o-mini&messages=hi",
        {"Content-Type": "application/x-www-form-urlencoded"},
        400,
        "invalid_json",
        None,
    ),
    ("unknown-version", "POST", "/v2/chat/completions", body(), JSON, 404, "unknown_url", None),
    ("unknown-prefix", "GET", "/admin/status", b"", {}, 404, "unknown_url", None),
    # The unprefixed alias is chat's alone; under /v1 every method is upstream's to judge.
    ("put-chat", "PUT", "/chat/completions", body(), JSON, 405, "method_not_allowed", None),
    ("get-chat", "GET", "/chat/completions", b"", {}, 405, "method_not_allowed", None),
    ("realtime", "GET", "/v1/realtime", b"", {}, 501, "unsupported_endpoint", None),
    ("json-array", "POST", "/v1/embeddings", b"[1]", JSON, 400, "invalid_body", None),
    ("json-broken", "POST", "/v1/embeddings", b"{", JSON, 400, "invalid_json", None),
]


@pytest.mark.parametrize(
    ("method", "path", "data", "headers", "status", "code", "param"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_malformed_requests_are_refused_before_upstream(
    tmp_path: Path,
    method: str,
    path: str,
    data: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    param: str | None,
) -> None:
    async with running(tmp_path, models=MODELS, limits={"maxRequestBytes": LIMIT}) as rig:
        answer = await rig.send(method=method, path=path, data=data, headers=headers)
        assert answer.status == status, answer.raw
        assert answer.headers["Content-Type"].startswith("application/json")
        assert_openai_error(answer.json, code)
        if param is not None:
            assert answer.json["error"]["param"] == param
        if status == 405:
            assert "Allow" in answer.headers
        assert b"Traceback" not in answer.raw
        # The sidecar is unharmed: a good call right after succeeds (on a new
        # connection: after a body it could not read, aiohttp drops the old one).
        async with aiohttp.ClientSession() as other:
            assert (await rig.chat("still here", session=other)).status == 200
    assert len(rig.upstream.requests) == 1, "only the good call reached upstream"


async def chunks(total: int) -> AsyncIterator[bytes]:
    yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
    for _ in range(total // 8192):
        yield b"x" * 8192
    yield b'"}]}'


async def test_a_huge_chunked_body_without_length_is_refused_too(tmp_path: Path) -> None:
    async with (
        running(tmp_path, limits={"maxRequestBytes": LIMIT}) as rig,
        rig.http.post(rig.url + CHAT, data=chunks(4 * LIMIT), headers=JSON) as answer,
    ):
        assert answer.status == 413
        assert_openai_error(await answer.json(), "request_too_large")
    assert rig.upstream.requests == []


async def test_fields_the_sidecar_does_not_rely_on_are_upstreams_to_judge(tmp_path: Path) -> None:
    """Documented pass-through: only the fields the sidecar uses are checked.

    ``temperature`` and the content type are not among them, so a string
    temperature, or JSON sent as ``text/plain``, reach upstream untouched.
    """
    async with running(tmp_path) as rig:
        hot = await rig.send(data=body(temperature="hot"), headers=JSON)
        plain = await rig.send(data=body(), headers={"Content-Type": "text/plain"})
    assert hot.status == 200 and plain.status == 200
    assert rig.upstream.requests[0].body["temperature"] == "hot"
    assert len(rig.upstream.requests) == 2


async def test_methods_and_paths_under_v1_are_upstreams_to_judge(tmp_path: Path) -> None:
    """GET /v1/chat/completions lists stored completions upstream; POST /v1/models is
    upstream's error to give: the sidecar passes both on, in OpenAI's shape."""
    async with running(tmp_path) as rig:
        listed = await rig.send(method="GET", path=CHAT)
        wrong = await rig.send(method="POST", path="/v1/models", data=body(), headers=JSON)
    assert [r.path for r in rig.upstream.requests] == [CHAT, "/v1/models"]
    assert listed.status < 500 and wrong.status in (404, 405)
    assert_openai_error(wrong.json)
