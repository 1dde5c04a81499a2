"""The circuit breaker: stop calling an upstream that keeps failing, then probe it.

Where it sits in the request flow::

    validate -> rate limiter -> [circuit breaker] -> attempt loop -> upstream

The runner asks :meth:`CircuitBreaker.acquire` before each upstream attempt
and reports the outcome on the returned :class:`CircuitPermit`. After
``failure_threshold`` consecutive health failures the circuit opens and every
acquire fails fast with :class:`~.errors.CircuitOpen` for ``open_duration``
seconds. Then it is half-open: up to ``half_open_probes`` attempts go through;
a probe that succeeds closes the circuit, one that fails opens it again for a
fresh ``open_duration``.

The breaker does not judge outcomes: the runner decides what is a health
failure (5xx, timeouts, transport errors) and what is a success (any answer
that proves upstream is alive, including 4xx and 429). Time comes from an
injected :class:`~.clock.Clock`; nothing here sleeps.

Breakers are scoped to what fails together (:class:`CircuitBreakers`): one
for the transport to the host, opened by connections that could not be made,
and one per model (Azure: per deployment), opened by that model's 5xx and
timeouts. A sick model then leaves the others alone, while an unreachable
host stops every call at once.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from typing import TypedDict

from .clock import Clock
from .config import CircuitBreakerSettings
from .errors import CircuitOpen, RunnerError

__all__ = [
    "CircuitBreaker",
    "CircuitBreakers",
    "CircuitPermit",
    "CircuitPermits",
    "CircuitSnapshot",
    "CircuitState",
]

# A rejected caller while the probes are busy: the probes' outcome is usually
# known within a request's time, so a short hint beats the full open duration.
_PROBE_BUSY_RETRY_AFTER = 1.0


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitSnapshot(TypedDict):
    """The breaker's state for ``/status`` and metrics."""

    state: str
    consecutive_failures: int
    opened_at: float | None
    """Wall-clock epoch seconds when the circuit last opened (None while closed)."""
    retry_after: float | None
    """Seconds until the circuit turns half-open (None unless open)."""
    probes_in_flight: int


class CircuitBreaker:
    """Counts consecutive health failures of one upstream and trips on a threshold.

    ``on_change(old, new)`` is called after every state transition (a metric
    hook); it must not raise. The open -> half-open transition happens on the
    first read of the state after ``open_duration`` (``state``, ``acquire``,
    ``snapshot``), since nothing else runs in between.
    """

    def __init__(
        self,
        settings: CircuitBreakerSettings,
        clock: Clock,
        on_change: Callable[[CircuitState, CircuitState], None] | None = None,
        *,
        subject: str = "upstream",
    ) -> None:
        self.settings = settings
        self.subject = subject
        """What the circuit guards, as its refusals name it."""
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0
        # Bumped on every transition. A permit remembers the epoch it was
        # issued in, and its verdict only counts in that same epoch: a slow call
        # started before the circuit opened says nothing about upstream now.
        self._epoch = 0

    @property
    def state(self) -> CircuitState:
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def acquire(self) -> CircuitPermit:
        """Permission for one upstream attempt, or :class:`CircuitOpen`."""
        self._refresh()
        if self._state is CircuitState.OPEN:
            raise CircuitOpen(
                f"the circuit for {self.subject} is open after"
                f" {self._failures} consecutive failures",
                retry_after=self._until_half_open(),
            )
        if self._state is CircuitState.HALF_OPEN:
            if self._probes >= self.settings.half_open_probes:
                raise CircuitOpen(
                    f"the circuit for {self.subject} is half-open and its probe slots are taken",
                    retry_after=min(_PROBE_BUSY_RETRY_AFTER, self.settings.open_duration),
                )
            self._probes += 1
            return CircuitPermit(self, self._epoch, probe=True)
        return CircuitPermit(self, self._epoch, probe=False)

    def peek(self) -> CircuitState:
        """The state as :attr:`state` would read it, without making the transition.

        For readers on another thread (metrics): the transition is the loop's.
        """
        state, opened_at = self._state, self._opened_at
        if state is not CircuitState.OPEN or opened_at is None:
            return state
        elapsed = self._clock.monotonic() - opened_at
        return CircuitState.HALF_OPEN if elapsed >= self.settings.open_duration else state

    @property
    def idle(self) -> bool:
        """Closed with nothing counted: forgetting it loses nothing."""
        return self._state is CircuitState.CLOSED and self._failures == 0 and self._probes == 0

    def snapshot(self) -> CircuitSnapshot:
        self._refresh()
        opened_at = None
        if self._opened_at is not None and self._state is not CircuitState.CLOSED:
            # Report wall-clock time: monotonic seconds mean nothing outside the process.
            opened_at = self._clock.time() - (self._clock.monotonic() - self._opened_at)
        return {
            "state": self._state.value,
            "consecutive_failures": self._failures,
            "opened_at": opened_at,
            "retry_after": self._until_half_open() if self._state is CircuitState.OPEN else None,
            "probes_in_flight": self._probes,
        }

    # -- called by CircuitPermit -------------------------------------------------

    def _success(self, permit: CircuitPermit) -> None:
        if permit.epoch != self._epoch:
            return
        if permit.probe:
            self._transition(CircuitState.CLOSED)
        self._failures = 0

    def _failure(self, permit: CircuitPermit) -> None:
        if permit.epoch != self._epoch:
            return
        self._failures += 1
        if permit.probe or self._failures >= self.settings.failure_threshold:
            self._open()

    def _release(self, permit: CircuitPermit) -> None:
        if permit.probe and permit.epoch == self._epoch:
            self._probes -= 1

    # -- internals ---------------------------------------------------------------

    def _open(self) -> None:
        self._opened_at = self._clock.monotonic()
        self._transition(CircuitState.OPEN)

    def _until_half_open(self) -> float:
        assert self._opened_at is not None
        elapsed = self._clock.monotonic() - self._opened_at
        return max(0.0, self.settings.open_duration - elapsed)

    def _refresh(self) -> None:
        if self._state is CircuitState.OPEN and self._until_half_open() <= 0:
            self._transition(CircuitState.HALF_OPEN)

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._probes = 0
        if new is CircuitState.CLOSED:
            self._opened_at = None
            self._failures = 0
        if old is not new and self._on_change is not None:
            self._on_change(old, new)


