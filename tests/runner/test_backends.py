"""Tests for where a call goes among backends (openai_runtime_sidecar.runner.backends)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from openai_runtime_sidecar.runner.backends import Backend, Weights, admitting
from openai_runtime_sidecar.runner.breaker import CircuitBreakers
from openai_runtime_sidecar.runner.clock import ManualClock
from openai_runtime_sidecar.runner.config import (
    CircuitBreakerSettings,
    DirectVariant,
    OpenAiConfig,
    RateLimitSettings,
    SecretRef,
)
from openai_runtime_sidecar.runner.credentials import CredentialStore
from openai_runtime_sidecar.runner.errors import CircuitOpen, UpstreamUnavailable
from openai_runtime_sidecar.runner.pricing import PricingTable
from openai_runtime_sidecar.runner.ratelimit import RateLimiter
from openai_runtime_sidecar.runner.validating import ValidationError


def backends(tmp_path: Path, names: str, clock: ManualClock) -> tuple[Backend, ...]:
    built = []
    for index, name in enumerate(names):
        key = tmp_path / name
        key.write_text(f"sk-{name}-000000000000")
        store = CredentialStore(SecretRef(file=str(key)))
        store.reload()
        breakers = CircuitBreakers(CircuitBreakerSettings(failure_threshold=1), clock)
        limiter = RateLimiter(RateLimitSettings(max_concurrency=1), clock)
        backend = Backend(name, DirectVariant(), store, breakers, limiter, PricingTable.published())
        backend.primary = index == 0
        built.append(backend)
    return tuple(built)


def starts(weights: list[int], draws: int = 1000) -> Counter[int]:
    """Where ``draws`` calls start, for draws spread evenly over [0, 1)."""
    even = (i / draws for i in range(draws))
    split = Weights(weights, lambda: next(even))
    pool = tuple(range(len(weights)))
    return Counter(split.order(pool)[0] for _ in range(draws))  # type: ignore[arg-type]


def test_without_weights_every_call_starts_at_the_first() -> None:
    assert starts([1, 0, 0]) == {0: 1000}
    assert not Weights([1, 0], lambda: pytest.fail("no draw without a split")).split


def test_weights_split_first_attempts_in_proportion() -> None:
    assert starts([3, 1]) == {0: 750, 1: 250}
    assert starts([1, 0, 1]) == {0: 500, 2: 500}  # weight 0: a standby, never a start
    assert starts([0, 2, 2]) == {1: 500, 2: 500}


def test_a_call_goes_on_in_list_order_from_where_it_starts() -> None:
    draws = itertools.cycle([0.9])
    split = Weights([1, 1, 0], lambda: next(draws))
    assert split.order(("a", "b", "c")) == ("b", "c", "a")  # type: ignore[arg-type]
    # A narrower pool (uploads stay on the primary) is never rotated.
    assert split.order(("a",)) == ("a",)  # type: ignore[arg-type]


def test_config_weights_default_to_the_primary_alone() -> None:
    key = SecretRef(file="/k")
    fallback = {"name": "b", "variant": {"direct": {}}, "apiKey": {"file": "/b"}}
    config = OpenAiConfig.defaults_for_openai(key, fallbacks=[fallback])
    assert config.weights() == [1, 0]
    config = OpenAiConfig.defaults_for_openai(key, fallbacks=[{**fallback, "weight": 3}])
    assert config.weights() == [1, 3]
    with pytest.raises(ValidationError, match="at least one backend needs a weight"):
        OpenAiConfig.defaults_for_openai(key, weight=0, fallbacks=[fallback])
    with pytest.raises(ValidationError, match="backend names must be unique"):
        OpenAiConfig.defaults_for_openai(key, name="b", fallbacks=[fallback])


def test_admission_skips_a_backend_whose_breaker_or_limiter_refuses(tmp_path: Path) -> None:
    clock = ManualClock()
    a, b, c = pool = backends(tmp_path, "abc", clock)
    permit = a.limiter.try_acquire(1)
    assert permit is not None

    def scope(_: Backend) -> str:
        return "m"

    index, chosen, circuits = admitting(pool, 0, scope, permit)  # type: ignore[misc]
    assert chosen is a and index == 0
    circuits.failure(UpstreamUnavailable("down", status=503))  # a's breaker opens
    busy = b.limiter.try_acquire(1)  # b has no room now
    index, chosen, circuits = admitting(pool, 0, scope, permit)  # type: ignore[misc]
    assert chosen is c and permit.held_by(c.limiter)
    assert a.limiter.snapshot()["in_flight"] == 0
    assert busy is not None
    circuits.release()
    # Nowhere to go: the first refusal (a's open circuit), and the slot stays put.
    c_busy = CircuitBreakers(CircuitBreakerSettings(failure_threshold=1), clock)
    c.circuits = c_busy
    c_busy.acquire("m").failure(UpstreamUnavailable("down", status=503))
    refused = admitting(pool, 0, scope, permit)
    assert isinstance(refused, CircuitOpen)
    assert permit.held_by(c.limiter)
