"""The ``OpenAiRuntime`` custom resource: its spec, its status, and its names on the cluster.

These models are the CRD's source of truth: :mod:`.crd` generates the
CustomResourceDefinition's schema from them, and reconciliation turns a spec
into the sidecar's config with :func:`render_sidecar_config`. The spec is a
config model like the sidecar's (:mod:`openai_runtime_sidecar.runner.modeling`)
and reuses them (variant, models, pricing and every policy) rather than
declaring them again, so a field added there appears here, in the CRD and in
the rendered config at once. The status, which only the operator reads back
from the cluster, is pydantic.

Pure code: no kopf, no kubernetes client, no I/O.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as StatusField
from pydantic.alias_generators import to_camel

from openai_runtime_sidecar.config import ModelSettings, RuntimeRef, SidecarConfig
from openai_runtime_sidecar.contract import DEFAULT_SECRET_KEY, fallback_key_file, key_file
from openai_runtime_sidecar.runner.config import (
    BudgetSettings,
    CircuitBreakerSettings,
    FallbackSettings,
    RateLimitSettings,
    RetrySettings,
    SecretRef,
    TimeoutSettings,
    Variant,
)
from openai_runtime_sidecar.runner.modeling import (
    After,
    Before,
    ConfigModel,
    Field,
    JsonSchema,
    Rule,
)
from openai_runtime_sidecar.runner.pricing import ModelPrice

__all__ = [
    "ANNOTATION_CREDENTIAL_VERSION",
    "ANNOTATION_FALLBACK_VERSION",
    "ANNOTATION_INJECTED",
    "API_VERSION",
    "CONDITION_BUDGET_WARNING",
    "CONDITION_CREDENTIAL_RESOLVED",
    "CONDITION_READY",
    "CONTAINER_NAME",
    "CRD_NAME",
    "DEFAULT_IMAGE",
    "GROUP",
    "KIND",
    "LABEL_RUNTIME",
    "MAX_ALLOWED_MODELS",
    "MAX_BACKENDS",
    "MAX_MODEL_NAME_LENGTH",
    "PLURAL",
    "SHORT",
    "SINGULAR",
    "VERSION",
    "BackendHealth",
    "BackendSpec",
    "BudgetSpec",
    "Condition",
    "ConvergenceStatus",
    "CredentialStatus",
    "OpenAiRuntimeSpec",
    "OpenAiRuntimeStatus",
    "PodSpend",
    "SecretKeyRef",
    "SidecarResources",
    "SidecarSettings",
    "SpendStatus",
    "api_key_secret",
    "fallback_secrets",
    "key_file_path",
    "render_sidecar_config",
]

GROUP = "infer.atomr.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OpenAiRuntime"
PLURAL = "openairuntimes"
SINGULAR = "openairuntime"
SHORT = "oair"
CRD_NAME = f"{PLURAL}.{GROUP}"

LABEL_RUNTIME = f"{GROUP}/runtime"
"""Pod opt-in label; its value names an OpenAiRuntime in the pod's namespace."""
ANNOTATION_INJECTED = f"{GROUP}/injected"
"""Set by the webhook on a pod it injected; its value is the runtime's name."""
ANNOTATION_CREDENTIAL_VERSION = f"{GROUP}/credential-version"
"""Set by the operator on a runtime's pods to the key's fingerprint (the rotation nudge)."""
ANNOTATION_FALLBACK_VERSION = f"{GROUP}/fallback-credential-version"
"""Set on a runtime's pods to a digest of its fallbacks' key fingerprints (their nudge)."""
CONTAINER_NAME = "openai-runtime"
"""Name of the injected sidecar container."""

DEFAULT_IMAGE = "ghcr.io/atomr/openai-runtime-sidecar:0.1.0"

CONDITION_READY = "Ready"
CONDITION_CREDENTIAL_RESOLVED = "CredentialResolved"
CONDITION_BUDGET_WARNING = "BudgetWarning"

