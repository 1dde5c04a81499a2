"""The upstreams a runner may call: the primary and its fallbacks, each with its own state.

Where it sits in the flow::

    OpenAiRunner._apply(config) -> (primary, *fallbacks), Weights
    a call: Weights.order(backends) -> the backends from its first one on
        -> admission: the first whose limiter has room now (else wait at the first)
        -> each attempt: admitting() -> the first backend, from where the call
           stands, whose key is loaded, breaker admits it and limiter has room;
           fails_over(error) -> the next backend at once, within the same attempts

A backend is where a call goes (URL, auth header, the model or deployment it
is asked for), with which key (its own :class:`CredentialStore`, watched for
rotation like the primary's), which breakers count its failures, which
limiter paces it (learning from that backend's own ``x-ratelimit-*``
headers) and which prices price its answers. Pure: no I/O.

Weights split first attempts: a call starts at a backend drawn in proportion
to the weights, then goes on in list order, wrapping round. Without weights
the first backend takes every first attempt, and the rest are standbys.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .breaker import CircuitBreakers, CircuitPermits
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
from .ratelimit import RateLimiter, RatePermit
from .results import Usage

__all__ = ["PRIMARY", "Backend", "Picked", "Weights", "admitting", "fails_over", "preferred"]

PRIMARY = "primary"
"""The primary's name unless the config names it (``name``)."""

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
    limiter: RateLimiter
    pricing: PricingTable
    models: Mapping[str, str] = field(default_factory=dict)
    primary: bool = False
    """The config's own ``variant``: its key is the runner's, taken once per call."""

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


Picked = tuple[int, Backend, CircuitPermits]
"""A backend's index in the call's order, the backend and its breakers' permit."""


def preferred(pool: Sequence[Backend], start: int = 0) -> Sequence[int]:
    """The indexes of ``pool`` from ``start`` in the order to try them: a backend whose
    upstream asked for a pause (a retry-after still running) after all the others."""
    indexes = range(start, len(pool))
    if len(indexes) < 2:
        return indexes
    return sorted(indexes, key=lambda index: pool[index].limiter.resting)  # stable


def admitting(
    pool: Sequence[Backend],
    start: int,
    scope: Callable[[Backend], str],
    permit: RatePermit,
) -> Picked | RunnerError:
    """The first backend of ``pool`` from ``start`` that can take an attempt now.

    It has a key, its breakers admit the call, and its limiter holds the
    call's slot or has room for it now (``permit`` moves there), tried in
    :func:`preferred` order. Else the first refusal, which ends the call or
    sends it to wait and start over.
    """
    refused: RunnerError | None = None
    keyless: RunnerError | None = None
    for index in preferred(pool, start):
        backend = pool[index]
        if backend.credentials.current is None:
            try:
                backend.credentials.require()
            except RunnerError as err:
                keyless = keyless or err
            continue
        try:
            circuits = backend.circuits.acquire(scope(backend))
        except RunnerError as err:
            refused = refused or err
            continue
        if permit.move_to(backend.limiter):
            return index, backend, circuits
        circuits.release()
    # No backend left with room: the first refusal; else, none had a key: why not.
    return refused or keyless or CircuitOpen("no backend can take the call now", retry_after=0.0)


class Weights:
    """Where each call starts among the backends, drawn in proportion to their weights."""

    __slots__ = ("_bounds", "_draw")

    def __init__(self, weights: Sequence[int], draw: Callable[[], float]) -> None:
        """``weights`` per backend in order; ``draw``: a uniform float in [0, 1)."""
        self._draw = draw
        # Only the first backend weighs: every call starts there, no draw needed.
        split = any(weights[1:])
        self._bounds = list(itertools.accumulate(weights)) if split else None

    @property
    def split(self) -> bool:
        return self._bounds is not None

    def order(self, backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
        """``backends`` from this call's first one on, then round from the top."""
        bounds = self._bounds
        if bounds is None or len(backends) != len(bounds):
            return backends
        start = bisect.bisect_right(bounds, self._draw() * bounds[-1])
        return backends[start:] + backends[:start] if start else backends
