"""The OpenAI / Azure OpenAI runner: a library, no server code.

Layers, innermost first: pure policies with an injected clock (``sse``,
``retrying``, ``breaker``, ``ratelimit``, ``pricing``, ``tokens``), the error
tree (``errors``), the one I/O seam (``transport``), and the orchestration of
a call (``runner``, ``streaming``). The sidecar server holds one
:class:`OpenAiRunner` per configured runtime.
"""

from .breaker import CircuitBreaker, CircuitBreakers, CircuitState
from .clock import Clock, ManualClock, SystemClock
from .config import (
    AzureVariant,
    CircuitBreakerSettings,
    DirectVariant,
    OpenAiConfig,
    RateLimitSettings,
    RetrySettings,
    SecretRef,
    TimeoutSettings,
    Variant,
)
from .credentials import CredentialSnapshot, CredentialStore, ReloadOutcome, fingerprint
from .durations import Duration, format_duration, parse_duration
from .errors import (
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
from .pricing import Cost, ModelPrice, PricingTable
from .ratelimit import RateLimiter
from .results import CallOutcome, ChatResult, Usage
from .retrying import RetryDecision, RetryPolicy
from .runner import AttemptObserver, ChatStream, OpenAiRunner
from .sse import SSEDecoder, SSEFrame
from .transport import Transport

__all__ = [
    "AttemptObserver",
    "AuthenticationFailed",
    "AzureVariant",
    "CallOutcome",
    "ChatResult",
    "ChatStream",
    "CircuitBreaker",
    "CircuitBreakerSettings",
    "CircuitBreakers",
    "CircuitOpen",
    "CircuitState",
    "Clock",
    "ContentFiltered",
    "ContextLengthExceeded",
    "Cost",
    "CredentialSnapshot",
    "CredentialStore",
    "CredentialUnavailable",
    "DirectVariant",
    "Duration",
    "InvalidRequest",
    "LocalRateLimited",
    "ManualClock",
    "ModelPrice",
    "OpenAiConfig",
    "OpenAiRunner",
    "PricingTable",
    "QuotaExhausted",
    "RateLimitSettings",
    "RateLimited",
    "RateLimiter",
    "ReloadOutcome",
    "RetryDecision",
    "RetryPolicy",
    "RetrySettings",
    "RunnerError",
    "SSEDecoder",
    "SSEFrame",
    "SecretRef",
    "SystemClock",
    "TimeoutSettings",
    "Transport",
    "TransportError",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
    "Variant",
    "fingerprint",
    "format_duration",
    "parse_duration",
]
