"""When to try a failed call again, and after how long.

The attempt loop in ``runner.py`` asks :meth:`RetryPolicy.decide` after each
failure. The policy is pure (the random source is injected): it only says
"retry after N seconds" or "stop". Like the official SDK it doubles a 0.5 s
backoff up to 8 s with jitter, prefers the provider's own ``retry-after-ms`` /
``retry-after``, and obeys ``x-should-retry``. A provider delay longer than
``max_retry_after`` is not waited out: the error is surfaced with its delay so
the caller can decide.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import RetrySettings
from .errors import (
    AuthenticationFailed,
    InvalidRequest,
    QuotaExhausted,
    RunnerError,
    UpstreamError,
)

__all__ = ["RetryDecision", "RetryPolicy"]

# Retrying these cannot change the answer, whatever a header says.
_PERMANENT = (InvalidRequest, AuthenticationFailed, QuotaExhausted)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0
    reason: str = ""


class RetryPolicy:
    """Decides retries for one runner; ``rng`` is injectable for deterministic jitter."""

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        s = self.settings
        base = min(s.max_backoff, s.initial_backoff * 2.0 ** max(0, attempt - 1))
        return base * (1.0 - s.jitter * self._rng.random())

    def decide(self, error: RunnerError, attempt: int) -> RetryDecision:
        """Whether to make attempt ``attempt + 1`` after ``error``, and when."""
        if isinstance(error, _PERMANENT):
            return RetryDecision(False, reason="permanent")
        should_retry = None
        if isinstance(error, UpstreamError):
            said = error.headers.get("x-should-retry")
            should_retry = said.strip().lower() if said is not None else None
        if should_retry == "false":
            return RetryDecision(False, reason="upstream said x-should-retry: false")
        if not error.retryable and should_retry != "true":
            return RetryDecision(False, reason="not retryable")
        if attempt >= self.settings.max_attempts:
            return RetryDecision(False, reason="attempts exhausted")
        wait = error.retry_after
        if wait is not None:
            if wait > self.settings.max_retry_after:
                return RetryDecision(False, delay=wait, reason="retry-after beyond max_retry_after")
            return RetryDecision(True, delay=wait, reason="provider retry-after")
        return RetryDecision(True, delay=self.backoff(attempt), reason="backoff")