# Bounds the API server needs to estimate the cost of the CEL rule on
# ``models`` (an unbounded list of unbounded strings exceeds the budget);
# the spec model enforces the same bounds so both sides agree.
MAX_ALLOWED_MODELS = 128
MAX_MODEL_NAME_LENGTH = 256

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret data key: [-._a-zA-Z0-9]+, but not "." or ".." nor starting with
# ".." (written without look-ahead: the API server's regexes are RE2).
_SECRET_KEY = r"^(\.[-_a-zA-Z0-9]|[-_a-zA-Z0-9])[-._a-zA-Z0-9]*$"
# A resource quantity as Kubernetes writes it (100m, 64Mi, 1.5, 2e3).
_QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


class SecretKeyRef(ConfigModel):
    """One key of a Secret in the runtime's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN, description="Secret name."
    )
    key: str = Field(
        default=DEFAULT_SECRET_KEY,
        min_length=1,
        max_length=253,
        pattern=_SECRET_KEY,
        description="Key in the Secret's data holding the API key.",
    )


def _quantity_as_text(value: Any) -> Any:
    # YAML reads ``cpu: 1`` as an integer; Kubernetes accepts both spellings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Quantity = Annotated[
    str,
    Before(_quantity_as_text),
    Rule(pattern=_QUANTITY),
    JsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": _QUANTITY}],
            "description": "A resource quantity: 50m, 64Mi, 1.",
        }
    ),
]
"""A Kubernetes resource quantity, kept as its text."""


class SidecarResources(ConfigModel):
    """Compute resources of the injected sidecar container."""

    requests: dict[str, Quantity] = Field(
        default_factory=lambda: {"cpu": "50m", "memory": "64Mi"},
        description="Resource requests (default cpu 50m, memory 64Mi).",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=lambda: {"cpu": "1", "memory": "128Mi"},
        description=(
            "Resource limits (default cpu 1, memory 128Mi: namespaces with a LimitRange or a "
            "quota on limits need both; one core is far above the sidecar's need, so it "
            "does not throttle)."
        ),
    )


class SidecarSettings(ConfigModel):
    """How the webhook injects the sidecar into opted-in pods."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="Sidecar image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of the sidecar container."
    )
    resources: SidecarResources = Field(
        default_factory=SidecarResources, description="Sidecar container resources."
    )
    native: bool = Field(
        default=True,
        description=(
            "Inject as a native sidecar (an init container with restartPolicy Always, "
            "Kubernetes 1.29+): it starts before and stops after the app containers."
        ),
    )


MAX_BACKENDS = 5
"""Upstreams a runtime may list: a primary and four to fail over to."""


