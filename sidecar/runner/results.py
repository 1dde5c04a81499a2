"""What a call produced besides the completion itself.

:class:`CallInfo` is filled in as a call proceeds (attempts, first byte,
usage, cost) and is what the sidecar turns into response headers, metrics,
spans and the one log line per request. It holds no prompt or completion
text: only counts, names and ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RunnerError
from .headers import RateLimitHeaders
from .pricing import Cost

__all__ = ["CallInfo", "ChatResult", "Usage"]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them (or as estimated, see CallInfo)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_payload(cls, usage: Any) -> Usage | None:
        """Read a ``usage`` object leniently: wrong types count as zero, not as a crash.

        Chat's and embeddings' names (``prompt_tokens``...) and the Responses
        API's (``input_tokens``...) are both understood.
        """
        if not isinstance(usage, dict):
            return None
        if "prompt_tokens" not in usage and "input_tokens" in usage:
            # The Responses API's names for the same counts.
            usage = {
                "prompt_tokens": usage.get("input_tokens"),
                "completion_tokens": usage.get("output_tokens"),
                "total_tokens": usage.get("total_tokens"),
                "prompt_tokens_details": usage.get("input_tokens_details"),
                "completion_tokens_details": usage.get("output_tokens_details"),
            }
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=_count(usage.get("total_tokens")) or prompt + completion,
            cached_tokens=_count(
                prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0
            ),
            reasoning_tokens=_count(
                completion_details.get("reasoning_tokens")
                if isinstance(completion_details, dict)
                else 0
            ),
        )


@dataclass(slots=True)
class CallInfo:
    """Everything known about one call, for headers, metrics, spans and logs."""

    stream: bool
    variant: str
    server_address: str
    request_model: str | None
    usage_requested: bool = False
    """Streams: whether the caller itself asked for the usage chunk."""
    response_model: str | None = None
    response_id: str | None = None
    request_id: str | None = None
    status: int | None = None
    usage: Usage | None = None
    usage_estimated: bool = False
    """True when usage was estimated because the stream ended before upstream sent it."""
    finish_reasons: list[str] = field(default_factory=list)
    processing_ms: float | None = None
    rate_limits: RateLimitHeaders = field(default_factory=RateLimitHeaders)
    attempts: int = 0
    credential_fingerprint: str | None = None
    started_at: float = 0.0
    time_to_first_byte: float | None = None
    """Seconds from the call's start until upstream's first body bytes (streams)."""
    duration: float | None = None
    cost: Cost | None = None
    error: RunnerError | None = None

    @property
    def content_filtered(self) -> bool:
        """A 200 whose output was cut by the provider's content filter."""
        return "content_filter" in self.finish_reasons

    @property
    def outcome(self) -> str:
        """``ok`` or the error class name, for metrics."""
        return "ok" if self.error is None else self.error.kind


@dataclass(slots=True)
class ChatResult:
    """A finished non-streaming call: upstream's bytes, parsed, and what they cost."""

    status: int
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    info: CallInfo
