"""What a call produced besides the completion itself.

:class:`CallOutcome` is what a call came to (attempts, first byte, usage,
cost, the error if any), built once when the call ended, from the runner's
:class:`CallLedger` and what the code reading the answer saw; the sidecar
turns it into response headers, metrics, spans and the one log line per
request. Neither holds prompt or completion text: only counts, names and ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from multidict import CIMultiDict

from .errors import RunnerError
from .headers import RateLimitHeaders
from .pricing import Cost

__all__ = ["Answered", "CallLedger", "CallOutcome", "ChatResult", "Usage"]


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


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call came to, for headers, metrics, spans and logs; built once, when it ended."""

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
    finish_reasons: tuple[str, ...] = ()
    processing_ms: float | None = None
    rate_limits: RateLimitHeaders = field(default_factory=RateLimitHeaders)
    attempts: int = 0
    credential_fingerprint: str | None = None
    backend: str = "primary"
    """Which backend answered (or was asked last), by its name."""
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


@dataclass(frozen=True, slots=True)
class Answered:
    """What the code reading an answer saw of it, handed to the runner at the end."""

    model: str | None = None
    id: str | None = None
    finish_reasons: tuple[str, ...] = ()


@dataclass(slots=True)
class CallLedger:
    """A call in progress, as the runner keeps it; only the runner writes it.

    What the answer says (model, id, finish reasons, usage) is read by the
    code that reads the answer and handed over when the call ends;
    :meth:`conclude` then builds the :class:`CallOutcome`, once.
    """

    stream: bool
    variant: str
    server_address: str
    request_model: str | None
    started_at: float
    usage_requested: bool = False
    response_model: str | None = None
    response_id: str | None = None
    request_id: str | None = None
    status: int | None = None
    usage: Usage | None = None
    usage_estimated: bool = False
    finish_reasons: tuple[str, ...] = ()
    processing_ms: float | None = None
    rate_limits: RateLimitHeaders = field(default_factory=RateLimitHeaders)
    attempts: int = 0
    credential_fingerprint: str | None = None
    backend: str = "primary"
    time_to_first_byte: float | None = None
    cost: Cost | None = None

    def conclude(self, *, now: float, error: RunnerError | None = None) -> CallOutcome:
        """The call's outcome as of ``now`` (the runner's monotonic clock).

        Every field of the ledger is one of the outcome's, so they are copied
        by name: a field added to both cannot be forgotten here.
        """
        kept = dict(zip(_LEDGER_FIELDS, _read_ledger(self), strict=True))
        return CallOutcome(**kept, duration=now - self.started_at, error=error)


@dataclass(slots=True)
class ChatResult:
    """A finished non-streaming call: upstream's bytes, parsed, and what they cost."""

    status: int
    headers: CIMultiDict[str]
    """Upstream's response headers, looked up case-insensitively."""
    body: bytes
    payload: dict[str, Any]
    outcome: CallOutcome


_LEDGER_FIELDS = tuple(f.name for f in fields(CallLedger))
_read_ledger = attrgetter(*_LEDGER_FIELDS)  # every field in one C call, once per call