class BackendSpec(ConfigModel):
    """One upstream of ``spec.backends``, with its own key, weight, models and prices."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Names the backend in logs, spans, metrics and /status (a DNS label).",
    )
    variant: Variant = Field(description="Exactly one of direct or azure.")
    api_key_secret_ref: SecretKeyRef = Field(description="The Secret key holding its API key.")
    weight: Annotated[int, Rule(ge=0, le=1000)] | None = Field(
        default=None,
        description=(
            "Its share of the calls that start here, relative to the others' (the first "
            "backend 1 and the rest 0 when unset: the rest are standbys)."
        ),
    )
    models: dict[str, Annotated[str, Rule(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)]] = Field(
        default_factory=dict,
        max_length=MAX_ALLOWED_MODELS,
        description="The model an app asks for -> this backend's model (direct) or "
        "deployment (Azure); unmapped names go as they are or to the deployment.",
    )
    pricing: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Its price overrides in USD per 1M tokens."
    )
    rate_limits: RateLimitSettings | None = Field(
        default=None,
        description="Its own local limits (its account's tier); unset: spec.rateLimits.",
    )


def _distinct_names(value: list[BackendSpec]) -> list[BackendSpec]:
    names = [b.name for b in value]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique, got {names}")
    if value and not any(
        (b.weight if b.weight is not None else int(i == 0)) for i, b in enumerate(value)
    ):
        raise ValueError("at least one backend needs a weight above 0")
    return value


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name: UTC, Europe/Berlin)"
        ) from exc
    return value


TimeZone = Annotated[str, After(_time_zone)]


class BudgetSpec(ConfigModel):
    """A spend limit for the runtime, summed over the spend of all of its pods.

    Spend counts from the moment the budget is set. The operator reads every
    pod's spend each ``--budget-interval`` (15 s by default); between two looks
    spend can overshoot the limit by what the runtime spends in that time plus
    the ConfigMap's way to the pods, unless ``localShare`` bounds each pod.
    """

    limit_usd: float = Field(gt=0, finite=True, description="The limit in USD per period.")
    period: Literal["day", "month"] = Field(default="month", description="A calendar day or month.")
    time_zone: TimeZone = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="The IANA time zone whose midnight starts a period.",
    )
    warn_at_percent: list[Annotated[int, Rule(ge=1, le=100)]] = Field(
        default_factory=lambda: [80],
        max_length=10,
        description="Shares of the limit, in percent, that post a BudgetWarning (default 80).",
    )
    action: Literal["reject", "alert"] = Field(
        default="reject",
        description=(
            "At the limit: reject spending calls with 429 budget_exceeded until the next "
            "period, or only alert."
        ),
    )
    local_share: bool = Field(
        default=False,
        description=(
            "Tight mode: each pod also stops once it spent its share of what is left "
            "(what is left divided by the pods) until the operator looks again."
        ),
    )


def _bounded_models(value: ModelSettings) -> ModelSettings:
    if len(value.allow) > MAX_ALLOWED_MODELS:
        raise ValueError(f"at most {MAX_ALLOWED_MODELS} allowed models")
    names = [*value.allow, *([value.default] if value.default is not None else [])]
    if any(not 1 <= len(name) <= MAX_MODEL_NAME_LENGTH for name in names):
        raise ValueError(f"model names are 1 to {MAX_MODEL_NAME_LENGTH} characters")
    return value


class OpenAiRuntimeSpec(ConfigModel):
    """Desired state: the upstreams and their keys, the models apps may use, every policy.

    One upstream is ``variant`` plus ``apiKeySecretRef``; several are
    ``backends``, in order, in their place (the one-upstream form is a
    one-backend list named ``primary``).
    """

    variant: Variant | None = Field(
        default=None, description="The upstream: exactly one of direct or azure (or backends)."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The Secret key holding the API key (or backends)."
    )
    backends: Annotated[list[BackendSpec], After(_distinct_names)] = Field(
        default_factory=list,
        max_length=MAX_BACKENDS,
        description=(
            "Upstreams in place of variant and apiKeySecretRef. A call starts at the first "
            "(or one drawn by weight) and moves on to the next on a 429 (not "
            "insufficient_quota), a 5xx, a timeout, a transport error or an open circuit, "
            "within the same attempts."
        ),
    )
    models: Annotated[ModelSettings, After(_bounded_models)] = Field(
        default_factory=ModelSettings, description="Which models apps may ask for."
    )
    pricing: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Per-model price overrides in USD per 1M tokens; they win over list prices.",
    )
    rate_limits: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="Local admission control."
    )
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retry policy.")
    circuit_breaker: CircuitBreakerSettings = Field(
        default_factory=CircuitBreakerSettings, description="Circuit breaker."
    )
    timeouts: TimeoutSettings = Field(
        default_factory=TimeoutSettings, description="Upper bounds on each phase of a call."
    )
    sidecar: SidecarSettings = Field(
        default_factory=SidecarSettings, description="The injected sidecar container."
    )
    budget: BudgetSpec | None = Field(
        default=None, description="A spend limit per day or month across all pods."
    )

    def __validate__(self) -> None:
        single = self.variant is not None or self.api_key_secret_ref is not None
        if self.backends and single:
            raise ValueError("set variant and apiKeySecretRef, or backends, not both")
        if not self.backends and (self.variant is None or self.api_key_secret_ref is None):
            raise ValueError("set variant and apiKeySecretRef, or backends")

    @property
    def primary(self) -> BackendSpec:
        """The first backend: where calls start unless weights say otherwise."""
        if self.backends:
            return self.backends[0]
        assert self.variant is not None
        assert self.api_key_secret_ref is not None
        return BackendSpec(
            name="primary", variant=self.variant, api_key_secret_ref=self.api_key_secret_ref
        )

    @property
    def fallbacks(self) -> list[BackendSpec]:
        """The backends after the first (their keys are mounted apart)."""
        return list(self.backends[1:])

    @property
    def variant_name(self) -> Literal["direct", "azure"]:
        """``direct`` or ``azure`` (shown in ``kubectl get`` through the status)."""
        return "azure" if self.primary.variant.azure is not None else "direct"

    @property
    def target_model(self) -> str | None:
        """What the runtime calls: the Azure deployment, else the default model if any."""
        azure = self.primary.variant.azure
        if azure is not None:
            return azure.deployment
        return self.models.default


class _StatusModel(BaseModel):
    # Status is read back from the cluster, where kopf and older versions may
    # have left fields of their own: ignore them rather than fail.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Condition(_StatusModel):
    """One observation, in the shape of the Kubernetes metav1.Condition."""

    type: str = StatusField(
        min_length=1, max_length=316, description="Ready, CredentialResolved, ..."
    )
    status: Literal["True", "False", "Unknown"]
    reason: str = StatusField(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = StatusField(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime = StatusField(description="When the status last changed.")
    observed_generation: int | None = StatusField(
        default=None, ge=0, description="The spec generation this condition was computed from."
    )


class CredentialStatus(_StatusModel):
    """The key currently in the Secret, by fingerprint only (never the key)."""

    fingerprint: str = StatusField(min_length=1, description="sha256:<first 12 hex digits>.")
    rotated_at: datetime | None = StatusField(
        default=None, description="When the operator last saw the key change."
    )
    rotations: int = StatusField(default=0, ge=0, description="Key changes seen by the operator.")


class ConvergenceStatus(_StatusModel):
    """How many of the runtime's pods carry the current credential version."""

    pods: int = StatusField(ge=0, description="Pods opted in to this runtime.")
    current: int = StatusField(
        ge=0, description="Of those, pods whose sidecar serves the current key."
    )


