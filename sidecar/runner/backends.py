"""The upstreams a runner may call: the primary and its fallbacks, each with its own state.

Where it sits in the flow::

    OpenAiRunner._apply(config) -> Backends(primary, *fallbacks)
    OpenAiRunner._attempts: each attempt takes the first backend, from where the
        call stands, whose breaker admits it and whose key is loaded;
        fails_over(error) -> the next backend at once, within the same attempts

A backend is where a call goes (URL, auth header, the model or deployment it
is asked for), with which key (its own :class:`CredentialStore`, watched for
rotation like the primary's), which breakers count its failures and which
prices price its answers. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .breaker import CircuitBreakers
from .config import AzureVariant, DirectVariant
from .credentials import CredentialStore
from .errors import (
    CircuitOpen,
    RateLimited,
    RunnerError,
    TransportError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .pricing import Cost, PricingTable
from .results import Usage

__all__ = ["PRIMARY", "Backend", "fails_over"]

PRIMARY = "primary"
"""The name of the config's own ``variant`` among the backends."""

_FAILS_OVER = (RateLimited, UpstreamUnavailable, UpstreamTimeout, TransportError, CircuitOpen)


def fails_over(error: RunnerError) -> bool:
    """Whether another backend may serve what this one failed.

    Pacing (a 429 without ``insufficient_quota``), ill health (5xx, timeouts,
    transport errors, an open circuit): yes. The request itself (context
    length, content filter, bad parameters), billing (``insufficient_quota``)
    and keys: no, another backend would answer the same or spend elsewhere
    what the app's own account refused.
    """
    return isinstance(error, _FAILS_OVER)


@dataclass(eq=False)
class Backend:
    """One upstream: where calls go, with which key, which breakers and prices."""

    name: str
    variant: DirectVariant | AzureVariant
    credentials: CredentialStore
    circuits: CircuitBreakers
    pricing: PricingTable
    models: Mapping[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> bool:
        return self.name == PRIMARY

    def upstream_model(self, model: str | None) -> str | None:
        """The model a direct backend is asked for in place of ``model``."""
        return self.models.get(model, model) if model is not None else None

    def deployment(self, model: str | None, deployment: str | None) -> str | None:
        """The Azure deployment called for an app's ``model`` or Azure-style ``deployment``."""
        if not isinstance(self.variant, AzureVariant):
            return None
        for name in (deployment, model):
            if name is not None and name in self.models:
                return self.models[name]
        return self.variant.deployment

    def chat_url(self, model: str | None, deployment: str | None) -> str:
        """Where a fallback's chat completion goes (the primary keeps the runner's own)."""
        if isinstance(self.variant, AzureVariant):
            return self.variant.chat_completions_url(self.deployment(model, deployment))
        return self.variant.chat_completions_url()

    def price(
        self,
        usage: Usage,
        *,
        model: str | None,
        fallback_model: str | None,
        estimated: bool = False,
    ) -> Cost:
        """What ``usage`` costs here, priced by the answer's ``model`` (else the request's)."""
        return self.pricing.cost(
            model=model,
            fallback_model=fallback_model,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=estimated,
        )

    def scope(self, model: str | None, deployment: str | None) -> str:
        """The breaker scope of a call here: the deployment (Azure) or the model."""
        if isinstance(self.variant, AzureVariant):
            return self.deployment(model, deployment) or self.variant.deployment
        return self.upstream_model(model) or ""
