"""The runner's exception tree and the classification of upstream failures.

::

    RunnerError                     anything the runner raises on purpose
    ├── UpstreamError               upstream answered with an error (status, body, headers kept)
    │   ├── InvalidRequest          400/404/422...: the request itself is wrong   [permanent]
    │   │   ├── ContextLengthExceeded   code context_length_exceeded              [permanent]
    │   │   └── ContentFiltered     Azure content_filter (either spelling)         [permanent]
    │   ├── AuthenticationFailed    401/403                                       [permanent*]
    │   ├── QuotaExhausted          429 insufficient_quota: billing, not pacing   [permanent]
    │   ├── RateLimited             other 429, with the provider's retry-after     [retryable]
    │   └── UpstreamUnavailable     5xx, 408, 409, overloaded, in-band errors     [retryable]
    ├── UpstreamTimeout             connect / first byte / stream idle / total     [retryable]
    ├── TransportError              refused, reset, truncated or garbled responses [retryable]
    ├── CircuitOpen                 the breaker is open; retry_after says for how long
    ├── LocalRateLimited            our own limiter gave up waiting; retry_after too
    ├── BudgetExceeded              the runtime's spend budget is used up; retry_after too
    └── CredentialUnavailable       no API key could be loaded (missing, empty, unreadable)

    * a 401 makes the runner re-read the credential once; see ``runner.py``.

Every error knows the HTTP status and OpenAI-shaped body a proxy should send
(:meth:`RunnerError.http_status`, :meth:`RunnerError.openai_body`): upstream
errors replay exactly what upstream said (an error upstream sent with a 2xx,
in-band, gets the status of its class instead), local ones use the same shape
with a distinct ``code``. Foreign exceptions (aiohttp, asyncio) are translated into
this tree in exactly one place, the transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from multidict import CIMultiDict

from . import jsoncodec
from .headers import parse_retry_after

if TYPE_CHECKING:
    from .results import CallOutcome

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "CircuitOpen",
    "ContentFiltered",
    "ContextLengthExceeded",
    "CredentialUnavailable",
    "InvalidRequest",
    "LocalRateLimited",
    "QuotaExhausted",
    "RateLimited",
    "RunnerError",
    "TransportError",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "classify_error_payload",
    "classify_response",
    "error_body",
]


def error_body(
    message: str,
    *,
    error_type: str | None,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``.

    All four keys are always present, in that order, ``null`` when unset.
    """
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class RunnerError(Exception):
    """Base of everything the runner raises on purpose."""

    retryable: ClassVar[bool] = False
    """Whether another attempt may succeed (the retry policy still decides)."""
    health_failure: ClassVar[bool] = False
    """Whether the failure says upstream is unhealthy (counts for the circuit breaker)."""
    status: int = 500
    code: str = "runner_error"
    error_type: str = "api_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = 1
        """Upstream attempts made before this error was final (set by the runner)."""
        self.outcome: CallOutcome | None = None
        """What the call came to (set once by the runner, when the call ended with this error)."""

    @property
    def kind(self) -> str:
        """A stable label for metrics and spans (the class name)."""
        return type(self).__name__

    @property
    def retry_after(self) -> float | None:
        """Seconds the caller should wait before trying again, when known."""
        return None

    @property
    def never_sent(self) -> bool:
        """No connection to upstream was made: it cannot have seen the request.

        Such a failure is the host's (DNS, refused, connect timeout), not a
        model's, and even a call that creates something may be repeated.
        """
        return False

    def http_status(self) -> int:
        return self.status

    def openai_body(self) -> dict[str, Any]:
        """The body a proxy answers with, in the OpenAI error shape."""
        return error_body(self.message, error_type=self.error_type, code=self.code)

    def response_headers(self) -> dict[str, str]:
        """Headers a proxy should add when answering with this error."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, round(self.retry_after + 0.4999)))
            headers["retry-after-ms"] = str(round(self.retry_after * 1000))
        return headers


class UpstreamError(RunnerError):
    """Upstream answered with an error; its status, body and headers are kept verbatim.

    ``status`` is upstream's, 2xx included for an in-band error;
    :meth:`http_status` is what a proxy answers with (``in_band_status`` then).
    """

    in_band_status: ClassVar[int] = 502
    """Status a proxy answers with when upstream sent this error with a 2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        # Case-insensitive, as HTTP header names are: every lookup is one get().
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.payload: dict[str, Any] = dict(payload or {})
        self._retry_after = retry_after
        err = self.payload.get("error")
        err = err if isinstance(err, dict) else {}
        self.code = _text(err.get("code")) or type(self).code
        self.error_type = _text(err.get("type")) or type(self).error_type
        self.param = _text(err.get("param"))

    @property
    def retry_after(self) -> float | None:
        return self._retry_after

    def http_status(self) -> int:
        # An error upstream delivered with a 2xx (a 200 whose body is
        # {"error": ...}) must not reach the app as a success: the SDK would
        # hand it a completion without choices. Answer with what it is.
        if 200 <= self.status < 300:
            return self.in_band_status
        return self.status

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id") or self.headers.get("apim-request-id")

    def openai_body(self) -> dict[str, Any]:
        if isinstance(self.payload.get("error"), dict):
            return self.payload
        return super().openai_body()


