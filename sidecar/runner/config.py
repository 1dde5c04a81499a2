"""The runner's configuration: which upstream, which key, and every policy knob.

This is the innermost config contract: the sidecar's config file extends it,
and the operator renders it from an ``OpenAiRuntime`` spec. Field names are
snake_case in Python and camelCase on the wire (JSON, YAML, Kubernetes), and
every duration accepts Go-style strings (``250ms``, ``1m30s``) or seconds.
Everything except the variant and the key reference has a default.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from .durations import Duration
from .modeling import After, Before, ConfigModel, Field, Rule
from .pricing import ModelPrice

__all__ = [
    "AzureVariant",
    "BudgetSettings",
    "CircuitBreakerSettings",
    "ConfigModel",
    "DirectVariant",
    "FallbackSettings",
    "OpenAiConfig",
    "RateLimitSettings",
    "RetrySettings",
    "SecretRef",
    "TimeoutSettings",
    "Variant",
]


class SecretRef(ConfigModel):
    """Where the API key lives: exactly one of an environment variable or a file.

    A file (a mounted Secret volume) is what rotates without a restart;
    an environment variable is fixed for the life of the process.
    """

    env: str | None = Field(default=None, min_length=1, description="Environment variable name.")
    file: str | None = Field(
        default=None, min_length=1, description="Path of a file holding the key."
    )

    def __validate__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of 'env' or 'file'")

    def describe(self) -> str:
        """Where the key comes from, for logs and status (never the key)."""
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


class DirectVariant(ConfigModel):
    """api.openai.com or any OpenAI-compatible endpoint, authenticated with a Bearer token."""

    endpoint: str = Field(
        default="https://api.openai.com/v1",
        pattern=r"^https?://[^\s/]+",
        description="Base URL; /chat/completions is appended.",
    )
    organization: str | None = Field(default=None, description="Sent as OpenAI-Organization.")
    project: str | None = Field(default=None, description="Sent as OpenAI-Project.")

    def chat_completions_url(self) -> str:
        return self.endpoint.rstrip("/") + "/chat/completions"

    def auth_headers(self, key: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers

    @property
    def name(self) -> str:
        return "direct"


def _date_as_text(value: Any) -> Any:
    # YAML reads an unquoted ``apiVersion: 2024-10-21`` as a date, not a string.
    return value.isoformat() if type(value) is datetime.date else value


ApiVersion = Annotated[str, Before(_date_as_text)]


class AzureVariant(ConfigModel):
    """Azure OpenAI: one deployment of one resource, authenticated with the ``api-key`` header."""

    resource: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$",
        description="Resource name: https://{resource}.openai.azure.com.",
    )
    deployment: str = Field(min_length=1, description="Deployment name (chooses the model).")
    api_version: ApiVersion = Field(
        default="2024-10-21", min_length=1, description="api-version query."
    )
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+",
        description="Base URL instead of the resource's (private endpoints, APIM, tests).",
    )
    deployments: list[Annotated[str, Rule(min_length=1)]] = Field(
        default_factory=list,
        description=(
            "Other deployments of the resource that apps may name in Azure-style URLs "
            "(/openai/deployments/{name}/...); any other name is refused."
        ),
    )

    def allows(self, deployment: str) -> bool:
        """Whether an app may send calls to ``deployment`` (the configured one or listed)."""
        return deployment == self.deployment or deployment in self.deployments

    def __validate__(self) -> None:
        if self.resource is None and self.endpoint is None:
            raise ValueError("set 'resource' or 'endpoint'")

    def base_url(self) -> str:
        if self.endpoint is not None:
            return self.endpoint.rstrip("/")
        return f"https://{self.resource}.openai.azure.com"

    def chat_completions_url(
        self, deployment: str | None = None, api_version: str | None = None
    ) -> str:
        return (
            f"{self.base_url()}/openai/deployments/{quote(deployment or self.deployment, safe='')}"
            f"/chat/completions?api-version={quote(api_version or self.api_version, safe='')}"
        )

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    @property
    def name(self) -> str:
        return "azure"


class Variant(ConfigModel):
    """Exactly one of ``direct`` or ``azure``."""

    direct: DirectVariant | None = None
    azure: AzureVariant | None = None

    def __validate__(self) -> None:
        if (self.direct is None) == (self.azure is None):
            raise ValueError("set exactly one of 'direct' or 'azure'")

    @property
    def selected(self) -> DirectVariant | AzureVariant:
        chosen = self.direct if self.direct is not None else self.azure
        assert chosen is not None  # guaranteed by the validator
        return chosen


PositiveInt = Annotated[int, Rule(ge=1)]


class RateLimitSettings(ConfigModel):
    """Local admission control. ``null`` (None) switches a budget off."""

    requests_per_minute: PositiveInt | None = Field(default=500, description="Requests per minute.")
    tokens_per_minute: PositiveInt | None = Field(
        default=200_000,
        description="Tokens per minute, pre-charged from an estimate and corrected with usage.",
    )
    max_concurrency: PositiveInt | None = Field(default=64, description="Calls in flight at once.")
    max_queue_wait: Duration = Field(
        default=2.0, description="Seconds a call may wait for a budget before a local 429."
    )
    learn_from_headers: bool = Field(
        default=True,
        description="Back off when x-ratelimit-remaining-* says the shared budget is spent.",
    )


class RetrySettings(ConfigModel):
    """How often and how patiently a failed call is tried again."""

    max_attempts: PositiveInt = Field(
        default=3, le=20, description="Attempts in all, first included."
    )
    initial_backoff: Duration = Field(default=0.5, description="Seconds before the second attempt.")
    max_backoff: Duration = Field(default=8.0, description="Cap of the doubling backoff, seconds.")
    max_retry_after: Duration = Field(
        default=120.0,
        description="Longest provider retry-after honoured; beyond it the 429 is surfaced.",
    )
    jitter: float = Field(
        default=0.25, ge=0, le=1, description="Backoff is reduced by up to this random fraction."
    )


class CircuitBreakerSettings(ConfigModel):
    """Stop calling an unhealthy upstream for a while (only 5xx, timeouts, transport count)."""

    failure_threshold: PositiveInt = Field(default=5, description="Consecutive failures to open.")
    open_duration: Duration = Field(default=30.0, description="Seconds open before probing.")
    half_open_probes: PositiveInt = Field(
        default=1, description="Concurrent probes when half-open."
    )


class TimeoutSettings(ConfigModel):
    """Upper bounds on each phase of a call, in seconds."""

    connect: Duration = Field(default=5.0, description="TCP + TLS connect.")
    first_byte: Duration = Field(
        default=60.0,
        description="Streams: from sending the request to the first response byte.",
    )
    stream_idle: Duration = Field(default=60.0, description="Streams: longest gap between chunks.")
    attempt: Duration | None = Field(
        default=None,
        description=(
            "Non-streamed calls: the longest wait for one attempt's answer before it counts "
            "as a timeout and the call moves on (a retry, or the next backend). Unset: "
            "total alone bounds it."
        ),
    )
    total: Duration = Field(
        default=600.0, description="The whole call, retries and backoff included."
    )


def _instant(value: str) -> str:
    when = datetime.datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError("an instant needs its offset (2026-12-01T00:00:00Z)")
    return value


Instant = Annotated[str, After(_instant)]
"""An RFC 3339 date and time with its offset, kept as written."""


class BudgetSettings(ConfigModel):
    """The runtime's spend budget as the operator last judged it (``spec.budget``).

    Written by the operator into the ConfigMap, never by hand: the operator
    sums the spend of every pod and, at the limit, sets ``blockedUntil``.
    Spending calls (every POST) are then refused with 429 ``budget_exceeded``
    until that instant, which is the next period's start.
    """

    limit_usd: float | None = Field(
        default=None, gt=0, finite=True, description="The limit in USD per period (for messages)."
    )
    period: Literal["day", "month"] = Field(default="month", description="day or month.")
    blocked_until: Instant | None = Field(
        default=None,
        description="Refuse spending calls until this instant (RFC 3339): the next period.",
    )
    local_limit_usd: float | None = Field(
        default=None,
        ge=0,
        finite=True,
        description=(
            "Tight mode: this pod also stops once it has spent this much since the value "
            "was written (its share of what is left)."
        ),
    )
    recheck: Duration = Field(
        default=15.0,
        description="Seconds between the operator's looks at the spend (a share's retry-after).",
    )

    def blocked_until_epoch(self) -> float | None:
        """``blocked_until`` in seconds since the epoch."""
        if self.blocked_until is None:
            return None
        return datetime.datetime.fromisoformat(self.blocked_until).timestamp()


BackendName = Annotated[str, Rule(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
"""Names a backend in logs, metrics and /status (a DNS label)."""
Weight = Annotated[int, Rule(ge=0, le=1000)]
"""A backend's share of first attempts, relative to the others'."""


class FallbackSettings(ConfigModel):
    """Another upstream, tried in order when the ones before it fail (``fallbacks``).

    It has its own key (watched for rotation like the primary's), breakers
    and prices. ``models`` maps the name an app asks for to this backend's:
    the model sent upstream (direct) or the deployment called (Azure);
    unmapped names go as they are (direct) or to the variant's deployment.
    """

    name: BackendName = Field(description="Names the backend in logs and /status.")
    variant: Variant
    api_key: SecretRef
    weight: Weight | None = Field(
        default=None, description="Its share of the calls that start here (0 when unset)."
    )
    models: dict[str, Annotated[str, Rule(min_length=1)]] = Field(
        default_factory=dict, description="App model -> this backend's model or deployment."
    )
    pricing: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Per-model price overrides, USD per 1M tokens."
    )
    rate_limits: RateLimitSettings | None = Field(
        default=None, description="Its own local limits (its account's); unset: the config's."
    )


class OpenAiConfig(ConfigModel):
    """Everything the runner needs to talk to one OpenAI or Azure OpenAI upstream."""

    variant: Variant
    api_key: SecretRef
    name: BackendName = Field(
        default="primary", description="Names this backend in logs, metrics and /status."
    )
    weight: Weight | None = Field(
        default=None,
        description=(
            "Its share of the calls that start here, relative to the fallbacks' weights "
            "(1 when unset); calls go on from where they start, in order."
        ),
    )
    upstream_models: dict[str, Annotated[str, Rule(min_length=1)]] = Field(
        default_factory=dict,
        description=(
            "App model -> this backend's model (direct) or deployment (Azure), like a "
            "fallback's models; empty: names go as the app sent them."
        ),
    )
    upstream_pricing: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="This backend's own price overrides, over pricing (a fallback's are its own).",
    )
    rate_limits: RateLimitSettings = RateLimitSettings()
    retry: RetrySettings = RetrySettings()
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    pricing: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Per-model price overrides, USD per 1M tokens."
    )
    budget: BudgetSettings = BudgetSettings()
    fallbacks: list[FallbackSettings] = Field(
        default_factory=list,
        max_length=4,
        description=(
            "Upstreams tried in order after this one on a 429 (not insufficient_quota), a "
            "5xx, a timeout, a transport error or an open circuit, within the same attempts."
        ),
    )

    def __validate__(self) -> None:
        names = [self.name, *(f.name for f in self.fallbacks)]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique, got {names}")
        if not any(self.weights()):
            raise ValueError("at least one backend needs a weight above 0")

    def weights(self) -> list[int]:
        """Each backend's weight in order: the primary's first (1 unless set), fallbacks' 0."""
        primary = 1 if self.weight is None else self.weight
        return [primary, *(f.weight or 0 for f in self.fallbacks)]

    @classmethod
    def defaults_for_openai(cls, api_key: SecretRef, **overrides: Any) -> OpenAiConfig:
        """api.openai.com with the default policies."""
        return cls(variant=Variant(direct=DirectVariant()), api_key=api_key, **overrides)

    @classmethod
    def defaults_for_azure(
        cls,
        api_key: SecretRef,
        *,
        resource: str,
        deployment: str,
        api_version: str = "2024-10-21",
        **overrides: Any,
    ) -> OpenAiConfig:
        """One Azure OpenAI deployment with the default policies."""
        azure = AzureVariant(resource=resource, deployment=deployment, api_version=api_version)
        return cls(variant=Variant(azure=azure), api_key=api_key, **overrides)
