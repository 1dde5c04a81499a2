"""The sidecar's API as apps see it: the official OpenAI SDK, unchanged, on loopback."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp
import openai
import pytest

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner.credentials import fingerprint
from tests.sidecar.conftest import SidecarFactory
from tests.support import NEW_KEY, OLD_KEY

USER = {"role": "user", "content": "Summarise the rotation guarantee"}
EXPECTED = "Echo: Summarise the rotation guarantee"


def content_of(chunks: list[Any]) -> str:
    """The streamed text; Azure's filter-only chunks carry no delta."""
    return "".join(
        (chunk.choices[0].delta.content or "")
        for chunk in chunks
        if chunk.choices and chunk.choices[0].delta is not None
    )


# -- success paths ---------------------------------------------------------


async def test_non_streamed_call_through_the_sdk(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[USER], extra_body={"metadata": {"team": "a"}}
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == EXPECTED
    assert reply.model == "gpt-4o-mini-2024-07-18"
    assert reply.usage is not None
    cost = float(raw.headers["x-openai-runtime-cost-usd"])
    expected = (reply.usage.prompt_tokens * 0.15 + reply.usage.completion_tokens * 0.60) / 1e6
    assert cost == pytest.approx(expected)
    assert raw.headers["x-request-id"] == upstream.requests[-1].headers.get(
        "x-request-id", raw.headers["x-request-id"]
    )
    recorded = upstream.requests[-1]
    assert recorded.key_fingerprint == fingerprint(OLD_KEY), "the app's key is never used"
    assert recorded.body["metadata"] == {"team": "a"}, "unknown fields pass through"


async def test_streamed_call_hides_usage_unless_asked(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=[USER], stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert all(c.choices for c in chunks), "no usage-only chunk"
    assert upstream.requests[-1].include_usage

    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


async def test_sync_sdk_client_works_unchanged(sidecar: Sidecar) -> None:
    def call() -> tuple[str, str]:
        with openai.OpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0) as sdk:
            reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=[USER])
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=[USER], stream=True
                )
                if chunk.choices
            )
            return reply.choices[0].message.content or "", streamed

    reply, streamed = await asyncio.to_thread(call)
    assert reply == EXPECTED and streamed == EXPECTED


async def test_azure_upstream_behind_the_plain_sdk(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar("azure")
    async with openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x") as sdk:
        reply = await sdk.chat.completions.create(model="gpt-4o", messages=[USER])
        stream = await sdk.chat.completions.create(model="gpt-4o", messages=[USER], stream=True)
        text = content_of([c async for c in stream])
    assert reply.model == "gpt-4o-2024-08-06" and text == EXPECTED
    assert {r.variant for r in upstream.requests} == {"azure"}


async def test_apps_written_for_azure_can_point_their_sdk_at_the_sidecar(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar("azure")
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sidecar.api_url, api_key="x", api_version="2024-10-21"
    ) as sdk:
        reply = await sdk.chat.completions.create(model="gpt-4o-prod", messages=[USER])
    assert reply.choices[0].message.content == EXPECTED


async def test_models_allow_list_and_default(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(
        models={"allow": ["gpt-4o-mini", "gpt-4o"], "default": "gpt-4o-mini"}
    )
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0
    ) as sdk:
        listed = await sdk.models.list()
        # Upstream's list, narrowed to what the runtime allows.
        assert sorted(m.id for m in listed.data) == ["gpt-4o", "gpt-4o-mini"]
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="gpt-5", messages=[USER])
        assert caught.value.code == "model_not_allowed"
        assert caught.value.param == "model"
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            sidecar.api_url + "/v1/chat/completions", json={"messages": [USER]}
        )
        payload = await response.json()
    assert response.status == 200 and payload["model"] == "gpt-4o-mini-2024-07-18"


# -- errors as the SDK sees them --------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "exception", "status", "code"),
    [
        ("context-length", openai.BadRequestError, 400, "context_length_exceeded"),
        ("content-filter", openai.BadRequestError, 400, "content_filter"),
        ("insufficient-quota", openai.RateLimitError, 429, "insufficient_quota"),
        ("server-error", openai.InternalServerError, 500, None),
    ],
)
async def test_upstream_errors_keep_their_status_and_code(
    client: openai.AsyncOpenAI,
    scenario: str,
    exception: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[USER], extra_headers={"x-fake-scenario": scenario}
        )
    err = caught.value
    assert err.status_code == status
    if code is not None:
        assert err.code == code
    assert err.response.headers["x-should-retry"] == "false"


async def test_sdk_does_not_multiply_the_sidecars_retries(
    sidecar: Sidecar, upstream: FakeUpstream
) -> None:
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=3
    ) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[USER],
                extra_headers={"x-fake-scenario": "server-error"},
            )
    assert caught.value.response.headers["x-openai-runtime-attempts"] == "3"
    assert len(upstream.requests) == 3, "3 sidecar attempts, 0 SDK retries"


async def test_rate_limit_beyond_the_cap_reaches_the_app_with_retry_after(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar(retry={"maxRetryAfter": "5s"})
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0
    ) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[USER],
                extra_headers={"x-fake-scenario": "rate-limit", "x-fake-retry-after": "90"},
            )
    assert caught.value.response.headers["retry-after"] == "90"


