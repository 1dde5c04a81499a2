"""Budget accounting (openai_runtime_operator.spending): counters in, exact spend out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_operator.models import BudgetSpec, OpenAiRuntimeSpec, SpendStatus
from openai_runtime_operator.spending import (
    Reading,
    account,
    gate_settings,
    judge,
    period_bounds,
    reading_of,
)
from openai_runtime_sidecar.runner.modeling import ValidationError

NOV = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MONTH = BudgetSpec(limit_usd=10.0)


def look(
    previous: SpendStatus | None,
    readings: dict[str, Reading],
    *,
    present: set[str] | None = None,
    now: datetime = NOV,
    budget: BudgetSpec = MONTH,
) -> SpendStatus:
    start, _ = period_bounds(now, budget)
    pods = set(readings) if present is None else present
    return account(previous, readings, pods, period_start=start, now=now)


def test_periods_follow_the_calendar_of_the_time_zone() -> None:
    assert period_bounds(NOV, MONTH) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    december = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert period_bounds(december, MONTH)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    day = BudgetSpec(limit_usd=1, period="day", time_zone="Europe/Berlin")
    # 23:30 UTC is already the next day in Berlin (UTC+1 in winter).
    start, following = period_bounds(datetime(2026, 11, 30, 23, 30, tzinfo=UTC), day)
    assert start == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert following == datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
    summer = period_bounds(datetime(2026, 7, 1, 12, tzinfo=UTC), day)
    assert summer[0] == datetime(2026, 6, 30, 22, 0, tzinfo=UTC)  # UTC+2


def test_an_unknown_time_zone_is_refused_with_its_name() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        BudgetSpec.model_validate({"limitUsd": 1, "timeZone": "Mars/Olympus"})
    spec = {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "k"}}
    with pytest.raises(ValidationError) as info:
        OpenAiRuntimeSpec.model_validate({**spec, "budget": {"limitUsd": 0}})
    assert [e["loc"] for e in info.value.errors()] == [("budget", "limitUsd")]


def test_the_first_look_is_a_baseline_then_increases_count() -> None:
    first = look(None, {"a": Reading("i1", 5.0, {"m": 5.0}), "b": Reading("i2", 1.0, {"m": 1.0})})
    assert (first.usd, first.by_model) == (0.0, {})  # spend counts from when the budget is set
    second = look(first, {"a": Reading("i1", 6.5, {"m": 6.0, "n": 0.5})}, present={"a", "b"})
    assert second.usd == 1.5 and second.by_model == {"m": 1.0, "n": 0.5}
    assert second.pods["b"].usd == 1.0  # did not answer: kept, counted at its next answer
    third = look(second, {"a": Reading("i1", 6.5, {"m": 6.0, "n": 0.5}), "b": Reading("i2", 3.0)})
    assert third.usd == 3.5


def test_a_restarted_or_new_pod_counts_whole_and_a_gone_pod_is_forgotten() -> None:
    base = look(None, {"a": Reading("i1", 4.0, {"m": 4.0})})
    # Restarted: a new instance whose counter started again at zero and grew to 0.25.
    restarted = look(base, {"a": Reading("i9", 0.25, {"m": 0.25}), "c": Reading("i3", 2.0)})
    assert restarted.usd == 2.25 and restarted.pods["a"].instance == "i9"
    gone = look(restarted, {"c": Reading("i3", 2.0)}, present={"c"})
    assert set(gone.pods) == {"c"} and gone.usd == 2.25


def test_a_new_period_starts_at_zero_and_forgets_warnings() -> None:
    spent = look(look(None, {"a": Reading("i1", 0.0)}), {"a": Reading("i1", 9.0)})
    spent = spent.model_copy(update={"warned": [80], "exceeded_at": NOV})
    december = NOV + timedelta(days=2)
    later = look(spent, {"a": Reading("i1", 9.5)}, now=december)
    assert later.period_start == datetime(2026, 12, 1, tzinfo=UTC)
    assert (later.usd, later.warned, later.exceeded_at) == (0.5, [], None)


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.booleans(),  # restart before this step
            st.integers(min_value=0, max_value=500),  # cents spent in this step
            st.booleans(),  # the pod answers this look
        ),
        max_size=40,
    )
)
def test_the_sum_is_exact_whatever_restarts_and_silences(
    steps: list[tuple[str, bool, int, bool]],
) -> None:
    """What every process spent after the baseline, summed: never lost, never twice."""
    counters = dict.fromkeys("abc", 0)
    instances = {pod: f"{pod}0" for pod in "abc"}
    spent_after_baseline = 0
    unseen: dict[str, int] = {}  # spend of a process that restarted before it was read
    status = look(None, {p: Reading(instances[p], 0.0) for p in "abc"})
    for pod, restart, cents, answers in steps:
        if restart:
            unseen[pod] = unseen.get(pod, 0) + counters[pod] - _read(status, pod, instances)
            instances[pod] = instances[pod] + "'"
            counters[pod] = 0
        counters[pod] += cents
        spent_after_baseline += cents
        if answers:
            status = look(
                status, {pod: Reading(instances[pod], counters[pod] / 100)}, present=set("abc")
            )
    # What a process spent before it restarted unread is lost: the counter is gone.
    final = look(status, {p: Reading(instances[p], counters[p] / 100) for p in "abc"})
    lost = sum(unseen.values())
    assert round(final.usd * 100) == spent_after_baseline - lost


def _read(status: SpendStatus, pod: str, instances: dict[str, str]) -> int:
    seen = status.pods.get(pod)
    return round(seen.usd * 100) if seen is not None and seen.instance == instances[pod] else 0


def test_judge_reports_thresholds_once_and_the_limit() -> None:
    budget = BudgetSpec(limit_usd=10.0, warn_at_percent=[50, 80])
    spend = SpendStatus(period_start=NOV, usd=8.5)
    verdict = judge(spend, budget)
    assert verdict.crossed == (50, 80) and not verdict.exceeded
    assert verdict.condition[:2] == ("True", "ThresholdReached")
    again = judge(spend.model_copy(update={"warned": [50, 80]}), budget)
    assert again.crossed == ()
    at_limit = judge(SpendStatus(period_start=NOV, usd=10.0, warned=[50, 80]), budget)
    assert at_limit.exceeded and at_limit.condition[:2] == ("True", "LimitReached")
    assert judge(SpendStatus(period_start=NOV, usd=1.0), budget).condition[:2] == (
        "False",
        "WithinBudget",
    )


def test_gate_settings_block_until_the_next_period_or_hand_out_shares() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    pods = {p: {"instance": p, "usd": 0} for p in "ab"}
    over = SpendStatus.model_validate({"periodStart": start, "usd": 10.0, "pods": pods})
    gate = gate_settings(MONTH, over, now=NOV, recheck=15.0)
    assert gate.blocked_until == "2026-12-01T00:00:00Z" and gate.limit_usd == 10.0
    # Next month the same stored spend blocks nothing.
    assert gate_settings(MONTH, over, now=NOV + timedelta(days=1), recheck=15).blocked_until is None
    alert = BudgetSpec(limit_usd=10.0, action="alert")
    assert gate_settings(alert, over, now=NOV, recheck=15).blocked_until is None
    tight = BudgetSpec(limit_usd=10.0, local_share=True)
    under = over.model_copy(update={"usd": 3.0})
    assert gate_settings(tight, under, now=NOV, recheck=15).local_limit_usd == 3.5
    assert gate_settings(None, over, now=NOV, recheck=15).blocked_until is None


def test_readings_refuse_what_does_not_read() -> None:
    good = {"spend": {"instance": "i", "usd": 1.5, "byModel": {"m": 1.5, "x": "no", "y": -1}}}
    assert reading_of(good) == Reading("i", 1.5, {"m": 1.5})
    for bad in (None, {}, {"spend": []}, {"spend": {"usd": 1}}, {"spend": {"instance": "i"}}):
        assert reading_of(bad) is None
    assert reading_of({"spend": {"instance": "i", "usd": float("nan")}}) is None
