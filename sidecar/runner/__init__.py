"""The OpenAI / Azure OpenAI runner: a library, no server code.

Layers, innermost first: pure policies with an injected clock (``sse``,
``retrying``, ``breaker``, ``ratelimit``, ``budgets``, ``pricing``, ``tokens``), the error
tree (``errors``), the one I/O seam (``transport``), and the orchestration of
a call (``runner``, ``streaming``). The sidecar server holds one
:class:`OpenAiRunner` per configured runtime.

The package exports the runner's public API: :class:`OpenAiRunner` and its
configuration models, results, error tree, pricing table, credential store,
clocks and transport. The building blocks behind them (SSE decoding, retry
policy, circuit breakers, rate limiter, durations, credential snapshots and
fingerprints) are imported from their own modules.
"""

from .clock import Clock, ManualClock, SystemClock
from .config import (
    AzureVariant,
    BudgetSettings,
    CircuitBreakerSettings,
    DirectVariant,
    OpenAiConfig,
    RateLimitSettings,
    RetrySettings,
    SecretRef,
    TimeoutSettings,
    Variant,
)
from .credentials import CredentialStore
from .errors import (
    AuthenticationFailed,
    BudgetExceeded,
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
from .pricing import Cost, PricingTable
from .results import CallOutcome, ChatResult, Usage
from .runner import AttemptObserver, ChatStream, OpenAiRunner
from .transport import Transport

__all__ = [
    "AttemptObserver",
    "AuthenticationFailed",
    "AzureVariant",
    "BudgetExceeded",
    "BudgetSettings",
    "CallOutcome",
    "ChatResult",
    "ChatStream",
    "CircuitBreakerSettings",
    "CircuitOpen",
    "Clock",
    "ContentFiltered",
    "ContextLengthExceeded",
    "Cost",
    "CredentialStore",
    "CredentialUnavailable",
    "DirectVariant",
    "InvalidRequest",
    "LocalRateLimited",
    "ManualClock",
    "OpenAiConfig",
    "OpenAiRunner",
    "PricingTable",
    "QuotaExhausted",
    "RateLimitSettings",
    "RateLimited",
    "RetrySettings",
    "RunnerError",
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
]