async def test_local_refusals_use_distinct_codes(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(
        retry={"maxAttempts": 1},
        circuitBreaker={"failureThreshold": 1, "openDuration": "30s"},
        timeouts={"total": "300ms"},
    )
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0
    ) as sdk:
        with pytest.raises(openai.APIStatusError) as timeout:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[USER], extra_headers={"x-fake-scenario": "hang"}
            )
        assert timeout.value.status_code == 504
        assert timeout.value.code == "upstream_timeout"
        with pytest.raises(openai.InternalServerError) as circuit:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=[USER])
        assert circuit.value.status_code == 503 and circuit.value.code == "circuit_open"
        assert int(circuit.value.response.headers["retry-after"]) >= 29


async def test_local_rate_limit_answers_429_with_retry_after(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(rateLimits={"maxConcurrency": 1, "maxQueueWait": 0})
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0
    ) as sdk:
        held = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[USER], stream=True, extra_headers={"x-fake-hold": "h"}
        )
        await upstream.wait_held("h")
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=[USER])
        assert caught.value.code == "local_rate_limited"
        assert "retry-after" in caught.value.response.headers
        upstream.release("h")
        assert [c async for c in held]


async def test_upstream_rejecting_the_key_is_an_authentication_error(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.set_keys({NEW_KEY})
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[USER])


async def test_a_cut_stream_raises_in_the_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[USER],
        stream=True,
        extra_headers={"x-fake-scenario": "reset-mid-stream"},
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


# -- bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe\x00garbage", 400, "invalid_body"),
        (b"[1, 2, 3]", 400, "invalid_body"),
        (b'{"model": "gpt-4o-mini"}', 400, "invalid_type"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_type"),
        (b'{"messages": ["not an object"]}', 400, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "invalid_type"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            400,
            "invalid_value",
        ),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ],
)
async def test_bad_requests_get_clear_openai_shaped_errors(
    sidecar: Sidecar, upstream: FakeUpstream, body: bytes, status: int, code: str
) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            sidecar.api_url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        payload: dict[str, Any] = await response.json()
        assert response.status == status
        assert payload["error"]["code"] == code and payload["error"]["message"]
        ok = await http.post(
            sidecar.api_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [USER]},
        )
        assert ok.status == 200, "the sidecar keeps serving"
    assert len(upstream.requests) == 1, "refused requests never reach upstream"


@pytest.mark.parametrize("stream", [False, True])
async def test_what_fast_json_would_change_reaches_upstream_as_the_app_sent_it(
    sidecar: Sidecar, upstream: FakeUpstream, stream: bool
) -> None:
    # A 30-digit id, NaN and a lone surrogate escape: orjson would round the
    # first, write the second as null and refuse the third.
    body = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800 hi"}],'
        b' "metadata": {"id": 123456789012345678901234567890}, "temperature": NaN,'
        b' "stream": ' + (b"true" if stream else b"false") + b"}"
    )
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            sidecar.api_url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        await response.read()
        assert response.status == 200
    sent = upstream.requests[-1].body
    assert sent["metadata"]["id"] == 123456789012345678901234567890
    assert math.isnan(sent["temperature"])
    assert sent["messages"][0]["content"] == "\ud800 hi"


async def test_huge_bodies_are_refused_with_413(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(limits={"maxRequestBytes": 4096})
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 10_000}]}
    async with aiohttp.ClientSession() as http:
        response = await http.post(sidecar.api_url + "/v1/chat/completions", json=big)
        payload = await response.json()
    assert response.status == 413 and payload["error"]["code"] == "request_too_large"


async def test_unknown_routes_and_methods(sidecar: Sidecar) -> None:
    """Outside the API's prefixes the sidecar answers itself; under them, upstream judges."""
    async with aiohttp.ClientSession() as http:
        missing = await http.post(sidecar.api_url + "/nowhere", json={})
        assert missing.status == 404
        assert (await missing.json())["error"]["code"] == "unknown_url"
        wrong = await http.put(sidecar.api_url + "/chat/completions", json={})
        assert wrong.status == 405
        assert (await wrong.json())["error"]["code"] == "method_not_allowed"
        unknown = await http.post(sidecar.api_url + "/v1/no-such-thing", json={})
        assert unknown.status == 404  # upstream's own answer, passed on
        assert "Invalid URL" in (await unknown.json())["error"]["message"]


async def test_nothing_the_sidecar_answers_contains_the_key(
    client: openai.AsyncOpenAI, sidecar: Sidecar
) -> None:
    await client.chat.completions.create(model="gpt-4o-mini", messages=[USER])
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics", "/status"):
            text = await (await http.get(sidecar.admin_url + path)).text()
            assert OLD_KEY not in text
            assert "sk-test" not in text
    status = json.loads(text)
    assert status["credential"]["fingerprint"] == fingerprint(OLD_KEY)


async def test_garbled_upstream_answers_are_a_502_transport_error(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(retry={"maxAttempts": 2})
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0
    ) as sdk:
        with pytest.raises(openai.APIStatusError) as garbage:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[USER], extra_headers={"x-fake-scenario": "garbage"}
            )
        with pytest.raises(openai.APIStatusError) as html:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[USER], extra_headers={"x-fake-scenario": "html-502"}
            )
    assert garbage.value.status_code == 502 and garbage.value.code == "upstream_transport_error"
    assert garbage.value.response.headers["x-openai-runtime-attempts"] == "2"
    assert html.value.status_code == 502, "upstream's own status is kept"
    assert len(upstream.requests) == 4
