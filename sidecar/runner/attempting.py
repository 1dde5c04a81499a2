"""The attempt loop: one admitted call's attempts, across backends, until one succeeds.

Where it sits in the flow::

    OpenAiRunner._call -> AttemptLoop._attempts:
        admitting() -> a backend, its breakers' permit (the call's rate permit moves there)
        -> send(backend, key, headers, budget) -> success, or a RunnerError:
           fails_over(error) -> the next backend at once, within the same attempts
           else RetryPolicy.decide -> clock.sleep -> start again from the first backend

A mixin of :class:`~.runner.OpenAiRunner`, kept apart so the runner's module
stays about what a call is; its methods are the runner's own, with no extra
coroutine layer between the handler and the transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from .backends import Backend, Picked, admitting, fails_over
from .breaker import CircuitPermits
from .credentials import CredentialSnapshot, CredentialStore
from .errors import AuthenticationFailed, RunnerError, UpstreamError
from .ratelimit import RatePermit
from .results import CallLedger

if TYPE_CHECKING:
    from .clock import Clock
    from .config import OpenAiConfig
    from .retrying import RetryPolicy

__all__ = ["AttemptLoop", "AttemptObserver", "Send"]

T = TypeVar("T")
Send = Callable[[Backend, CredentialSnapshot, dict[str, str], float], Awaitable[T]]
"""One attempt: to this backend, with this key, these headers, within this many seconds."""


class AttemptObserver(Protocol):
    """Per-attempt hooks, e.g. for one tracing span per upstream attempt."""

    def attempt_started(self, attempt: int) -> Mapping[str, str]:
        """Called before each attempt; returns headers to send upstream (trace context)."""
        ...

    def attempt_finished(self, attempt: int, status: int | None, error: RunnerError | None) -> None:
        """Called when an attempt got its answer (for streams: its first event) or failed."""
        ...


class AttemptLoop:
    """The runner's attempts; the runner provides the state declared here."""

    credentials: CredentialStore
    clock: Clock
    retry_policy: RetryPolicy
    _config: OpenAiConfig

    async def _attempts(
        self,
        ledger: CallLedger,
        send: Send[T],
        extra_headers: Mapping[str, str] | None,
        observer: AttemptObserver | None,
        retryable: Callable[[RunnerError], bool] | None,
        scope: Callable[[Backend], str],
        pool: tuple[Backend, ...],
        rate_permit: RatePermit,
    ) -> T:
        """Run attempts until one succeeds or the policy gives up.

        ``retryable`` narrows the policy for calls that must not be repeated
        once upstream may have seen them (see :mod:`.proxying`); ``scope``
        names a backend's breaker scope (:meth:`circuit_scope` for the
        primary). A failure that another backend may serve (:func:`fails_over`)
        moves the next attempt to the next backend at once; any other retry
        waits and starts again from the first (:meth:`_backend`). The call's
        ``rate_permit`` moves along to the limiter of the backend it tries. The helpers
        are plain functions on purpose: each coroutine layer between the
        handler and the transport costs a frame on every resume.
        """
        deadline = ledger.started_at + self._config.timeouts.total
        # The call's key, taken once: a rotation mid-call changes nothing for it.
        # (None while the primary has none: the call may go to a fallback.)
        primary_key = self.credentials.current
        reread = False
        attempt = 0
        last_error: RunnerError | None = None
        picked: Picked | None = None
        while True:
            attempt += 1
            ledger.attempts = attempt
            if picked is None:
                picked = self._backend(pool, scope, ledger, attempt, last_error, rate_permit)
            index, backend, permit = picked
            picked = None
            if not backend.primary:
                snapshot = backend.credentials.require()
            else:
                snapshot = primary_key = primary_key or self.credentials.require()
            ledger.credential_fingerprint = snapshot.fingerprint
            ledger.backend = backend.name
            headers = dict(extra_headers or {})
            if observer is not None:
                headers.update(observer.attempt_started(attempt))
            try:
                budget = deadline - self.clock.monotonic()
                result = await send(backend, snapshot, headers, budget)
            except RunnerError as err:
                last_error = err
                self._settle_failure(permit, err, attempt, observer)
                if (
                    not reread
                    and backend.primary
                    and isinstance(err, AuthenticationFailed)
                    and err.status == 401
                ):
                    # Once per call: enough to catch a rotation that landed
                    # mid-call, never a loop on keys that keep changing.
                    reread = True
                    fresh = self._fresh_key_after_401(snapshot)
                    if fresh is not None:
                        primary_key = fresh
                        continue
                if len(pool) > 1 and fails_over(err) and err.retry_after:
                    # Honoured per backend: other calls go elsewhere meanwhile.
                    backend.limiter.rest(err.retry_after)
                if index + 1 < len(pool) and self._failover(err, attempt, deadline, retryable):
                    # The next backend that admits the call, if any; else as without one.
                    found = admitting(pool, index + 1, scope, rate_permit)
                    if not isinstance(found, RunnerError):
                        picked = found
                        continue
                delay = self._retry_delay(err, attempt, deadline, retryable)
                if delay is None:
                    err.attempts = attempt
                    raise
                await self.clock.sleep(delay)
            except BaseException:
                permit.release()
                raise
            else:
                permit.success()
                if observer is not None:
                    observer.attempt_finished(attempt, 200, None)
                return result

    def _failover(
        self,
        err: RunnerError,
        attempt: int,
        deadline: float,
        retryable: Callable[[RunnerError], bool] | None,
    ) -> bool:
        """Whether the next attempt goes to the next backend, at once."""
        return (
            fails_over(err)
            and attempt < self._config.retry.max_attempts
            and deadline > self.clock.monotonic()
            and (retryable is None or retryable(err))
        )

    def _backend(
        self,
        pool: tuple[Backend, ...],
        scope: Callable[[Backend], str],
        ledger: CallLedger,
        attempt: int,
        last_error: RunnerError | None,
        rate_permit: RatePermit,
    ) -> Picked:
        """Where an attempt goes: the first backend that admits it; else the error that
        ends the call."""
        found = admitting(pool, 0, scope, rate_permit)
        if not isinstance(found, RunnerError):
            return found
        refused = found
        if last_error is None:
            refused.attempts = 0
            raise refused
        # Our own failures opened the breaker mid-retry: what the caller
        # needs to see is upstream's last answer, not our refusal.
        ledger.attempts = last_error.attempts = attempt - 1
        raise last_error from None

    @staticmethod
    def _settle_failure(
        permit: CircuitPermits, err: RunnerError, attempt: int, observer: AttemptObserver | None
    ) -> None:
        """Tell the breakers and the observer how an attempt failed."""
        if err.health_failure:
            permit.failure(err)
        else:
            # Says nothing of upstream's health (a refusal, say): a success to the breakers.
            permit.success()
        if observer is not None:
            status = err.status if isinstance(err, UpstreamError) else None
            observer.attempt_finished(attempt, status, err)

    def _fresh_key_after_401(self, snapshot: CredentialSnapshot) -> CredentialSnapshot | None:
        """The key read again after a 401, if it is not the one upstream refused.

        A rotation may have landed while the call was in flight; an unchanged
        key would only be refused again.
        """
        fresh = self.credentials.reload().snapshot
        if fresh is not None and fresh.fingerprint != snapshot.fingerprint:
            return fresh
        return None

    def _retry_delay(
        self,
        err: RunnerError,
        attempt: int,
        deadline: float,
        retryable: Callable[[RunnerError], bool] | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up on ``err``.

        A wait that would outlast the call's deadline is not worth starting.
        """
        decision = self.retry_policy.decide(err, attempt)
        remaining = deadline - self.clock.monotonic()
        if not decision.retry or decision.delay >= remaining:
            return None
        if retryable is not None and not retryable(err):
            return None
        return decision.delay
