"""The runner end to end: real aiohttp client, real loopback upstream, fake clock for waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import (
    AuthenticationFailed,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    CredentialStore,
    InvalidRequest,
    LocalRateLimited,
    ManualClock,
    OpenAiConfig,
    OpenAiRunner,
    QuotaExhausted,
    RateLimited,
    TransportError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openai_runtime_sidecar.runner.credentials import fingerprint
from tests.support import NEW_KEY, OLD_KEY, SecretVolume, unaccepting_port

MESSAGES = [{"role": "user", "content": "Say hello to the operator"}]

RunnerFactory = Callable[..., OpenAiRunner]


@pytest.fixture
async def make_runner(
    upstream: FakeUpstream, secret_dir: SecretVolume
) -> AsyncIterator[RunnerFactory]:
    runners: list[OpenAiRunner] = []

    def factory(
        variant: str = "direct", *, clock: ManualClock | None = None, **spec: Any
    ) -> OpenAiRunner:
        if variant == "direct":
            spec["variant"] = {"direct": {"endpoint": upstream.url + "/v1"}}
        else:
            spec["variant"] = {"azure": {"endpoint": upstream.url, "deployment": "gpt-4o-prod"}}
        spec["apiKey"] = {"file": str(secret_dir.path)}
        config = OpenAiConfig.model_validate(spec)
        store = CredentialStore(config.api_key)
        store.load()
        runner = OpenAiRunner(config, store, clock=clock or ManualClock(auto_advance=True))
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        await runner.aclose()


def body(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def frames(data: bytes) -> list[dict[str, Any] | str]:
    out: list[dict[str, Any] | str] = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


# -- success paths ---------------------------------------------------------


async def test_direct_chat_reports_usage_cost_and_headers(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner()
    result = await runner.chat(body(metadata={"team": "search"}, seed=7))
    info = result.outcome
    assert result.status == 200
    assert result.payload["choices"][0]["message"]["content"].startswith("Echo: ")
    assert info.response_model == "gpt-4o-mini-2024-07-18"
    assert info.request_model == "gpt-4o-mini"
    assert info.attempts == 1
    assert info.request_id
    assert info.processing_ms is not None
    assert info.rate_limits.limit_requests == 10000
    assert info.usage is not None and info.usage.prompt_tokens > 0
    usage = result.payload["usage"]
    assert info.usage.completion_tokens == usage["completion_tokens"]
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert info.cost is not None and info.cost.usd == pytest.approx(expected)
    assert info.cost.model == "gpt-4o-mini" and not info.cost.estimated
    assert info.finish_reasons == ("stop",)
    recorded = upstream.requests[-1]
    assert recorded.variant == "direct"
    assert recorded.key_fingerprint == fingerprint(OLD_KEY)
    # Unknown fields reach upstream untouched.
    assert recorded.body["metadata"] == {"team": "search"} and recorded.body["seed"] == 7


async def test_cached_tokens_are_priced_at_the_cached_rate(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    result = await runner.chat(body(), headers={"x-fake-cached-tokens": "4"})
    usage = result.outcome.usage
    assert usage is not None and usage.cached_tokens == 4
    expected = ((usage.prompt_tokens - 4) * 0.15 + 4 * 0.075 + usage.completion_tokens * 0.60) / 1e6
    assert result.outcome.cost is not None and result.outcome.cost.usd == pytest.approx(expected)


async def test_azure_chat_uses_deployment_url_and_prices_the_real_model(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner("azure")
    result = await runner.chat({"messages": MESSAGES})
    recorded = upstream.requests[-1]
    assert recorded.variant == "azure" and recorded.deployment == "gpt-4o-prod"
    assert recorded.key_fingerprint == fingerprint(OLD_KEY)
    assert result.outcome.response_model == "gpt-4o-2024-08-06"
    assert result.outcome.cost is not None and result.outcome.cost.model in {
        "gpt-4o",
        "gpt-4o-2024-08-06",
    }
    usage = result.outcome.usage
    assert usage is not None
    expected = (usage.prompt_tokens * 2.5 + usage.completion_tokens * 10.0) / 1e6
    assert result.outcome.cost.usd == pytest.approx(expected)


async def test_stream_hides_usage_chunk_the_caller_did_not_ask_for(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner()
    stream = await runner.stream(body(stream=True))
    data = await collect(stream)
    events = frames(data)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["choices"] for c in chunks), "the usage-only chunk must be hidden"
    assert upstream.requests[-1].include_usage, "upstream is always asked for usage"
    info = stream.outcome
    assert info.usage is not None and info.usage.total_tokens > 0 and not info.usage_estimated
    assert info.finish_reasons == ("stop",)
    assert info.time_to_first_byte is not None and info.error is None
    assert info.cost is not None and info.cost.usd > 0
    assert data.endswith(b"data: [DONE]\n\n")


async def test_stream_keeps_usage_chunk_when_asked(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    stream = await runner.stream(body(stream=True, stream_options={"include_usage": True}))
    events = frames(await collect(stream))
    usage_chunks = [e for e in events if isinstance(e, dict) and e["choices"] == []]
    assert len(usage_chunks) == 1
    assert stream.outcome.usage is not None
    assert usage_chunks[0]["usage"]["total_tokens"] == stream.outcome.usage.total_tokens


async def test_azure_stream_tolerates_empty_first_chunk_and_filter_only_chunks(
    make_runner: RunnerFactory,
) -> None:
    runner = make_runner("azure")
    stream = await runner.stream({"messages": MESSAGES, "stream": True})
    events = frames(await collect(stream))
    first = events[0]
    assert isinstance(first, dict) and first["choices"] == [] and "prompt_filter_results" in first
    filter_only = [
        e for e in events if isinstance(e, dict) and e["choices"] and "delta" not in e["choices"][0]
    ]
    assert filter_only, "Azure's filter-only chunk is passed through"
    info = stream.outcome
    assert info.response_model == "gpt-4o-2024-08-06"
    assert info.response_id and info.usage is not None and info.error is None


async def test_content_filter_finish_is_reported_not_raised(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    result = await runner.chat(body(), headers={"x-fake-scenario": "content-filter-finish"})
    assert result.outcome.content_filtered and result.outcome.error is None


# -- classified errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "status", "code"),
    [
        ("context-length", ContextLengthExceeded, 400, "context_length_exceeded"),
        ("content-filter", ContentFiltered, 400, "content_filter"),
        ("content-filter-results", ContentFiltered, 400, "content_filter"),
        ("insufficient-quota", QuotaExhausted, 429, "insufficient_quota"),
    ],
)
async def test_permanent_errors_are_not_retried(
    make_runner: RunnerFactory,
    upstream: FakeUpstream,
    scenario: str,
    error: type[Exception],
    status: int,
    code: str,
) -> None:
    runner = make_runner()
    with pytest.raises(error) as caught:
        await runner.chat(body(), headers={"x-fake-scenario": scenario})
    err = caught.value
    assert isinstance(err, InvalidRequest | QuotaExhausted)
    assert err.status == status and err.code == code
    assert err.attempts == 1 and len(upstream.requests) == 1
    assert json.loads(err.body) == err.openai_body()
    assert err.request_id


async def test_rate_limit_waits_retry_after_then_succeeds(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    clock = ManualClock(auto_advance=True)
    runner = make_runner(clock=clock)
    headers = {
        "x-fake-scenario": "rate-limit",
        "x-fake-retry-after": "3",
        "x-fake-fail-times": "1",
        "x-fake-sequence": "rl-1",
    }
    result = await runner.chat(body(), headers=headers)
    assert result.outcome.attempts == 2 and clock.sleeps == [3.0]
    assert len(upstream.requests) == 2


async def test_retry_after_ms_wins(make_runner: RunnerFactory) -> None:
    clock = ManualClock(auto_advance=True)
    runner = make_runner(clock=clock)
    headers = {
        "x-fake-scenario": "rate-limit-ms",
        "x-fake-retry-after-ms": "250",
        "x-fake-fail-times": "1",
        "x-fake-sequence": "rl-ms",
    }
    await runner.chat(body(), headers=headers)
    assert clock.sleeps == [0.25]


async def test_retry_after_beyond_the_cap_surfaces_rate_limited(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    clock = ManualClock(auto_advance=True)
    runner = make_runner(clock=clock, retry={"maxRetryAfter": "10s"})
    headers = {"x-fake-scenario": "rate-limit", "x-fake-retry-after": "60"}
    with pytest.raises(RateLimited) as caught:
        await runner.chat(body(), headers=headers)
    assert caught.value.retry_after == 60 and caught.value.attempts == 1
    assert clock.sleeps == [] and len(upstream.requests) == 1


async def test_server_errors_back_off_exponentially(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    clock = ManualClock(auto_advance=True)
    runner = make_runner(clock=clock, retry={"maxAttempts": 4, "jitter": 0})
    headers = {"x-fake-scenario": "server-error", "x-fake-fail-times": "3", "x-fake-sequence": "s"}
    result = await runner.chat(body(), headers=headers)
    assert result.outcome.attempts == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_server_errors_exhaust_attempts(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner()
    with pytest.raises(UpstreamUnavailable) as caught:
        await runner.chat(body(), headers={"x-fake-scenario": "server-error"})
    assert caught.value.status == 500 and caught.value.attempts == 3
    assert len(upstream.requests) == 3


async def test_html_error_page_is_classified_and_kept(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry={"maxAttempts": 1})
    with pytest.raises(UpstreamUnavailable) as caught:
        await runner.chat(body(), headers={"x-fake-scenario": "html-502"})
    err = caught.value
    assert err.status == 502 and b"<html" in err.body.lower()
    assert err.openai_body()["error"]["message"]


async def test_garbage_200_is_a_transport_error(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry={"maxAttempts": 1})
    with pytest.raises(TransportError):
        await runner.chat(body(), headers={"x-fake-scenario": "garbage"})


async def test_an_error_body_with_200_is_raised_not_returned(make_runner: RunnerFactory) -> None:
    # The fake's "status" scenario at 200 answers a 200 whose body is an
    # invalid_request_error: the request's fault, so one attempt, breaker untouched.
    runner = make_runner()
    with pytest.raises(InvalidRequest) as info:
        await runner.chat(body(), headers={"x-fake-scenario": "status", "x-fake-status": "200"})
    err = info.value
    assert err.status == 200, "upstream's own status is kept"
    assert err.http_status() == 400, "the app is answered with what it is"
    assert err.openai_body()["error"]["type"] == "invalid_request_error"
    assert err.attempts == 1
    assert runner.circuits.scope("gpt-4o-mini").snapshot()["consecutive_failures"] == 0


async def test_connection_reset_before_headers_is_retried(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    headers = {
        "x-fake-scenario": "reset-before-headers",
        "x-fake-fail-times": "1",
        "x-fake-sequence": "reset",
    }
    result = await runner.chat(body(), headers=headers)
    assert result.outcome.attempts == 2


# -- credentials -----------------------------------------------------------


async def test_unknown_key_is_authentication_failed(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner()
    upstream.set_keys({NEW_KEY})
    with pytest.raises(AuthenticationFailed) as caught:
        await runner.chat(body())
    assert caught.value.status == 401 and caught.value.attempts == 1


async def test_401_rereads_the_key_and_retries_once_with_the_new_one(
    make_runner: RunnerFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    runner = make_runner()
    upstream.set_keys({NEW_KEY})
    secret_dir.write(NEW_KEY)  # rotated on disk, not yet noticed by the runner
    result = await runner.chat(body())
    assert result.outcome.attempts == 2
    assert [r.key_fingerprint for r in upstream.requests] == [
        fingerprint(OLD_KEY),
        fingerprint(NEW_KEY),
    ]
    assert runner.credentials.current is not None
    assert runner.credentials.current.fingerprint == fingerprint(NEW_KEY)


async def test_in_flight_stream_keeps_its_key_while_new_calls_take_the_rotated_one(
    make_runner: RunnerFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    runner = make_runner()
    held = await runner.stream(body(stream=True), headers={"x-fake-hold": "rotation"})
    reader = asyncio.create_task(collect(held))
    await upstream.wait_held("rotation")
    secret_dir.write(NEW_KEY)
    assert runner.credentials.reload().changed
    fresh = await runner.chat(body())
    upstream.release("rotation")
    data = await reader
    assert frames(data)[-1] == "[DONE]" and held.outcome.error is None
    assert held.outcome.credential_fingerprint == fingerprint(OLD_KEY)
    assert fresh.outcome.credential_fingerprint == fingerprint(NEW_KEY)
    fingerprints = [r.key_fingerprint for r in upstream.requests]
    assert fingerprints == [fingerprint(OLD_KEY), fingerprint(NEW_KEY)]


# -- breaker and limiter ---------------------------------------------------


async def test_breaker_opens_on_server_errors_and_recovers(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    clock = ManualClock()
    runner = make_runner(
        clock=clock,
        retry={"maxAttempts": 1},
        circuitBreaker={"failureThreshold": 2, "openDuration": "30s"},
    )
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await runner.chat(body(), headers={"x-fake-scenario": "server-error"})
    with pytest.raises(CircuitOpen) as caught:
        await runner.chat(body())
    assert caught.value.retry_after == pytest.approx(30)
    assert len(upstream.requests) == 2, "an open circuit does not call upstream"
    clock.advance(30)
    result = await runner.chat(body())
    assert result.status == 200
    assert runner.circuits.scope("gpt-4o-mini").state.value == "closed"


async def test_breaker_opening_mid_retry_surfaces_upstreams_answer(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner(retry={"maxAttempts": 3}, circuitBreaker={"failureThreshold": 2})
    with pytest.raises(UpstreamUnavailable) as caught:
        await runner.chat(body(), headers={"x-fake-scenario": "server-error"})
    assert caught.value.status == 500 and caught.value.attempts == 2
    assert len(upstream.requests) == 2
    with pytest.raises(CircuitOpen):
        await runner.chat(body())


async def test_client_errors_do_not_open_the_breaker(make_runner: RunnerFactory) -> None:
    runner = make_runner(circuitBreaker={"failureThreshold": 1})
    for _ in range(3):
        with pytest.raises(ContextLengthExceeded):
            await runner.chat(body(), headers={"x-fake-scenario": "context-length"})
    assert (await runner.chat(body())).status == 200


async def test_concurrency_limit_answers_local_rate_limited(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner(rateLimits={"maxConcurrency": 1, "maxQueueWait": 0})
    held = await runner.stream(body(stream=True), headers={"x-fake-hold": "busy"})
    reader = asyncio.create_task(collect(held))
    await upstream.wait_held("busy")
    with pytest.raises(LocalRateLimited) as caught:
        await runner.chat(body())
    assert caught.value.limit == "concurrency" and caught.value.status == 429
    upstream.release("busy")
    await reader
    assert (await runner.chat(body())).status == 200


# -- timeouts and broken streams ------------------------------------------


async def test_hang_hits_the_total_timeout(make_runner: RunnerFactory) -> None:
    runner = make_runner(clock=ManualClock(), retry={"maxAttempts": 1}, timeouts={"total": "200ms"})
    with pytest.raises(UpstreamTimeout) as caught:
        await runner.chat(body(), headers={"x-fake-scenario": "hang"})
    assert caught.value.phase == "total" and caught.value.status == 504


async def test_slow_first_byte_on_a_stream(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry={"maxAttempts": 1}, timeouts={"firstByte": "100ms"})
    headers = {"x-fake-scenario": "slow-first-byte", "x-fake-delay": "5"}
    with pytest.raises(UpstreamTimeout) as caught:
        await runner.stream(body(stream=True), headers=headers)
    assert caught.value.phase == "first_byte"


async def test_stalled_stream_hits_the_idle_timeout_after_first_bytes(
    make_runner: RunnerFactory,
) -> None:
    runner = make_runner(timeouts={"streamIdle": "100ms"})
    headers = {"x-fake-scenario": "stall-mid-stream", "x-fake-delay": "5"}
    stream = await runner.stream(body(stream=True), headers=headers)
    received = []
    with pytest.raises(UpstreamTimeout) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert caught.value.phase == "stream_idle"
    assert received, "bytes before the stall were delivered"
    assert stream.outcome.attempts == 1 and isinstance(stream.outcome.error, UpstreamTimeout)


@pytest.mark.parametrize("scenario", ["reset-mid-stream", "truncated"])
async def test_cut_stream_raises_and_estimates_cost(
    make_runner: RunnerFactory, scenario: str
) -> None:
    runner = make_runner()
    stream = await runner.stream(body(stream=True), headers={"x-fake-scenario": scenario})
    received = []
    with pytest.raises(TransportError):
        async for chunk in stream:
            received.append(chunk)
    info = stream.outcome
    assert received and info.attempts == 1
    assert info.usage_estimated and info.usage is not None and info.usage.prompt_tokens > 0
    assert info.cost is not None and info.cost.estimated and info.cost.usd > 0
    assert runner.limiter.snapshot()["in_flight"] == 0


async def test_in_band_error_is_forwarded_then_raised(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    stream = await runner.stream(body(stream=True), headers={"x-fake-scenario": "inband-error"})
    received: list[bytes] = []
    with pytest.raises(UpstreamUnavailable):
        async for chunk in stream:
            received.append(chunk)
    events = frames(b"".join(received))
    assert any(isinstance(e, dict) and "error" in e for e in events)


async def test_closing_a_stream_early_cancels_upstream_and_frees_the_slot(
    make_runner: RunnerFactory, upstream: FakeUpstream
) -> None:
    runner = make_runner()
    stream = await runner.stream(body(stream=True), headers={"x-fake-hold": "gone"})
    await upstream.wait_held("gone")
    await stream.aclose()
    assert runner.limiter.snapshot()["in_flight"] == 0
    assert stream.outcome.usage_estimated
    upstream.release("gone")
    assert (await runner.chat(body())).status == 200


# -- estimates and live reconfiguration ------------------------------------


async def test_estimate_cost_bounds_the_call_before_it_is_made(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    estimate = runner.estimate_cost(body(max_tokens=100))
    actual = (await runner.chat(body(max_tokens=100))).outcome.cost
    assert estimate.estimated and estimate.model == "gpt-4o-mini"
    assert actual is not None and 0 < actual.usd <= estimate.usd


async def test_reconfigure_keeps_breaker_state_unless_its_settings_change(
    make_runner: RunnerFactory,
) -> None:
    runner = make_runner(retry={"maxAttempts": 1}, circuitBreaker={"failureThreshold": 1})
    with pytest.raises(UpstreamUnavailable):
        await runner.chat(body(), headers={"x-fake-scenario": "server-error"})
    priced = runner.config.model_dump(by_alias=True)
    priced["pricing"] = {"gpt-4o-mini": {"inputPerMTokUsd": 1, "outputPerMTokUsd": 2}}
    runner.reconfigure(OpenAiConfig.model_validate(priced))
    with pytest.raises(CircuitOpen):
        await runner.chat(body())
    relaxed = runner.config.model_dump(by_alias=True)
    relaxed["circuitBreaker"]["failureThreshold"] = 5
    runner.reconfigure(OpenAiConfig.model_validate(relaxed))
    result = await runner.chat(body())
    usage = result.outcome.usage
    assert usage is not None and result.outcome.cost is not None
    expected = (usage.prompt_tokens * 1 + usage.completion_tokens * 2) / 1e6
    assert result.outcome.cost.usd == pytest.approx(expected), "the override applies at once"


async def test_connect_timeout_against_a_listener_that_never_accepts(
    secret_dir: SecretVolume,
) -> None:
    with unaccepting_port() as port:
        config = OpenAiConfig.model_validate(
            {
                "variant": {"direct": {"endpoint": f"http://127.0.0.1:{port}/v1"}},
                "apiKey": {"file": str(secret_dir.path)},
                "retry": {"maxAttempts": 1},
                "timeouts": {"connect": "150ms"},
            }
        )
        store = CredentialStore(config.api_key)
        store.load()
        runner = OpenAiRunner(config, store, clock=ManualClock())
        try:
            with pytest.raises(UpstreamTimeout) as caught:
                await runner.chat(body())
            assert caught.value.phase == "connect"
        finally:
            await runner.aclose()