class InvalidRequest(UpstreamError):
    code = "invalid_request_error"
    error_type = "invalid_request_error"
    in_band_status = 400


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ContentFiltered(InvalidRequest):
    code = "content_filter"


class AuthenticationFailed(UpstreamError):
    code = "invalid_api_key"
    error_type = "authentication_error"
    in_band_status = 401


class QuotaExhausted(UpstreamError):
    code = "insufficient_quota"
    error_type = "insufficient_quota"
    in_band_status = 429


class RateLimited(UpstreamError):
    retryable = True
    code = "rate_limit_exceeded"
    error_type = "requests"
    in_band_status = 429


class UpstreamUnavailable(UpstreamError):
    retryable = True
    health_failure = True
    code = "upstream_unavailable"
    error_type = "server_error"


class UpstreamTimeout(RunnerError):
    """No answer in time. ``phase`` is connect, first_byte, attempt, stream_idle or total."""

    retryable = True
    health_failure = True
    status = 504
    code = "upstream_timeout"
    error_type = "timeout"

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase

    @property
    def never_sent(self) -> bool:
        return self.phase == "connect"


class TransportError(RunnerError):
    """The connection failed or the response could not be read as HTTP/SSE.

    ``sent`` is False when the connection was never made: upstream cannot
    have seen the request, so even a call that creates something may be retried.
    """

    retryable = True
    health_failure = True
    status = 502
    code = "upstream_transport_error"
    error_type = "server_error"

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent

    @property
    def never_sent(self) -> bool:
        return not self.sent


