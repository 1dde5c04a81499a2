"""The fake upstream: the official SDK must take it for OpenAI and Azure, byte details hold."""

from __future__ import annotations

import asyncio
import email.utils
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from openai_runtime_sidecar.fakes.upstream import FakeUpstream, RecordedRequest
from tests.support import until

from .fakeclients import KEY, OTHER_KEY, fingerprint

USER = {"role": "user", "content": "hello there, fake upstream"}
SYSTEM = {"role": "system", "content": "be brief"}
EXPECTED = "Echo: hello there, fake upstream"
# (len("be brief") + len("hello there, fake upstream")) // 4 + 7
PROMPT_TOKENS = (8 + 26) // 4 + 7


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [SYSTEM, USER], **extra}


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


AZURE_PATH = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"


def events(raw: bytes) -> list[Any]:
    """Decode ``data:`` frames, checking the exact framing on the way."""
    text = raw.decode()
    assert text.endswith("\n\n")
    out: list[Any] = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


# -- the official SDK ---------------------------------------------------------


async def test_sdk_direct_non_stream(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    reply = await direct.chat.completions.create(
        model="gpt-4o-mini",
        messages=[SYSTEM, USER],
        extra_headers={
            "x-fake-cached-tokens": "3",
            "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        },
        extra_body={"metadata": {"team": "search"}, "unknown_field": [1, 2]},
    )
    assert reply.id == "chatcmpl-1"
    assert reply.model == "gpt-4o-mini-2024-07-18"
    assert reply.choices[0].message.content == EXPECTED
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 4)
    assert usage.total_tokens == PROMPT_TOKENS + 4
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    [rec] = fake.requests
    assert rec.variant == "direct"
    assert rec.path == "/v1/chat/completions"
    assert rec.model == "gpt-4o-mini"
    assert rec.deployment is None
    assert not rec.stream
    assert not rec.include_usage
    assert rec.scenario is None
    assert rec.key_fingerprint == fingerprint(KEY)
    assert rec.body["metadata"] == {"team": "search"}
    assert rec.body["unknown_field"] == [1, 2]
    assert rec.headers["traceparent"].startswith("00-111")
    assert rec.headers["x-fake-cached-tokens"] == "3"
    assert "authorization" not in rec.headers
    assert KEY not in repr(rec)
    assert rec.outcome == "ok"
    assert rec.finished_at is not None
    assert rec.finished_at >= rec.started_at


async def test_sdk_direct_stream_without_usage(direct: openai.AsyncOpenAI) -> None:
    stream = await direct.chat.completions.create(model="gpt-4o", messages=[USER], stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None and c.choices for c in chunks)
    assert {c.model for c in chunks} == {"gpt-4o-2024-08-06"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_sdk_direct_stream_with_usage(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    stream = await direct.chat.completions.create(
        model="gpt-4o",
        messages=[SYSTEM, USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert fake.requests[-1].stream
    assert fake.requests[-1].include_usage


async def test_sdk_azure_non_stream_and_stream(
    fake: FakeUpstream, azure: openai.AsyncAzureOpenAI
) -> None:
    reply = await azure.chat.completions.create(model="gpt-4o-prod", messages=[USER])
    assert reply.model == "gpt-4o-2024-08-06"
    assert reply.choices[0].message.content == EXPECTED

    stream = await azure.chat.completions.create(
        model="gpt-4o-mini-prod",
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if c.choices and getattr(c.choices[0], "delta", None) is not None
    )
    assert text == EXPECTED
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert {c.model for c in chunks if c.id} == {"gpt-4o-mini-2024-07-18"}

    first, second = fake.requests
    assert (first.variant, first.deployment, first.model) == (
        "azure",
        "gpt-4o-prod",
        "gpt-4o-2024-08-06",
    )
    assert second.deployment == "gpt-4o-mini-prod"
    assert second.include_usage
    assert first.key_fingerprint == fingerprint(KEY)
    assert "api-key" not in first.headers


async def test_sdk_wrong_key_is_an_authentication_error(
    fake: FakeUpstream, direct: openai.AsyncOpenAI, azure: openai.AsyncAzureOpenAI
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await direct.with_options(api_key="sk-wrong").chat.completions.create(
            model="gpt-4o", messages=[USER]
        )
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as az_caught:
        await azure.with_options(api_key="sk-wrong").chat.completions.create(
            model="gpt-4o-prod", messages=[USER]
        )
    assert az_caught.value.status_code == 401
    assert az_caught.value.code == "401"
    assert [r.outcome for r in fake.requests] == ["error:401", "error:401"]
    assert fake.requests[0].key_fingerprint == fingerprint("sk-wrong")


@pytest.mark.parametrize(
    ("scenario", "error", "status", "code"),
    [
        ("rate-limit", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("insufficient-quota", openai.RateLimitError, 429, "insufficient_quota"),
        ("server-error", openai.InternalServerError, 500, None),
        ("overloaded", openai.InternalServerError, 503, "server_is_overloaded"),
        ("context-length", openai.BadRequestError, 400, "context_length_exceeded"),
        ("content-filter", openai.BadRequestError, 400, "content_filter"),
        ("content-filter-results", openai.BadRequestError, 400, "content_filter"),
        ("html-502", openai.InternalServerError, 502, None),
    ],
)
async def test_sdk_sees_scenario_errors(
    fake: FakeUpstream,
    direct: openai.AsyncOpenAI,
    scenario: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    with pytest.raises(error) as caught:
        await direct.chat.completions.create(model=f"fake-{scenario}", messages=[USER])
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert fake.requests[-1].scenario == scenario
    assert fake.requests[-1].outcome == f"error:{status}"


async def test_sdk_status_scenario_and_connection_reset(direct: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.ConflictError):
        await direct.chat.completions.create(
            model="gpt-4o",
            messages=[USER],
            extra_headers={"x-fake-scenario": "status", "x-fake-status": "409"},
        )
    with pytest.raises(openai.APIConnectionError):
        await direct.chat.completions.create(model="fake-reset-before-headers", messages=[USER])


async def test_sdk_retries_through_fail_times(fake: FakeUpstream) -> None:
    headers = {
        "x-fake-scenario": "rate-limit-ms",
        "x-fake-retry-after-ms": "1",
        "x-fake-fail-times": "2",
        "x-fake-sequence": "sdk-retry",
    }
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=2) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=[USER], extra_headers=headers
        )
    assert reply.choices[0].message.content == EXPECTED
    assert [r.scenario for r in fake.requests] == ["rate-limit-ms", "rate-limit-ms", None]
    assert [r.outcome for r in fake.requests] == ["error:429", "error:429", "ok"]
    assert fake.requests[-1].headers["x-stainless-retry-count"] == "2"


# -- raw HTTP: framing, headers, Azure quirks -----------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_sse_framing(
    fake: FakeUpstream, session: aiohttp.ClientSession, include_usage: bool
) -> None:
    body = chat_body(stream=True)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with session.post(fake.url + "/v1/chat/completions", json=body, headers=auth()) as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"
        frames = events(await r.read())
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:5]] == [
        "Echo: he",
        "llo ther",
        "e, fake ",
        "upstream",
    ]
    assert chunks[5]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    if include_usage:
        assert len(chunks) == 7
        assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + 4
    else:
        assert len(chunks) == 6
        assert all("usage" not in c for c in chunks)


async def test_azure_stream_quirks(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    body = {"messages": [USER], "stream": True}
    async with session.post(fake.url + AZURE_PATH, json=body, headers={"api-key": KEY}) as r:
        assert r.status == 200
        assert r.headers["apim-request-id"]
        assert "x-request-id" not in r.headers
        frames = events(await r.read())
    first, *chunks, done = frames
    assert done == "[DONE]"
    assert first["choices"] == []
    assert first["id"] == ""
    assert first["model"] == ""
    assert first["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    content = [c for c in chunks if c["choices"][0].get("delta", {}).get("content")]
    assert len(content) == 4
    assert all(c["choices"][0]["content_filter_results"]["violence"] for c in content)
    filter_only = [c for c in chunks if "delta" not in c["choices"][0]]
    assert len(filter_only) == 1
    assert filter_only[0]["choices"][0]["content_filter_results"]
    assert chunks.index(filter_only[0]) == len(chunks) - 2, "just before the finish chunk"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["model"] for c in chunks} == {"gpt-4o-2024-08-06"}


async def test_azure_request_errors(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    base = fake.url + "/openai/deployments/gpt-4o-prod/chat/completions"
    body = {"messages": [USER]}
    async with session.post(base, json=body, headers={"api-key": KEY}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "404"
    async with session.post(base + "?api-version=v1", json=body, headers={"api-key": KEY}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "BadRequest"
    async with session.post(base + "?api-version=2024-10-21", json=body) as r:
        assert r.status == 401
        assert (await r.json())["error"]["message"].startswith("Access denied")
    missing = fake.url + "/openai/deployments/nope/chat/completions?api-version=2024-10-21"
    async with session.post(missing, json=body, headers={"api-key": KEY}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "DeploymentNotFound"
    assert [rec.key_fingerprint for rec in fake.requests] == [
        "",  # the api-version is checked before the key
        "",
        "",
        fingerprint(KEY),
    ]


async def test_direct_request_errors(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    url = fake.url + "/v1/chat/completions"
    async with session.post(url, data=b"{nope", headers=auth()) as r:
        error = (await r.json())["error"]
        assert r.status == 400
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith("We could not parse the JSON body")
    async with session.post(url, json={"model": "gpt-4o"}, headers=auth()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "messages"
    async with session.post(url, json={"messages": [USER]}, headers=auth()) as r:
        assert r.status == 400
    async with session.post(url, json=chat_body(stream_options={}), headers=auth()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "stream_options"
    async with session.post(url, json=chat_body(), headers=auth("")) as r:
        body = await r.json()
        assert r.status == 401
        assert body["error"]["code"] == "invalid_api_key"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    async with session.post(url, json=chat_body(model="fake-nonsense"), headers=auth()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "fake_misuse"
    headers = auth() | {"x-fake-scenario": "slow-first-byte", "x-fake-delay": "soon"}
    async with session.post(url, json=chat_body(), headers=headers) as r:
        assert r.status == 400
        assert "x-fake-delay" in (await r.json())["error"]["message"]
    async with session.get(url, headers=auth()) as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"
    assert fake.requests[4].key_fingerprint == ""


async def test_models(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with session.get(fake.url + "/v1/models", headers=auth()) as r:
        ids = [m["id"] for m in (await r.json())["data"]]
    assert {"gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"} <= set(ids)
    async with session.get(fake.url + "/v1/models") as r:
        assert r.status == 401


async def test_response_headers(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    headers = auth() | {"x-fake-remaining-requests": "3", "x-fake-remaining-tokens": "99"}
    async with session.post(
        fake.url + "/v1/chat/completions", json=chat_body(), headers=headers
    ) as r:
        assert r.headers["x-request-id"]
        assert int(r.headers["openai-processing-ms"]) >= 0
        assert r.headers["x-ratelimit-limit-requests"] == "10000"
        assert r.headers["x-ratelimit-remaining-requests"] == "3"
        assert r.headers["x-ratelimit-limit-tokens"] == "2000000"
        assert r.headers["x-ratelimit-remaining-tokens"] == "99"
        assert r.headers["x-ratelimit-reset-requests"] == "6ms"
        assert r.headers["x-ratelimit-reset-tokens"] == "1m0s"
    async with session.post(fake.url + "/v1/chat/completions", json=chat_body()) as r:
        assert r.status == 401
        assert r.headers["x-ratelimit-limit-requests"] == "10000"

    quiet = FakeUpstream(rate_limit_headers=False)
    await quiet.start()
    try:
        async with session.post(
            quiet.url + "/v1/chat/completions", json=chat_body(), headers=auth("any-key")
        ) as r:
            assert r.status == 200
            assert r.headers["x-request-id"]
            assert not [h for h in r.headers if h.lower().startswith("x-ratelimit")]
    finally:
        await quiet.stop()


async def test_retry_after_headers(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    url = fake.url + "/v1/chat/completions"

    async def post(**headers: str) -> aiohttp.ClientResponse:
        async with session.post(url, json=chat_body(), headers=auth() | headers) as r:
            assert r.status == 429
            return r

    assert (await post(**{"x-fake-scenario": "rate-limit"})).headers["retry-after"] == "1"
    r = await post(**{"x-fake-scenario": "rate-limit", "x-fake-retry-after": "3"})
    assert r.headers["retry-after"] == "3"
    r = await post(**{"x-fake-scenario": "rate-limit-ms", "x-fake-retry-after-ms": "250"})
    assert r.headers["retry-after-ms"] == "250"
    assert "retry-after" not in r.headers
    r = await post(**{"x-fake-scenario": "rate-limit-date", "x-fake-retry-after": "30"})
    when = email.utils.parsedate_to_datetime(r.headers["retry-after"]).timestamp()
    assert 28 <= when - time.time() <= 32


async def test_fail_times_sequences(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async def status(sequence: str, **extra: str) -> int:
        headers = auth() | {"x-fake-fail-times": "2", "x-fake-sequence": sequence} | extra
        async with session.post(
            fake.url + "/v1/chat/completions", json=chat_body(), headers=headers
        ) as r:
            return r.status

    assert [await status("a") for _ in range(3)] == [500, 500, 200]
    assert await status("b", **{"x-fake-scenario": "overloaded"}) == 503
    assert await status("a") == 200
    assert await status("b", **{"x-fake-scenario": "overloaded"}) == 503
    assert await status("b", **{"x-fake-scenario": "overloaded"}) == 200


async def test_content_filter_finish_and_max_tokens(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake.url + "/v1/chat/completions"
    headers = auth() | {"x-fake-scenario": "content-filter-finish"}
    async with session.post(url, json=chat_body(stream=True), headers=headers) as r:
        frames = events(await r.read())
    assert frames[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert len(frames) == 5  # role, two pieces, finish, [DONE]
    async with session.post(url, json=chat_body(max_tokens=1), headers=auth()) as r:
        reply = await r.json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["choices"][0]["message"]["content"] == "Echo: he"
    assert reply["usage"]["completion_tokens"] == 1


async def test_garbage_and_html(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    url = fake.url + "/v1/chat/completions"
    async with session.post(url, json=chat_body(model="fake-garbage"), headers=auth()) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        with pytest.raises(ValueError):
            json.loads(await r.read())
    async with session.post(url, json=chat_body(model="fake-html-502"), headers=auth()) as r:
        assert r.status == 502
        assert r.content_type == "text/html"
        assert "<html>" in await r.text()
    assert [rec.outcome for rec in fake.requests] == ["garbage", "error:502"]


# -- broken streams --------------------------------------------------------------


async def read_until_failure(
    session: aiohttp.ClientSession, fake: FakeUpstream, scenario: str, **extra: Any
) -> tuple[bytes, BaseException | None]:
    received = b""
    headers = auth() | {"x-fake-scenario": scenario}
    try:
        async with session.post(
            fake.url + "/v1/chat/completions", json=chat_body(**extra), headers=headers
        ) as r:
            async for data in r.content.iter_any():
                received += data
    except aiohttp.ClientError as exc:
        return received, exc
    return received, None


async def test_reset_mid_stream_is_a_client_error(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    received, error = await read_until_failure(session, fake, "reset-mid-stream", stream=True)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert received.count(b'"content":"') == 3  # the role chunk's "" and two pieces
    assert fake.requests[-1].outcome == "reset"

    received, error = await read_until_failure(session, fake, "reset-mid-stream")
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert received.startswith(b'{"id"')


async def test_reset_before_headers(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    received, error = await read_until_failure(session, fake, "reset-before-headers")
    assert isinstance(error, aiohttp.ServerDisconnectedError)
    assert received == b""
    assert fake.requests[-1].outcome == "reset"


async def test_truncated_and_inband_error_end_cleanly(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    received, error = await read_until_failure(session, fake, "truncated", stream=True)
    frames = events(received)
    assert error is None
    assert len(frames) == 3
    assert "[DONE]" not in frames
    assert all(f["choices"][0]["finish_reason"] is None for f in frames)

    received, error = await read_until_failure(session, fake, "inband-error", stream=True)
    *chunks, last = events(received)
    assert error is None
    assert len(chunks) == 3
    assert last == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert [r.outcome for r in fake.requests] == ["truncated", "inband-error"]

    received, error = await read_until_failure(session, fake, "truncated")
    assert error is None
    with pytest.raises(ValueError):
        json.loads(received)


async def test_stall_and_slow_first_byte_then_finish(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    for scenario in ("stall-mid-stream", "slow-first-byte"):
        headers = auth() | {"x-fake-scenario": scenario, "x-fake-delay": "0.05"}
        started = time.monotonic()
        async with session.post(
            fake.url + "/v1/chat/completions", json=chat_body(stream=True), headers=headers
        ) as r:
            frames = events(await r.read())
        assert time.monotonic() - started >= 0.05
        assert frames[-1] == "[DONE]"
    assert [r.outcome for r in fake.requests] == ["ok", "ok"]


async def test_hang_ends_as_cancelled_when_the_client_leaves(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    headers = auth() | {"x-fake-scenario": "hang"}
    with pytest.raises(asyncio.TimeoutError):
        await session.post(
            fake.url + "/v1/chat/completions",
            json=chat_body(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=0.05),
        )
    await until(lambda: fake.requests[-1].outcome == "cancelled")
    assert fake.requests[-1].finished_at is not None


# -- hold / release and key rotation -------------------------------------------------


async def test_hold_pauses_streams_until_released(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake.url + "/v1/chat/completions"
    first_pieces: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

    async def stream(index: int, key: str) -> list[Any]:
        headers = auth(key) | {"x-fake-hold": "rotation"}
        async with session.post(url, json=chat_body(stream=True), headers=headers) as r:
            received = b""
            async for data in r.content.iter_any():
                received += data
                if b"Echo" in received:
                    first_pieces[index].set()
            return events(received)

    tasks = [asyncio.create_task(stream(0, KEY)), asyncio.create_task(stream(1, OTHER_KEY))]
    await fake.wait_held("rotation", 2)
    await asyncio.gather(*(e.wait() for e in first_pieces))
    assert not any(t.done() for t in tasks)

    fake.set_keys({OTHER_KEY})
    async with session.post(url, json=chat_body(), headers=auth(KEY)) as r:
        assert r.status == 401
    async with session.post(url, json=chat_body(), headers=auth(OTHER_KEY)) as r:
        assert r.status == 200

    fake.release("rotation")
    results = await asyncio.gather(*tasks)
    assert all(frames[-1] == "[DONE]" for frames in results)
    assert [r.key_fingerprint for r in fake.requests] == [
        fingerprint(KEY),
        fingerprint(OTHER_KEY),
        fingerprint(KEY),
        fingerprint(OTHER_KEY),
    ]
    assert [r.outcome for r in fake.requests] == ["ok", "ok", "error:401", "ok"]
    # A released gate stays open.
    headers = auth(OTHER_KEY) | {"x-fake-hold": "rotation"}
    async with session.post(url, json=chat_body(), headers=headers) as r:
        assert r.status == 200


async def test_hold_before_a_non_streamed_answer_and_cancel(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake.url + "/v1/chat/completions"

    async def post(gate: str) -> int:
        headers = auth() | {"x-fake-hold": gate}
        async with session.post(url, json=chat_body(), headers=headers) as r:
            return r.status

    answered = asyncio.create_task(post("plain"))
    await fake.wait_held("plain")
    assert not answered.done()
    fake.release("plain")
    assert await answered == 200

    abandoned = asyncio.create_task(post("gone"))
    await fake.wait_held("gone")
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    await until(lambda: fake.requests[-1].outcome == "cancelled")


async def test_stop_releases_held_and_hanging_requests(session: aiohttp.ClientSession) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    url = upstream.url + "/v1/chat/completions"

    async def post(**headers: str) -> BaseException | int:
        try:
            async with session.post(url, json=chat_body(), headers=auth() | headers) as r:
                return r.status
        except aiohttp.ClientError as exc:
            return exc

    held = asyncio.create_task(post(**{"x-fake-hold": "forever"}))
    hanging = asyncio.create_task(post(**{"x-fake-scenario": "hang"}))
    await upstream.wait_held("forever")
    await until(lambda: len(upstream.requests) == 2)
    await upstream.stop()
    assert await held == 200
    assert isinstance(await hanging, aiohttp.ServerDisconnectedError)


async def test_chat_records_the_request_and_reports_reasoning_tokens(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    body = chat_body()
    headers = auth() | {"x-fake-reasoning-tokens": "5", "Idempotency-Key": "chat-1"}
    async with session.post(
        fake.url + "/v1/chat/completions?trace=1", json=body, headers=headers
    ) as r:
        usage = (await r.json())["usage"]
    assert usage["completion_tokens"] == 4 + 5
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5
    [rec] = fake.requests
    assert (rec.method, rec.endpoint, rec.query) == ("POST", "chat.completions", {"trace": "1"})
    assert rec.content_type == "application/json"
    assert rec.body_bytes == len(json.dumps(body).encode())
    assert rec.headers["idempotency-key"] == "chat-1"
    assert (rec.form, rec.uploads) == ({}, [])


async def test_azure_v1_chat_names_the_deployment_in_the_body(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake.url + "/openai/v1/chat/completions"
    body = {"model": "gpt-4o-prod", "messages": [USER], "stream": True}
    async with session.post(url, json=body, headers=auth()) as r:
        assert r.headers["apim-request-id"]
        first, *_ = events(await r.read())
    assert "prompt_filter_results" in first, "Azure's quirks on its v1 routes too"
    async with session.post(url, json=body | {"model": "nope"}, headers={"api-key": KEY}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "DeploymentNotFound"
    ok, missing = fake.requests
    assert (ok.variant, ok.deployment, ok.model, ok.query) == (
        "azure",
        "gpt-4o-prod",
        "gpt-4o-2024-08-06",
        {},
    )
    assert missing.deployment == "nope" and missing.key_fingerprint == fingerprint(KEY)


# -- records and the command line -------------------------------------------------


async def test_any_key_mode_and_recorded_request_type(session: aiohttp.ClientSession) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    try:
        async with session.post(
            upstream.url + "/v1/chat/completions", json=chat_body(), headers=auth("whatever")
        ) as r:
            assert r.status == 200
        async with session.post(
            upstream.url + "/v1/chat/completions", json=chat_body(), headers=auth("")
        ) as r:
            assert r.status == 401
    finally:
        await upstream.stop()
    assert all(isinstance(r, RecordedRequest) for r in upstream.requests)
    assert [r.key_fingerprint for r in upstream.requests] == [fingerprint("whatever"), ""]


async def test_main_prints_the_url_and_stops_on_sigterm(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    code = (
        "import sys; from openai_runtime_sidecar.fakes.upstream import main; "
        "sys.exit(main(['--port', '0', '--key', 'sk-cli']))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with session.post(
            url + "/v1/chat/completions", json=chat_body(), headers=auth("sk-cli")
        ) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
