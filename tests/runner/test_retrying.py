"""Tests for the retry policy (openai_runtime_sidecar.runner.retrying)."""

from __future__ import annotations

import random

import pytest

from openai_runtime_sidecar.runner.config import RetrySettings
from openai_runtime_sidecar.runner.errors import (
    AuthenticationFailed,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    CredentialUnavailable,
    InvalidRequest,
    LocalRateLimited,
    QuotaExhausted,
    RateLimited,
    RunnerError,
    TransportError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openai_runtime_sidecar.runner.retrying import RetryDecision, RetryPolicy


def policy(seed: int = 7, **settings: float) -> RetryPolicy:
    return RetryPolicy(RetrySettings(**settings), rng=random.Random(seed))


def upstream(
    cls: type[UpstreamError] = UpstreamUnavailable,
    *,
    status: int = 503,
    headers: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    return cls("upstream failed", status=status, headers=headers, retry_after=retry_after)


EXPECTED_BASES = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_without_jitter_doubles_to_the_cap() -> None:
    p = policy(jitter=0)
    assert [p.backoff(n) for n in range(1, 8)] == EXPECTED_BASES


def test_backoff_attempt_zero_is_the_initial_backoff() -> None:
    assert policy(jitter=0).backoff(0) == 0.5


@pytest.mark.parametrize("seed", range(20))
def test_backoff_jitter_bounds(seed: int) -> None:
    p = policy(seed)
    jitter = p.settings.jitter
    assert jitter == 0.25
    for attempt, base in enumerate(EXPECTED_BASES, start=1):
        delay = p.backoff(attempt)
        assert base * (1 - jitter) <= delay <= base


def test_backoff_is_deterministic_for_a_seed() -> None:
    first = [policy(42).backoff(n) for n in range(1, 6)]
    second = [policy(42).backoff(n) for n in range(1, 6)]
    assert first == second
    a, b = policy(1), policy(2)
    assert [a.backoff(n) for n in range(1, 6)] != [b.backoff(n) for n in range(1, 6)]


def test_backoff_uses_the_settings() -> None:
    p = policy(jitter=0, initial_backoff=0.1, max_backoff=0.3)
    assert [p.backoff(n) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_full_jitter_stays_above_zero_and_below_base() -> None:
    p = policy(3, jitter=1)
    for _ in range(100):
        assert 0 <= p.backoff(3) <= 2.0


@pytest.mark.parametrize(
    "error",
    [
        upstream(InvalidRequest, status=400),
        upstream(ContextLengthExceeded, status=400),
        upstream(ContentFiltered, status=400),
        upstream(AuthenticationFailed, status=401),
        upstream(QuotaExhausted, status=429),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("should_retry", [None, "true", "TRUE"])
def test_permanent_errors_are_never_retried(error: UpstreamError, should_retry: str | None) -> None:
    if should_retry is not None:
        error.headers["x-should-retry"] = should_retry
    decision = policy().decide(error, 1)
    assert decision == RetryDecision(False, reason="permanent")


@pytest.mark.parametrize("value", ["false", "False", " false "])
def test_should_retry_false_vetoes(value: str) -> None:
    error = upstream(headers={"X-Should-Retry": value})
    decision = policy().decide(error, 1)
    assert not decision.retry
    assert "x-should-retry" in decision.reason


def test_should_retry_true_makes_a_plain_upstream_error_retryable() -> None:
    plain = UpstreamError("odd", status=418)
    assert not plain.retryable
    assert policy().decide(plain, 1) == RetryDecision(False, reason="not retryable")
    plain.headers["x-should-retry"] = "true"
    decision = policy(jitter=0).decide(plain, 1)
    assert decision == RetryDecision(True, delay=0.5, reason="backoff")


def test_should_retry_true_does_not_lift_the_attempt_limit() -> None:
    error = upstream(headers={"x-should-retry": "true"})
    assert policy().decide(error, 3) == RetryDecision(False, reason="attempts exhausted")


@pytest.mark.parametrize(
    "error",
    [
        upstream(UpstreamUnavailable),
        upstream(RateLimited, status=429),
        UpstreamTimeout("slow", phase="connect"),
        TransportError("reset"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retryable_errors_back_off_until_attempts_run_out(error: RunnerError) -> None:
    p = policy(jitter=0, max_attempts=3)
    assert p.decide(error, 1) == RetryDecision(True, delay=0.5, reason="backoff")
    assert p.decide(error, 2) == RetryDecision(True, delay=1.0, reason="backoff")
    assert p.decide(error, 3) == RetryDecision(False, reason="attempts exhausted")
    assert p.decide(error, 4).retry is False


def test_single_attempt_never_retries() -> None:
    assert policy(max_attempts=1).decide(upstream(), 1).reason == "attempts exhausted"


def test_provider_retry_after_is_the_delay() -> None:
    error = upstream(RateLimited, status=429, retry_after=7.0)
    assert policy().decide(error, 1) == RetryDecision(
        True, delay=7.0, reason="provider retry-after"
    )


def test_zero_retry_after_retries_immediately() -> None:
    error = upstream(RateLimited, status=429, retry_after=0.0)
    assert policy().decide(error, 1) == RetryDecision(
        True, delay=0.0, reason="provider retry-after"
    )


def test_retry_after_at_the_limit_is_honoured() -> None:
    error = upstream(RateLimited, status=429, retry_after=120.0)
    assert policy().decide(error, 1).retry is True


def test_retry_after_beyond_the_limit_is_surfaced_with_its_delay() -> None:
    error = upstream(RateLimited, status=429, retry_after=300.0)
    decision = policy(max_retry_after=60).decide(error, 1)
    assert decision == RetryDecision(
        False, delay=300.0, reason="retry-after beyond max_retry_after"
    )


def test_exhausted_attempts_win_over_retry_after() -> None:
    error = upstream(RateLimited, status=429, retry_after=1.0)
    assert policy(max_attempts=2).decide(error, 2).reason == "attempts exhausted"


@pytest.mark.parametrize(
    "error",
    [
        CircuitOpen("open", retry_after=5.0),
        LocalRateLimited("queue", retry_after=0.5, limit="requests"),
        CredentialUnavailable("no key"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_local_errors_are_not_retried(error: RunnerError) -> None:
    assert policy().decide(error, 1) == RetryDecision(False, reason="not retryable")


def test_decide_does_not_consume_randomness_for_non_retries() -> None:
    rng = random.Random(5)
    p = RetryPolicy(RetrySettings(), rng=rng)
    p.decide(upstream(InvalidRequest, status=400), 1)
    p.decide(upstream(RateLimited, status=429, retry_after=2.0), 1)
    assert rng.random() == random.Random(5).random()


def test_default_rng_is_created() -> None:
    p = RetryPolicy(RetrySettings())
    assert 0.375 <= p.backoff(1) <= 0.5