class CircuitPermit:
    """One attempt's ticket; settle it exactly once with a verdict or a release.

    Only the first of :meth:`success`, :meth:`failure` and :meth:`release`
    counts; later calls do nothing. Used as a context manager, a permit still
    unsettled on exit is released, so a cancelled attempt never holds a probe
    slot.
    """

    __slots__ = ("_breaker", "_settled", "epoch", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, probe: bool) -> None:
        self._breaker = breaker
        self._settled = False
        self.epoch = epoch
        self.probe = probe
        """Whether this attempt is a half-open probe."""

    @property
    def settled(self) -> bool:
        return self._settled

    def success(self) -> None:
        """Upstream answered (2xx, or a failure that is not about its health)."""
        if self._settle():
            self._breaker._success(self)

    def failure(self) -> None:
        """A health failure: 5xx, timeout or transport error."""
        if self._settle():
            self._breaker._failure(self)

    def release(self) -> None:
        """The attempt ended without a verdict (cancelled): free the probe slot only."""
        if self._settle():
            self._breaker._release(self)

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    def __enter__(self) -> CircuitPermit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class CircuitBreakers:
    """The breakers of one upstream: the host's transport, and one per scope.

    A scope is a model, or an Azure deployment (``""`` for calls that name
    neither). At most ``max_scopes`` scopes are kept: past that, the least
    recently used idle one is forgotten (an app choosing model names cannot
    grow this without end), and if none is idle the least recently used one.
    """

    def __init__(
        self, settings: CircuitBreakerSettings, clock: Clock, *, max_scopes: int = 64
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._max_scopes = max_scopes
        self.host = CircuitBreaker(settings, clock, subject="the upstream host")
        self._scopes: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def scope(self, name: str) -> CircuitBreaker:
        breaker = self._scopes.get(name)
        if breaker is not None:
            self._scopes.move_to_end(name)
            return breaker
        subject = repr(name) if name else "calls without a model"
        breaker = self._scopes[name] = CircuitBreaker(self.settings, self._clock, subject=subject)
        if len(self._scopes) > self._max_scopes:
            idle = next((key for key, held in self._scopes.items() if held.idle), None)
            self._scopes.pop(idle if idle is not None else next(iter(self._scopes)))
        return breaker

    def acquire(self, scope: str) -> CircuitPermits:
        """Permission for one attempt in ``scope``, or :class:`~.errors.CircuitOpen`."""
        host = self.host.acquire()
        try:
            own = self.scope(scope).acquire()
        except CircuitOpen:
            host.release()
            raise
        return CircuitPermits(host, own)

    def states(self) -> list[tuple[str, CircuitState]]:
        """``("host", state)`` first, then every scope whose circuit is not closed."""
        # Metrics collect from a worker thread: a copy of the scopes, and states
        # read without the transitions only the loop makes.
        states = [("host", self.host.peek())]
        for name, breaker in list(self._scopes.items()):
            state = breaker.peek()
            if state is not CircuitState.CLOSED:
                states.append((name, state))
        return states

    def snapshot(self) -> dict[str, object]:
        """The host's breaker, and each scope's that is not idle (failures counted, or open)."""
        return {
            "host": dict(self.host.snapshot()),
            "scopes": {
                name: dict(breaker.snapshot())
                for name, breaker in self._scopes.items()
                if not breaker.idle
            },
        }


class CircuitPermits:
    """One attempt's permits from the host's breaker and its scope's.

    A failure is charged to what it says is sick: a connection that could
    not be made to the host (the scope learns nothing), anything else to the
    scope (the host did answer).
    """

    __slots__ = ("host", "scope")

    def __init__(self, host: CircuitPermit, scope: CircuitPermit) -> None:
        self.host = host
        self.scope = scope

    def success(self) -> None:
        self.host.success()
        self.scope.success()

    def failure(self, error: RunnerError) -> None:
        """A health failure (``error.health_failure``), charged to host or scope."""
        if error.never_sent:
            self.host.failure()
            self.scope.release()
        else:
            self.scope.failure()
            self.host.success()

    def release(self) -> None:
        self.host.release()
        self.scope.release()
