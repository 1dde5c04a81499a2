"""Failover across backends, as an app sees it: the official SDK, a real sidecar, two upstreams.

Backend A (the primary) is the fake upstream of the other sidecar tests;
backend B is a second one with a key of its own. A fake upstream fails a
call whose model is ``fake-<scenario>``; B's model map sends such names to
``gpt-4o-mini``, so one app request fails on A and can succeed on B.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openai_runtime_sidecar.admin import status_document
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import ManualClock
from openai_runtime_sidecar.runner.credentials import fingerprint
from tests.support import SecretVolume, points, unaccepting_port

from .conftest import SidecarFactory
from .test_rotation import eventually, metric, scrape

B_KEY = "sk-backend-b-0000000000000000"
FAILING = ("server-error", "overloaded", "rate-limit", "insufficient-quota", "context-length")


@pytest.fixture
async def backend_b() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(keys={B_KEY})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def b_key(tmp_path: Path) -> SecretVolume:
    volume = SecretVolume(tmp_path / "secret-b")
    volume.write(B_KEY)
    return volume


def fallback(b: FakeUpstream, key: SecretVolume) -> dict[str, Any]:
    models = {f"fake-{name}": "gpt-4o-mini" for name in (*FAILING, "reset-mid-stream", "hang")}
    return {
        "name": "b",
        "variant": {"direct": {"endpoint": b.url + "/v1"}},
        "apiKey": {"file": str(key.path)},
        "models": models,
    }


def client(sidecar: Sidecar) -> openai.AsyncOpenAI:
    # The SDK's own retries off: every recovery seen here is the sidecar's.
    return openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("scenario", ["server-error", "overloaded", "rate-limit"])
async def test_a_failing_primary_is_served_by_the_fallback_with_no_app_visible_error(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    metrics: InMemoryMetricReader,
    scenario: str,
) -> None:
    clock = ManualClock(auto_advance=True)
    sidecar = await make_sidecar(clock=clock, fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(**chat(f"fake-{scenario}"))
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-openai-runtime-attempts"] == "2"
    assert [r.model for r in upstream.requests] == [f"fake-{scenario}"]
    [served] = backend_b.requests
    assert served.model == "gpt-4o-mini"  # the fallback's name for what the app asked
    assert served.key_fingerprint == fingerprint(B_KEY)  # its own key
    assert clock.sleeps == []  # no backoff: another backend is not a retry of the same
    assert float(raw.headers["x-openai-runtime-cost-usd"]) > 0  # priced at B
    [request] = points(metrics)["openai_runtime.requests"]
    assert request.attributes["backend"] == "b" and request.attributes["outcome"] == "ok"


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("insufficient-quota", openai.RateLimitError),
        ("context-length", openai.BadRequestError),
    ],
)
async def test_quota_and_request_errors_never_fail_over(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    scenario: str,
    error: type[Exception],
) -> None:
    sidecar = await make_sidecar(fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        with pytest.raises(error):
            await sdk.chat.completions.create(**chat(f"fake-{scenario}"))
    assert len(upstream.requests) == 1 and backend_b.requests == []


async def test_a_stream_fails_over_before_its_first_byte_never_after(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
) -> None:
    sidecar = await make_sidecar(fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        stream = await sdk.chat.completions.create(**chat("fake-server-error"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text and len(backend_b.requests) == 1

        # Broken after two chunks: the app sees the break; B is never asked.
        stream = await sdk.chat.completions.create(**chat("fake-reset-mid-stream"), stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert len(backend_b.requests) == 1
    assert [r.model for r in upstream.requests] == ["fake-server-error", "fake-reset-mid-stream"]


async def test_an_unreachable_primary_is_skipped_until_it_recovers(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    metrics: InMemoryMetricReader,
) -> None:
    clock = ManualClock(auto_advance=True)
    breaker = {"failureThreshold": 2, "openDuration": "30s"}
    b = {**fallback(backend_b, b_key), "rateLimits": {"requestsPerMinute": 4}}
    sidecar = await make_sidecar(clock=clock, circuitBreaker=breaker, fallbacks=[b])
    port = int(upstream.url.rsplit(":", 1)[1])
    await upstream.stop()  # A goes down: connections are refused
    async with client(sidecar) as sdk:
        for _ in range(4):
            answer = await sdk.chat.completions.create(**chat("gpt-4o-mini"))
            assert answer.choices[0].message.content
        # Two refusals opened A's breaker; since then B alone was asked.
        assert len(backend_b.requests) == 4
        assert sidecar.runner.circuits.snapshot()["host"]["state"] == "open"
        [shown] = status_document(sidecar)["fallbacks"]
        assert (shown["name"], shown["credential"]["fingerprint"]) == ("b", fingerprint(B_KEY))
        assert shown["circuit"]["host"]["state"] == "closed"
        gauges = points(metrics)["openai_runtime.circuit.state"]
        hosts = {p.attributes["backend"]: p.attributes["state"] for p in gauges}
        assert hosts == {"primary": "open", "b": "closed"}  # every backend's breaker
        limits = points(metrics)["openai_runtime.ratelimit.local.available"]
        assert {p.attributes["backend"] for p in limits} == {"primary", "b"}
        # B's own limits (its account's): 4 calls a minute, 4 already spent.
        assert shown["rateLimits"]["requests_available"] < 1
        assert status_document(sidecar)["rateLimits"]["requests_available"] > 400

        # A is back; once its breaker lets a probe through, traffic returns to it.
        await upstream.start(port=port)
        clock.advance(30)
        answer = await sdk.chat.completions.create(**chat("gpt-4o-mini"))
        assert answer.choices[0].message.content
        assert len(upstream.requests) == 1 and len(backend_b.requests) == 4
        await sdk.chat.completions.create(**chat("gpt-4o-mini"))
        assert len(upstream.requests) == 2


async def test_a_primary_that_hangs_on_connect_fails_over(
    make_sidecar: SidecarFactory, backend_b: FakeUpstream, b_key: SecretVolume
) -> None:
    with unaccepting_port() as port:
        sidecar = await make_sidecar(
            variant={"direct": {"endpoint": f"http://127.0.0.1:{port}/v1"}},
            timeouts={"connect": "1s"},  # long enough that B, on loopback, always connects
            fallbacks=[fallback(backend_b, b_key)],
        )
        async with client(sidecar) as sdk:
            answer = await sdk.chat.completions.create(**chat("gpt-4o-mini"))
    assert answer.choices[0].message.content and len(backend_b.requests) == 1


async def test_embeddings_fail_over_and_the_fallback_key_rotates(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="openai_runtime.sidecar")
    sidecar = await make_sidecar(fallbacks=[fallback(backend_b, b_key)])
    port = int(upstream.url.rsplit(":", 1)[1])
    await upstream.stop()
    async with client(sidecar) as sdk:
        vectors = await sdk.embeddings.create(model="text-embedding-3-small", input="hi")
        assert vectors.data and len(backend_b.requests) == 1
        # B's Secret rotates: the fallback's key follows without a restart.
        new_key = "sk-backend-b-rotated-111111111"
        backend_b.set_keys({new_key})
        b_key.write(new_key)
        [store] = [b.credentials for b in sidecar.runner.backends if b.name == "b"]
        await eventually(
            lambda: store.current is not None and store.current.fingerprint == fingerprint(new_key),
            "the fallback's key file followed",
        )
        await sdk.embeddings.create(model="text-embedding-3-small", input="hi")
        assert backend_b.requests[-1].key_fingerprint == fingerprint(new_key)
    await upstream.start(port=port)
    # Counted and logged as the primary's are, by backend, by fingerprint only.
    text = await scrape(sidecar)
    reloads = "openai_runtime_credential_reloads_total"
    assert metric(text, reloads, backend="b", result="loaded") == 1
    assert metric(text, reloads, backend="b", result="rotated") == 1
    assert metric(text, reloads, backend="primary", result="rotated") == 0
    [rotated] = [r for r in caplog.records if r.getMessage() == "API key rotated"]
    fields = rotated.fields  # type: ignore[attr-defined]
    assert fields == {"backend": "b", "from": fingerprint(B_KEY), "to": fingerprint(new_key)}
    assert new_key not in caplog.text and B_KEY not in caplog.text


@pytest.mark.parametrize(
    ("stream", "timeouts"),
    [
        (True, {"firstByte": "300ms"}),
        # A completion's headers come with its last token: only an attempt bound helps.
        (False, {"attempt": "300ms"}),
    ],
    ids=["stream", "completion"],
)
async def test_a_primary_that_hangs_fails_over_after_its_bound(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    stream: bool,
    timeouts: dict[str, str],
) -> None:
    sidecar = await make_sidecar(timeouts=timeouts, fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            **chat("fake-hang"), stream=stream
        )
        answer = raw.parse()
        if isinstance(answer, openai.AsyncStream):
            text = "".join([c.choices[0].delta.content or "" async for c in answer if c.choices])
        else:
            text = answer.choices[0].message.content or ""
    assert text and raw.headers["x-openai-runtime-attempts"] == "2"
    assert [r.model for r in upstream.requests] == ["fake-hang"]
    assert [r.model for r in backend_b.requests] == ["gpt-4o-mini"]


@pytest.mark.parametrize(
    ("model", "headers", "pause"),
    [
        # A answers, and its headers say its account has no tokens left for a minute.
        ("gpt-4o-mini", {"x-fake-remaining-tokens": "0"}, 60),
        # A answers 429 with a retry-after of 20 s; B serves that call.
        ("fake-rate-limit", {"x-fake-retry-after": "20"}, 20),
    ],
    ids=["spent-account", "retry-after"],
)
async def test_a_backend_that_asks_for_a_pause_gets_no_calls_until_it_ends(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    model: str,
    headers: dict[str, str],
    pause: float,
) -> None:
    clock = ManualClock(auto_advance=True)
    sidecar = await make_sidecar(clock=clock, fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        await sdk.chat.completions.create(**chat(model), extra_headers=headers)
        served = len(backend_b.requests)
        for _ in range(2):
            raw = await sdk.chat.completions.with_raw_response.create(**chat("gpt-4o-mini"))
            assert raw.headers["x-openai-runtime-attempts"] == "1"
        # Straight to B: no wait for A's pause, nothing asked of A meanwhile.
        assert len(upstream.requests) == 1 and len(backend_b.requests) == served + 2
        assert clock.sleeps == []
        document = status_document(sidecar)
        assert document["backends"] == {"primary": "paused", "b": "closed"}
        [b] = document["fallbacks"]
        assert b["rateLimits"]["provider_remaining_tokens"] > 0  # B learned from its own

        clock.advance(pause + 1)  # the pause is over: calls start at A again
        await sdk.chat.completions.create(**chat("gpt-4o-mini"))
    assert len(upstream.requests) == 2 and len(backend_b.requests) == served + 2


async def test_weights_choose_where_calls_start_and_failover_wraps_round(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    metrics: InMemoryMetricReader,
) -> None:
    # All the weight on B: A becomes B's standby.
    b = {**fallback(backend_b, b_key), "weight": 1}
    sidecar = await make_sidecar(name="a", weight=0, fallbacks=[b])
    async with client(sidecar) as sdk:
        for _ in range(3):
            await sdk.chat.completions.create(**chat("gpt-4o-mini"))
        assert len(backend_b.requests) == 3 and upstream.requests == []
        await backend_b.stop()  # B is down: calls go round to A, with no app-visible error
        raw = await sdk.chat.completions.with_raw_response.create(**chat("gpt-4o-mini"))
        assert raw.parse().choices[0].message.content
    assert len(upstream.requests) == 1 and raw.headers["x-openai-runtime-attempts"] == "2"
    served = {p.attributes["backend"] for p in points(metrics)["openai_runtime.requests"]}
    assert served == {"a", "b"}  # the primary's own name, not "primary"
    assert set(status_document(sidecar)["backends"]) == {"a", "b"}


async def test_the_first_backend_maps_models_like_any_other(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    # spec.backends gives the first backend a model map too: the app's name, its model.
    sidecar = await make_sidecar(
        upstreamModels={"house-chat": "gpt-4o-mini", "house-embed": "text-embedding-3-small"}
    )
    async with client(sidecar) as sdk:
        answer = await sdk.chat.completions.create(**chat("house-chat"))
        stream = await sdk.chat.completions.create(**chat("house-chat"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        vectors = await sdk.embeddings.create(model="house-embed", input="hi")
    assert answer.choices[0].message.content and text and vectors.data
    assert [r.model for r in upstream.requests] == [
        "gpt-4o-mini",
        "gpt-4o-mini",
        "text-embedding-3-small",
    ]


async def test_a_fallback_without_its_key_is_skipped_and_reported(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The optional volume of a Secret that does not exist (yet): an empty directory.
    missing = SecretVolume(tmp_path / "secret-missing")
    caplog.set_level(logging.INFO, logger="openai_runtime.sidecar")
    sidecar = await make_sidecar(fallbacks=[fallback(backend_b, missing)])
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.fields["backend"] == "b"  # type: ignore[attr-defined]
    await upstream.stop()
    async with client(sidecar) as sdk:
        with pytest.raises(openai.InternalServerError, match="connecting upstream failed"):
            await sdk.chat.completions.create(**chat("gpt-4o-mini"))
        assert backend_b.requests == []  # never called without a key
        assert status_document(sidecar)["backends"]["b"] == "no_key"
        missing.write(B_KEY)  # the Secret appears: kubelet fills the volume
        await eventually(lambda: status_document(sidecar)["backends"]["b"] == "closed", "key")
        answer = await sdk.chat.completions.create(**chat("gpt-4o-mini"))
    assert answer.choices[0].message.content and len(backend_b.requests) == 1


async def test_a_primary_without_its_key_fails_over_to_a_fallback_that_has_one(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    backend_b: FakeUpstream,
    b_key: SecretVolume,
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "no-such-secret" / "api-key")
    sidecar = await make_sidecar(apiKey={"file": missing}, fallbacks=[fallback(backend_b, b_key)])
    async with client(sidecar) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(**chat("gpt-4o-mini"))
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-openai-runtime-attempts"] == "1"
    assert upstream.requests == [] and len(backend_b.requests) == 1
    assert status_document(sidecar)["backends"]["primary"] == "no_key"


async def test_without_any_key_the_error_says_which_is_missing(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-secret" / "api-key")
    sidecar = await make_sidecar(apiKey={"file": missing})
    async with client(sidecar) as sdk:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.chat.completions.create(**chat("gpt-4o-mini"))
    assert info.value.status_code == 503 and "no API key loaded from" in info.value.message
    assert info.value.code == "credential_unavailable"
