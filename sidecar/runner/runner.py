"""The runner: one OpenAI / Azure OpenAI upstream behind every policy.

Flow of one call (``chat`` or ``stream``)::

    body -> estimate tokens -> a backend's RateLimiter -> attempt loop (attempting.py):
        CircuitBreaker.acquire -> credential snapshot -> Transport.send
        -> classify (errors.py) -> next backend, or RetryPolicy.decide -> clock.sleep -> ...
    -> usage -> cost (pricing.py) -> CallOutcome

A call takes the credential snapshot once and keeps it for all its attempts,
so a rotation never changes the key under a request; the one exception is a
401, after which the key is re-read at once and, if it changed, the call is
tried once more with the new one. Streams are retried only until their first
event has been decoded: after that the caller may already have bytes, and a
second answer would be spliced onto the first.

Every other API call takes the same road through :func:`.proxying.proxy`.
What a call came to is kept in a :class:`~.results.CallLedger` that only
this module writes; the code reading an answer (:mod:`.streaming`,
:mod:`.proxying`) keeps what it saw and hands it over at the end, and
:meth:`OpenAiRunner._conclude` builds the :class:`~.results.CallOutcome`
once (a failed call's error carries it as ``error.outcome``).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from multidict import CIMultiDict

from . import jsoncodec
from .attempting import AttemptLoop, AttemptObserver, Send, T
from .backends import PRIMARY, Backend, Weights, preferred
from .breaker import CircuitBreakers
from .budgets import BudgetGate
from .clock import Clock, SystemClock
from .config import AzureVariant, OpenAiConfig
from .credentials import CredentialSnapshot, CredentialStore
from .errors import (
    RunnerError,
    TransportError,
    classify_error_payload,
    classify_response,
)
from .headers import parse_rate_limit_headers
from .pricing import Cost, PricingTable
from .ratelimit import RateLimiter, RatePermit
from .results import Answered, CallLedger, CallOutcome, ChatResult, Usage
from .retrying import RetryPolicy
from .streaming import ChatStream, StreamAttempt, ask_for_usage, open_stream
from .tokens import estimate_prompt_tokens, max_output_tokens
from .transport import Transport

__all__ = ["AttemptObserver", "ChatStream", "OpenAiRunner"]

_FallbackState = tuple[CredentialStore, CircuitBreakers, RateLimiter]

# Without max_tokens, the limiter pre-charges this many output tokens; the
# real usage corrects the charge as soon as the call ends.
DEFAULT_OUTPUT_ESTIMATE = 1024
USER_AGENT = "openai-runtime/0.1"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class OpenAiRunner(AttemptLoop):
    """Calls one upstream with retries, breaker, limits, timeouts and cost accounting."""

    def __init__(
        self,
        config: OpenAiConfig,
        credentials: CredentialStore,
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
        pricing: PricingTable | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.credentials = credentials
        self.clock: Clock = clock or SystemClock()
        self._base_pricing = pricing or PricingTable.published()
        self._rng = rng or random.Random()
        self.transport = transport or Transport(config.timeouts)
        self._config = config
        self.circuits = CircuitBreakers(config.circuit_breaker, self.clock)
        self.limiter = RateLimiter(config.rate_limits, self.clock)
        self.budget = BudgetGate(config.budget, self.clock)
        self._fallback_state: dict[str, _FallbackState] = {}
        self._apply(config)

    def _apply(self, config: OpenAiConfig) -> None:
        self._config = config
        self.retry_policy = RetryPolicy(config.retry, self._rng)
        self.pricing = self._base_pricing.with_overrides(
            {**config.pricing, **config.upstream_pricing}
        )
        self.transport.timeouts = config.timeouts
        variant = config.variant.selected
        self._variant = variant
        self._url = variant.chat_completions_url()
        self._server_address = urlsplit(self._url).hostname or ""
        primary = Backend(
            config.name,
            variant,
            self.credentials,
            self.circuits,
            self.limiter,
            self.pricing,
            config.upstream_models,
            primary=True,
        )
        self.backends: tuple[Backend, ...] = (primary, *self._fallbacks(config))
        self._by_name = {backend.name: backend for backend in self.backends}
        self._weights = Weights(config.weights(), self._rng.random)

    def _fallbacks(self, config: OpenAiConfig) -> list[Backend]:
        """The fallbacks' backends; a key store, breakers and limiter outlive a reload
        that keeps them."""
        kept, built = self._fallback_state, []
        self._fallback_state = {}
        for fallback in config.fallbacks:
            state = kept.get(fallback.name)
            store, circuits, limiter = state if state is not None else (None, None, None)
            if store is None or store.ref != fallback.api_key:
                store = CredentialStore(fallback.api_key)
                store.reload()
            if circuits is None or circuits.settings != config.circuit_breaker:
                circuits = CircuitBreakers(config.circuit_breaker, self.clock)
            limits = fallback.rate_limits or config.rate_limits
            if limiter is None or limiter.settings != limits:
                limiter = RateLimiter(limits, self.clock)
            self._fallback_state[fallback.name] = (store, circuits, limiter)
            pricing = self._base_pricing.with_overrides({**config.pricing, **fallback.pricing})
            variant = fallback.variant.selected
            built.append(
                Backend(fallback.name, variant, store, circuits, limiter, pricing, fallback.models)
            )
        return built

    def _chat_url(self, deployment: str | None, api_version: str | None) -> str:
        if (deployment or api_version) and isinstance(self._variant, AzureVariant):
            return self._variant.chat_completions_url(deployment, api_version)
        return self._url

    @property
    def config(self) -> OpenAiConfig:
        return self._config

    @property
    def server_address(self) -> str:
        """The upstream host, for telemetry."""
        return self._server_address

    def reconfigure(self, config: OpenAiConfig) -> None:
        """Apply a new config to calls that start from now on.

        The breaker and limiter keep their state unless their own settings
        changed, so a pricing edit does not forget that upstream is down.
        """
        if config.circuit_breaker != self._config.circuit_breaker:
            self.circuits = CircuitBreakers(config.circuit_breaker, self.clock)
        if config.rate_limits != self._config.rate_limits:
            self.limiter = RateLimiter(config.rate_limits, self.clock)
        if config.budget != self._config.budget:
            # A new judgement of the operator's: a share counts from its writing.
            self.budget = BudgetGate(config.budget, self.clock)
        self._apply(config)

    def scopes(self, model: str | None, deployment: str | None = None) -> Callable[[Backend], str]:
        """A call's breaker scope on each backend (see :meth:`circuit_scope`)."""

        def scope(backend: Backend) -> str:
            if backend.primary and not backend.models:
                return self.circuit_scope(model, deployment)
            return backend.scope(model, deployment)

        return scope

    def circuit_scope(self, model: str | None, deployment: str | None = None) -> str:
        """The breaker scope of a call: what fails together with it upstream.

        Azure serves a deployment from its own capacity, so the deployment
        (named in the app's URL, else the configured one) is the scope; an
        OpenAI-compatible upstream fails per model.
        """
        if isinstance(self._variant, AzureVariant):
            return deployment or self._variant.deployment
        return model or ""

    async def aclose(self) -> None:
        await self.transport.aclose()

    # -- estimates ---------------------------------------------------------

    def estimate_tokens(self, body: Mapping[str, Any]) -> tuple[int, int]:
        """(prompt, output) token estimates for the limiter and the cost estimate."""
        output = max_output_tokens(body, default=DEFAULT_OUTPUT_ESTIMATE)
        return estimate_prompt_tokens(body), output

    def estimate_cost(self, body: Mapping[str, Any]) -> Cost:
        """The most this call can cost before it is made (prompt estimate + max output)."""
        prompt, output = self.estimate_tokens(body)
        model = _text(body.get("model"))
        return self.pricing.cost(
            model=model, prompt_tokens=prompt, completion_tokens=output, estimated=True
        )

    # -- calls -------------------------------------------------------------

    def _new_ledger(self, body: Mapping[str, Any], stream: bool) -> CallLedger:
        return CallLedger(
            stream=stream,
            variant=self._variant.name,
            server_address=self._server_address,
            request_model=_text(body.get("model")),
            started_at=self.clock.monotonic(),
        )

    def _encode(self, body: Mapping[str, Any], stream: bool, ledger: CallLedger) -> bytes:
        # A copy that keeps the document's type: see jsoncodec (NaN stays NaN).
        payload = copy.copy(body) if isinstance(body, dict) else dict(body)
        if not stream and (payload.get("stream") or "stream_options" in payload):
            # chat() is the non-streaming call, whatever the body says.
            payload["stream"] = False
            payload.pop("stream_options", None)
        if stream:
            payload["stream"] = True
            ledger.usage_requested = ask_for_usage(payload)
        return jsoncodec.dumps(payload)

    def _route(
        self,
        body: Mapping[str, Any],
        data: bytes,
        deployment: str | None,
        api_version: str | None,
    ) -> Callable[[Backend], tuple[str, bytes]]:
        """Where a chat call goes at each backend, and the payload it goes with there."""
        primary = (self._chat_url(deployment, api_version), data)
        model = _text(body.get("model"))
        routes: dict[str, tuple[str, bytes]] = {}

        def route(backend: Backend) -> tuple[str, bytes]:
            if backend.primary and not backend.models:
                return primary
            found = routes.get(backend.name)
            if found is None:
                payload = data
                mapped = backend.upstream_model(model)
                if mapped != model and not isinstance(backend.variant, AzureVariant):
                    document = jsoncodec.loads(data)
                    document["model"] = mapped
                    payload = jsoncodec.dumps(document)
                found = routes[backend.name] = (backend.chat_url(model, deployment), payload)
            return found

        return route

    def _headers(
        self,
        backend: Backend,
        snapshot: CredentialSnapshot,
        extra: Mapping[str, str] | None,
        stream: bool,
    ) -> dict[str, str]:
        headers = dict(extra or {})
        headers.update(backend.variant.auth_headers(snapshot.value))
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        headers["User-Agent"] = USER_AGENT
        return headers

    def _observe(self, ledger: CallLedger, headers: Mapping[str, str], backend: Backend) -> None:
        ledger.request_id = headers.get("x-request-id") or headers.get("apim-request-id")
        raw_ms = headers.get("openai-processing-ms")
        try:
            ledger.processing_ms = float(raw_ms) if raw_ms is not None else None
        except ValueError:
            ledger.processing_ms = None
        limits = parse_rate_limit_headers(headers)
        if not limits.empty:
            ledger.rate_limits = limits
            # Each backend's headers speak of its own account's budget only.
            backend.limiter.observe_headers(limits)

    def price(
        self,
        usage: Usage,
        *,
        model: str | None,
        fallback_model: str | None,
        estimated: bool = False,
        backend: str = PRIMARY,
    ) -> Cost:
        """What ``usage`` costs at ``backend``, priced by the answer's ``model``
        (else the request's)."""
        chosen = self._by_name.get(backend) or self.backends[0]
        return chosen.price(usage, model=model, fallback_model=fallback_model, estimated=estimated)

    def _conclude(
        self,
        ledger: CallLedger,
        permit: RatePermit,
        usage: Usage | None,
        error: RunnerError | None = None,
        answered: Answered | None = None,
    ) -> CallOutcome:
        """End a call: settle the limiter, price the usage, build the outcome once.

        ``answered`` is what the code reading a streamed or passed-through
        answer saw of it. A failed call's error carries the outcome
        (``error.outcome``).
        """
        if answered is not None:
            ledger.response_model = answered.model
            ledger.response_id = answered.id
            ledger.finish_reasons = answered.finish_reasons
        if usage is not None:
            ledger.usage = usage
            ledger.cost = self.price(
                usage,
                model=ledger.response_model,
                fallback_model=ledger.request_model,
                estimated=ledger.usage_estimated,
                backend=ledger.backend,
            )
            self.budget.spent(ledger.cost.usd)
            permit.settle(usage.total_tokens)
        else:
            permit.release()
        outcome = ledger.conclude(now=self.clock.monotonic(), error=error)
        if error is not None:
            error.outcome = outcome
        return outcome

    async def _begin(
        self, body: Mapping[str, Any], stream: bool
    ) -> tuple[CallLedger, bytes, int, RatePermit, tuple[Backend, ...]]:
        """Encode the request and wait for a limiter.

        Returns the ledger, the payload, the prompt estimate, the limiter's
        permit and the backends in the order this call tries them.
        """
        ledger = self._new_ledger(body, stream=stream)
        data = self._encode(body, stream, ledger)
        prompt, output = self.estimate_tokens(body)
        pool = self.order()
        return ledger, data, prompt, await self._admit(ledger, prompt + output, pool), pool

    def order(self, pool: tuple[Backend, ...] | None = None) -> tuple[Backend, ...]:
        """The backends (all, or ``pool``) in the order a new call tries them (weights)."""
        return self._weights.order(self.backends if pool is None else pool)

    async def _admit(
        self, ledger: CallLedger, tokens: int, pool: tuple[Backend, ...], *, spends: bool = True
    ) -> RatePermit:
        """The budget, then a limiter; a refusal ends the call (its error carries the outcome).

        With several backends the call takes the first of ``pool`` whose
        limiter has room now, so a spent account (learned from its headers)
        sends calls on rather than holding them; with none it waits at the
        first. ``spends``: the call may cost (every POST); reads and deletes
        pass a used-up budget.
        """
        ledger.backend = pool[0].name
        try:
            if spends:
                self.budget.check()
            if len(pool) > 1:
                for index in preferred(pool):
                    backend = pool[index]
                    if backend.credentials.current is not None:
                        permit = backend.limiter.try_acquire(tokens)
                        if permit is not None:
                            return permit
            return await pool[0].limiter.acquire(tokens)
        except RunnerError as err:
            err.attempts = 0
            err.outcome = ledger.conclude(now=self.clock.monotonic(), error=err)
            raise

    def _opened(self, ledger: CallLedger, status: int) -> None:
        """Upstream answered with ``status``: from here on its body streams to the caller."""
        ledger.status = status
        ledger.time_to_first_byte = self.clock.monotonic() - ledger.started_at

    async def _call(
        self,
        ledger: CallLedger,
        rate_permit: RatePermit,
        send: Send[T],
        extra_headers: Mapping[str, str] | None,
        observer: AttemptObserver | None,
        retryable: Callable[[RunnerError], bool] | None = None,
        *,
        scope: Callable[[Backend], str],
        pool: tuple[Backend, ...],
    ) -> T:
        """The attempts of one admitted call; a failure settles the books before it is raised.

        ``pool``: the backends this call may go to, in its order (:meth:`order`).
        """
        try:
            return await self._attempts(
                ledger, send, extra_headers, observer, retryable, scope, pool, rate_permit
            )
        except RunnerError as err:
            self._conclude(ledger, rate_permit, None, err)
            raise
        except BaseException:
            rate_permit.release()
            raise

    async def chat(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        observer: AttemptObserver | None = None,
        deployment: str | None = None,
        api_version: str | None = None,
    ) -> ChatResult:
        """A non-streaming chat completion. Raises the runner's errors after retries.

        Azure: ``deployment`` and ``api_version`` (from an Azure-style URL the
        app called) replace the configured ones for this call.
        """
        ledger, data, _, rate_permit, pool = await self._begin(body, stream=False)
        route = self._route(body, data, deployment, api_version)

        async def send(
            backend: Backend, snapshot: CredentialSnapshot, extra: dict[str, str], budget: float
        ) -> tuple[int, CIMultiDict[str], bytes, dict[str, Any]]:
            url, sent = route(backend)
            response = await self.transport.send(
                url,
                self._headers(backend, snapshot, extra, False),
                sent,
                stream=False,
                budget=budget,
            )
            self._observe(ledger, response.headers, backend)
            raw = await response.read()
            upstream_headers = CIMultiDict(response.headers)
            if not 200 <= response.status < 300:
                raise classify_response(
                    response.status, upstream_headers, raw, now=self.clock.time()
                )
            try:
                payload = jsoncodec.loads(raw)
            except (ValueError, UnicodeDecodeError):
                payload = None
            if not isinstance(payload, dict):
                raise TransportError(f"upstream answered {response.status} with a non-JSON body")
            if isinstance(payload.get("error"), dict):
                # An error delivered with a 2xx: passed on as a success, the SDK
                # would hand the app a completion without choices. Classified
                # by its code and type like an in-band stream error, so retries,
                # the breaker and the app's status all see the failure it is.
                raise classify_error_payload(
                    response.status,
                    payload,
                    headers=upstream_headers,
                    body=raw,
                    now=self.clock.time(),
                )
            return response.status, upstream_headers, raw, payload

        status, upstream_headers, raw, payload = await self._call(
            ledger,
            rate_permit,
            send,
            headers,
            observer,
            scope=self.scopes(ledger.request_model, deployment),
            pool=pool,
        )
        ledger.status = status
        ledger.response_model = _text(payload.get("model"))
        ledger.response_id = _text(payload.get("id"))
        choices = payload.get("choices")
        if isinstance(choices, list):
            ledger.finish_reasons = tuple(
                reason
                for choice in choices
                if isinstance(choice, dict) and (reason := _text(choice.get("finish_reason")))
            )
        usage = Usage.from_payload(payload.get("usage"))
        outcome = self._conclude(ledger, rate_permit, usage)
        return ChatResult(status, upstream_headers, raw, payload, outcome)

    async def stream(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        observer: AttemptObserver | None = None,
        deployment: str | None = None,
        api_version: str | None = None,
    ) -> ChatStream:
        """A streaming chat completion, returned once upstream's first event arrived.

        Errors before that point are raised here (after retries); later ones are
        raised while iterating the returned :class:`ChatStream`.
        """
        ledger, data, prompt, rate_permit, pool = await self._begin(body, stream=True)
        route = self._route(body, data, deployment, api_version)

        async def send(
            backend: Backend, snapshot: CredentialSnapshot, extra: dict[str, str], budget: float
        ) -> StreamAttempt:
            url, sent = route(backend)
            response = await self.transport.send(
                url,
                self._headers(backend, snapshot, extra, True),
                sent,
                stream=True,
                budget=budget,
            )
            self._observe(ledger, response.headers, backend)
            return await open_stream(
                response,
                usage_requested=ledger.usage_requested,
                now=self.clock.time(),
                price=backend.price,
                request_model=ledger.request_model,
            )

        scope = self.scopes(ledger.request_model, deployment)
        attempt = await self._call(
            ledger, rate_permit, send, headers, observer, scope=scope, pool=pool
        )
        self._opened(ledger, attempt.status)
        return ChatStream(self, attempt, ledger, rate_permit, prompt)
