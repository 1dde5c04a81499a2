"""What the provider says in its response headers.

``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) tell how long
to wait; ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` (Go-style
durations such as ``6m0s`` or ``12ms``) tell how much of the organisation's
budget is left, which lets several pods sharing one key back off before
upstream answers 429. Pure functions of a header mapping: no I/O.
"""

from __future__ import annotations

import email.utils
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from .durations import parse_duration

__all__ = ["RateLimitHeaders", "parse_rate_limit_headers", "parse_retry_after"]


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not isinstance(headers, CIMultiDict | CIMultiDictProxy):
        # A plain dict is case-sensitive: look the name up as written anywhere.
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the provider asks us to wait, or ``None`` when it does not say.

    ``retry-after-ms`` wins over ``retry-after`` because it is more precise;
    ``retry-after`` may be seconds or an HTTP date relative to ``now`` (wall
    clock, epoch seconds). Garbage and negative values count as not said.
    """
    raw_ms = _get(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = _get(headers, "retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The provider's view of the organisation's remaining budget."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    """Seconds until the request budget is full again."""
    reset_tokens: float | None = None
    """Seconds until the token budget is full again."""

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)

    def as_dict(self) -> dict[str, float | int]:
        return {f: v for f in self.__slots__ if (v := getattr(self, f)) is not None}


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = _get(headers, name)
    if raw is None:
        return None
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        return None
    return value if value >= 0 else None


def _reset(headers: Mapping[str, str], name: str) -> float | None:
    raw = _get(headers, name)
    return None if raw is None else _reset_seconds(raw)


# Every answer carries two resets, and they take few values ("6ms", "1s"...):
# parsed once each, not twice per call.
@functools.lru_cache(maxsize=256)
def _reset_seconds(raw: str) -> float | None:
    try:
        return parse_duration(raw)
    except ValueError:
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read the ``x-ratelimit-*`` family; absent or malformed values are ``None``."""
    return RateLimitHeaders(
        limit_requests=_int(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int(headers, "x-ratelimit-remaining-tokens"),
        reset_requests=_reset(headers, "x-ratelimit-reset-requests"),
        reset_tokens=_reset(headers, "x-ratelimit-reset-tokens"),
    )
