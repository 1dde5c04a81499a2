"""Tests for the circuit breaker (openai_runtime_sidecar.runner.breaker)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.breaker import CircuitBreaker, CircuitBreakers, CircuitState
from openai_runtime_sidecar.runner.clock import ManualClock
from openai_runtime_sidecar.runner.config import CircuitBreakerSettings
from openai_runtime_sidecar.runner.errors import (
    CircuitOpen,
    TransportError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def make(
    threshold: int = 3, open_duration: float = 30.0, probes: int = 1
) -> tuple[CircuitBreaker, ManualClock, list[tuple[CircuitState, CircuitState]]]:
    clock = ManualClock()
    changes: list[tuple[CircuitState, CircuitState]] = []
    settings = CircuitBreakerSettings(
        failure_threshold=threshold, open_duration=open_duration, half_open_probes=probes
    )
    breaker = CircuitBreaker(settings, clock, on_change=lambda a, b: changes.append((a, b)))
    return breaker, clock, changes


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.acquire().failure()


def trip(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.settings.failure_threshold)
    assert breaker.state is OPEN


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _, changes = make(threshold=3)
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 2
    fail(breaker, 1)
    assert breaker.state is OPEN
    assert changes == [(CLOSED, OPEN)]


def test_success_in_between_resets_the_count() -> None:
    breaker, _, _ = make(threshold=3)
    fail(breaker, 2)
    breaker.acquire().success()
    assert breaker.consecutive_failures == 0
    fail(breaker, 2)
    assert breaker.state is CLOSED
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_open_rejects_with_remaining_retry_after() -> None:
    breaker, clock, _ = make(open_duration=30.0)
    trip(breaker)
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after == pytest.approx(30.0)
    clock.advance(12.5)
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after == pytest.approx(17.5)
    assert caught.value.http_status() == 503
    assert caught.value.response_headers()["retry-after"] == "18"


def test_turns_half_open_after_open_duration() -> None:
    breaker, clock, changes = make(open_duration=30.0)
    trip(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_admits_only_the_probe_limit() -> None:
    breaker, clock, _ = make(probes=1)
    trip(breaker)
    clock.advance(30)
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert 0 < (caught.value.retry_after or 0) <= 1.0
    assert breaker.snapshot()["probes_in_flight"] == 1


def test_two_probes_when_configured() -> None:
    breaker, clock, _ = make(probes=2)
    trip(breaker)
    clock.advance(30)
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    first.success()
    assert breaker.state is CLOSED
    # The other probe's verdict belongs to a phase that is over.
    second.failure()
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0


def test_probe_success_closes() -> None:
    breaker, clock, changes = make()
    trip(breaker)
    clock.advance(30)
    breaker.acquire().success()
    assert breaker.state is CLOSED
    assert breaker.consecutive_failures == 0
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # Closed again means a fresh count.
    fail(breaker, 2)
    assert breaker.state is CLOSED


def test_probe_failure_reopens_for_a_full_duration() -> None:
    breaker, clock, changes = make(open_duration=30.0)
    trip(breaker)
    clock.advance(45)
    probe = breaker.acquire()
    clock.advance(5)  # the probe takes a while to fail
    probe.failure()
    assert breaker.state is OPEN
    assert breaker.consecutive_failures == 4
    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()
    assert caught.value.retry_after == pytest.approx(30.0)
    clock.advance(29.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    assert changes == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
    ]


def test_release_frees_the_probe_slot_and_changes_nothing_else() -> None:
    breaker, clock, changes = make(probes=1)
    trip(breaker)
    clock.advance(30)
    with breaker.acquire() as probe:
        assert breaker.snapshot()["probes_in_flight"] == 1
    assert probe.settled  # the context manager released it
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["probes_in_flight"] == 0
    breaker.acquire().release()
    breaker.acquire().success()
    assert breaker.state is CLOSED
    assert changes[-1] == (HALF_OPEN, CLOSED)


def test_release_while_closed_keeps_the_count() -> None:
    breaker, _, _ = make(threshold=3)
    fail(breaker, 2)
    breaker.acquire().release()
    assert breaker.consecutive_failures == 2
    fail(breaker, 1)
    assert breaker.state is OPEN


def test_double_settle_is_a_no_op() -> None:
    breaker, clock, _ = make(threshold=2)
    permit = breaker.acquire()
    permit.failure()
    permit.failure()
    permit.success()
    permit.release()
    assert breaker.consecutive_failures == 1
    assert breaker.state is CLOSED

    fail(breaker, 1)
    assert breaker.state is OPEN
    clock.advance(30)
    probe = breaker.acquire()
    probe.success()
    probe.failure()  # too late: the first verdict stands
    assert breaker.state is CLOSED


def test_late_verdicts_from_before_opening_are_ignored() -> None:
    breaker, clock, changes = make(threshold=2)
    slow_fail, slow_ok = breaker.acquire(), breaker.acquire()
    trip(breaker)
    slow_fail.failure()  # would otherwise restart the open period
    clock.advance(30)
    assert breaker.state is HALF_OPEN
    slow_ok.success()  # an old answer proves nothing about now
    assert breaker.state is HALF_OPEN
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_snapshot() -> None:
    breaker, clock, _ = make(threshold=2, open_duration=10.0)
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "opened_at": None,
        "retry_after": None,
        "probes_in_flight": 0,
    }
    clock.advance(100)
    trip(breaker)
    clock.advance(4)
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["consecutive_failures"] == 2
    assert snap["opened_at"] == pytest.approx(clock.time() - 4)
    assert snap["retry_after"] == pytest.approx(6.0)
    clock.advance(6)
    snap = breaker.snapshot()
    assert snap["state"] == "half_open"
    assert snap["retry_after"] is None


def test_works_without_on_change() -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=1), ManualClock())
    breaker.acquire().failure()
    assert breaker.state is OPEN


@given(st.lists(st.sampled_from(["ok", "fail", "release", "wait"]), max_size=60))
def test_transitions_always_follow_the_state_machine(ops: list[str]) -> None:
    breaker, clock, changes = make(threshold=2, open_duration=5.0)
    hints: list[float | None] = []
    for op in ops:
        if op == "wait":
            clock.advance(3)
            continue
        try:
            permit = breaker.acquire()
        except CircuitOpen as exc:
            hints.append(exc.retry_after)
            continue
        getattr(permit, {"ok": "success", "fail": "failure", "release": "release"}[op])()
    assert all(hint is not None and 0 <= hint <= 5.0 for hint in hints)
    allowed = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
    assert set(changes) <= allowed
    # Each change starts where the previous one ended.
    state = CLOSED
    for old, new in changes:
        assert old is state
        state = new
    assert breaker.state is state or (state is OPEN and breaker.state is HALF_OPEN)


# -- scopes ---------------------------------------------------------------------

SERVER_ERROR = UpstreamUnavailable("boom", status=500)
REFUSED = TransportError("refused", sent=False)


def scoped(
    threshold: int = 2, probes: int = 1, max_scopes: int = 64
) -> tuple[CircuitBreakers, ManualClock]:
    clock = ManualClock()
    settings = CircuitBreakerSettings(
        failure_threshold=threshold, open_duration=30.0, half_open_probes=probes
    )
    return CircuitBreakers(settings, clock, max_scopes=max_scopes), clock


def test_a_scopes_failures_leave_other_scopes_and_the_host_closed() -> None:
    circuits, _ = scoped()
    for _ in range(2):
        circuits.acquire("gpt-4o").failure(SERVER_ERROR)
    with pytest.raises(CircuitOpen, match="'gpt-4o'"):
        circuits.acquire("gpt-4o")
    circuits.acquire("gpt-4o-mini").success()
    assert circuits.states() == [("host", CLOSED), ("gpt-4o", OPEN)]
    assert set(circuits.snapshot()["scopes"]) == {"gpt-4o"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error", [REFUSED, UpstreamTimeout("connect", phase="connect")], ids=["refused", "connect"]
)
def test_connections_never_made_open_the_host_for_every_scope(error: Exception) -> None:
    circuits, _ = scoped()
    circuits.acquire("a").failure(error)  # type: ignore[arg-type]
    circuits.acquire("b").failure(error)  # type: ignore[arg-type]
    for scope in ("a", "b", "c", ""):
        with pytest.raises(CircuitOpen, match="upstream host"):
            circuits.acquire(scope)
    assert circuits.scope("a").idle, "the model learned nothing from the host's failure"


def test_a_timeout_after_connecting_is_the_models() -> None:
    circuits, _ = scoped()
    for _ in range(2):
        circuits.acquire("a").failure(UpstreamTimeout("slow", phase="first_byte"))
    assert circuits.states() == [("host", CLOSED), ("a", OPEN)]


def test_an_open_scope_gives_back_the_hosts_probe_slot() -> None:
    circuits, clock = scoped(probes=1)
    for _ in range(2):
        circuits.acquire("x").failure(REFUSED)
    clock.advance(20)
    for _ in range(2):
        circuits.scope("b").acquire().failure()
    clock.advance(10)  # the host is half-open (one probe), b still open
    with pytest.raises(CircuitOpen, match="'b'"):
        circuits.acquire("b")
    circuits.acquire("c").success()  # the host's only probe slot was free for c
    assert circuits.host.state is CLOSED


def test_scopes_are_bounded_and_idle_ones_go_first() -> None:
    circuits, _ = scoped(max_scopes=3)
    for _ in range(2):
        circuits.acquire("sick").failure(SERVER_ERROR)
    for n in range(100):
        circuits.acquire(f"model-{n}").success()
    states = dict(circuits.states())
    assert states["sick"] is OPEN, "the one with state survives a flood of names"
    assert len(circuits._scopes) == 3