class _RefusedLocally(RunnerError):
    """Refused here, before anything was sent, with a known time to wait."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self._retry_after = retry_after

    @property
    def retry_after(self) -> float | None:
        return self._retry_after


class CircuitOpen(_RefusedLocally):
    status = 503
    code = "circuit_open"
    error_type = "server_error"


class LocalRateLimited(_RefusedLocally):
    """Our own limiter could not admit the call within ``maxQueueWait``.

    Or never could: an estimate above ``tokensPerMinute`` is refused at once.
    The message names the budget's config field (``rateLimits.requestsPerMinute``,
    ``rateLimits.tokensPerMinute``, ``rateLimits.maxConcurrency``) or upstream's
    ``x-ratelimit-remaining-*`` header, so the operator knows what to raise.
    """

    status = 429
    code = "local_rate_limited"
    error_type = "requests"

    def __init__(self, message: str, *, retry_after: float, limit: str, fits: bool = True) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit = limit
        """Which budget ran out: requests, tokens or concurrency (local or upstream's)."""
        self.fits = fits
        """False when the call can never fit the budget: waiting cannot help it."""


class BudgetExceeded(_RefusedLocally):
    """The runtime's spend budget is used up for this period (or this pod's share of it).

    Refused before anything is sent. ``retry_after`` is the time to the next
    period (or, for a pod's share, to the operator's next look at the spend):
    the SDK is told not to retry sooner.
    """

    status = 429
    code = "budget_exceeded"
    error_type = "insufficient_quota"


class CredentialUnavailable(RunnerError):
    """No API key could be loaded; the message says where from, never what."""

    status = 503
    code = "credential_unavailable"
    error_type = "server_error"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_content_filter(err: Mapping[str, Any]) -> bool:
    if err.get("code") == "content_filter" or err.get("type") == "content_filter":
        return True
    inner = err.get("innererror")
    if isinstance(inner, dict):
        if inner.get("code") == "ResponsibleAIPolicyViolation":
            return True
        if "content_filter_result" in inner or "content_filter_results" in inner:
            return True
    return False


_OVERLOADED = {"server_is_overloaded", "engine_overloaded", "overloaded_error", "server_error"}


def classify_error_payload(
    status: int,
    payload: Mapping[str, Any] | None,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    now: float = 0.0,
) -> UpstreamError:
    """The exception for an error ``payload`` (``{"error": {...}}``) seen with ``status``.

    ``status`` may be 200 for an in-band ``data: {"error": ...}`` stream event,
    which is then classified by its code and type alone (as unavailable when
    neither says otherwise). ``now`` is wall-clock seconds for HTTP-date
    retry-after values.
    """
    headers = headers or {}
    payload = payload or {}
    raw = payload.get("error")
    err: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    code = _text(err.get("code")) or ""
    etype = _text(err.get("type")) or ""
    message = _text(err.get("message")) or f"upstream answered HTTP {status}"
    kwargs: dict[str, Any] = {
        "status": status,
        "body": body,
        "headers": headers,
        "payload": payload,
    }
    retry_after = parse_retry_after(headers, now)

    if code == "insufficient_quota" or etype == "insufficient_quota":
        return QuotaExhausted(message, **kwargs)
    if code == "context_length_exceeded" or "maximum context length" in message:
        return ContextLengthExceeded(message, **kwargs)
    if _is_content_filter(err):
        return ContentFiltered(message, **kwargs)
    if status in (401, 403) or etype == "authentication_error" or code == "invalid_api_key":
        return AuthenticationFailed(message, **kwargs)
    if status == 429 or code in ("rate_limit_exceeded", "429") or etype == "requests":
        return RateLimited(message, retry_after=retry_after, **kwargs)
    if status >= 500 or status in (408, 409) or code in _OVERLOADED or etype in _OVERLOADED:
        return UpstreamUnavailable(message, retry_after=retry_after, **kwargs)
    if 400 <= status < 500 or etype == "invalid_request_error":
        # The type alone decides for an in-band (2xx) error: OpenAI says the
        # request is wrong, so retrying it or blaming upstream's health is not.
        return InvalidRequest(message, **kwargs)
    # An in-band error with nothing recognisable: treat as a server-side failure.
    return UpstreamUnavailable(message, retry_after=retry_after, **kwargs)


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
) -> UpstreamError:
    """The exception for a non-2xx upstream response, whatever its body looks like.

    Bodies that are not OpenAI-shaped JSON (an HTML page from a gateway, plain
    text, nothing at all) are classified by status alone and keep their bytes.
    """
    payload: Any = None
    if body:
        try:
            payload = jsoncodec.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: absurdly nested JSON must not escape classification.
            payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        payload = error_body(
            f"upstream answered HTTP {status} with a non-OpenAI body", error_type="upstream_error"
        )
    return classify_error_payload(status, payload, headers=headers, body=body, now=now)