class PodSpend(_StatusModel):
    """One pod's spend as last read: which sidecar process, and its counters then."""

    instance: str = StatusField(min_length=1, description="The sidecar process's id.")
    usd: float = StatusField(ge=0, description="USD since that process started.")
    by_model: dict[str, float] = StatusField(default_factory=dict, description="USD per model.")


class SpendStatus(_StatusModel):
    """Spend this period across the runtime's pods (with spec.budget)."""

    period_start: datetime = StatusField(description="When the current period started.")
    usd: float = StatusField(default=0.0, ge=0, description="USD spent this period.")
    by_model: dict[str, float] = StatusField(
        default_factory=dict, description="USD spent this period per model."
    )
    warned: list[int] = StatusField(
        default_factory=list, description="Warning thresholds (percent) reached this period."
    )
    exceeded_at: datetime | None = StatusField(
        default=None, description="When spend reached the limit this period."
    )
    pods: dict[str, PodSpend] = StatusField(
        default_factory=dict,
        description="Each pod's counters as last read: the next reading counts what they grew by.",
    )
    updated_at: datetime | None = StatusField(
        default=None, description="The last reading that changed the spend."
    )


class BackendHealth(_StatusModel):
    """One backend as the runtime's sidecars last reported it."""

    name: str = StatusField(min_length=1, description="The backend's name.")
    pods: int = StatusField(ge=0, description="Pods whose sidecar answered.")
    healthy: int = StatusField(
        ge=0,
        description=(
            "Of those, pods whose circuits to this backend are all closed and whose "
            "upstream asked for no pause."
        ),
    )


class OpenAiRuntimeStatus(_StatusModel):
    """Observed state, written by the operator."""

    observed_generation: int | None = StatusField(
        default=None, ge=0, description="The spec generation last reconciled."
    )
    variant: Literal["direct", "azure"] | None = StatusField(
        default=None, description="The variant in use (for kubectl get)."
    )
    model: str | None = StatusField(
        default=None,
        description="The Azure deployment, or the default model of a direct runtime.",
    )
    conditions: list[Condition] = StatusField(
        default_factory=list, description="Ready and the rest."
    )
    credential: CredentialStatus | None = StatusField(
        default=None, description="The key in use, by fingerprint."
    )
    convergence: ConvergenceStatus | None = StatusField(
        default=None, description="Rotation progress across the runtime's pods."
    )
    spend: SpendStatus | None = StatusField(
        default=None, description="Spend this period, with spec.budget."
    )
    backends: list[BackendHealth] | None = StatusField(
        default=None, description="Each backend's health across the pods, with several backends."
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)


def key_file_path(spec: OpenAiRuntimeSpec) -> str:
    """Where the sidecar reads the key: the Secret volume's file for the referenced key."""
    return key_file(spec.primary.api_key_secret_ref.key)


def _raw_backends(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    backends = spec.get("backends")
    if not isinstance(backends, list):
        return []
    return [b for b in backends if isinstance(b, Mapping)]


def api_key_secret(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The Secret name and key an unvalidated spec refers to for its first backend.

    Read from the raw object, not the model, so that the key's status is
    reported (and rotations followed) even while another field is invalid.
    """
    if "apiKeySecretRef" in spec:
        return _secret_ref(spec.get("apiKeySecretRef"))
    backends = _raw_backends(spec)
    return _secret_ref(backends[0].get("apiKeySecretRef")) if backends else None


def fallback_secrets(spec: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The Secret name and key of each backend after the first, by name, from an
    unvalidated spec."""
    found: dict[str, tuple[str, str]] = {}
    for backend in _raw_backends(spec)[1:]:
        name = backend.get("name")
        ref = _secret_ref(backend.get("apiKeySecretRef")) if isinstance(name, str) else None
        if isinstance(name, str) and ref is not None:
            found[name] = ref
    return found


def _secret_ref(ref: Any) -> tuple[str, str] | None:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        return None
    key = ref.get("key", DEFAULT_SECRET_KEY)
    return ref["name"], key if isinstance(key, str) else DEFAULT_SECRET_KEY


def render_sidecar_config(
    namespace: str,
    name: str,
    spec: OpenAiRuntimeSpec,
    budget: BudgetSettings | None = None,
) -> SidecarConfig:
    """The sidecar config for runtime ``namespace/name``: the spec's policies, the key's file.

    Listen addresses, request limits and file watching keep the sidecar's
    defaults (the ports are :mod:`openai_runtime_sidecar.contract`'s, which the
    webhook relies on); everything the spec says is copied. ``budget`` is the
    operator's judgement of the spend (:func:`.spending.gate_settings`).
    """
    primary = spec.primary
    return SidecarConfig(
        runtime=RuntimeRef(namespace=namespace, name=name),
        variant=primary.variant,
        api_key=SecretRef(file=key_file_path(spec)),
        name=primary.name,
        weight=primary.weight,
        upstream_models=dict(primary.models),
        upstream_pricing=dict(primary.pricing),
        models=spec.models,
        pricing=dict(spec.pricing),
        rate_limits=primary.rate_limits or spec.rate_limits,
        retry=spec.retry,
        circuit_breaker=spec.circuit_breaker,
        timeouts=spec.timeouts,
        budget=budget or BudgetSettings(),
        fallbacks=[
            FallbackSettings(
                name=fallback.name,
                variant=fallback.variant,
                api_key=SecretRef(
                    file=fallback_key_file(fallback.name, fallback.api_key_secret_ref.key)
                ),
                weight=fallback.weight,
                models=dict(fallback.models),
                pricing=dict(fallback.pricing),
                rate_limits=fallback.rate_limits,
            )
            for fallback in spec.fallbacks
        ],
    )
