"""Budget accounting: pods' spend counters -> the runtime's spend this period -> a verdict.

Where it sits in the flow::

    budgeting.poll_runtime: each pod's /status spend --Reading--> account()
        -> SpendStatus (status.spend) -> judge() -> Events, BudgetWarning condition
        -> gate_settings() -> the sidecars' ConfigMap (budget.blockedUntil, localLimitUsd)

A sidecar counts USD since its process started, so its counter starts again
at zero when the pod's container restarts. As Prometheus' ``increase()``
does, only what a counter grew by is added, never its value; better than
``increase()``, a restart is known for sure rather than guessed from a drop,
because every reading names the process it comes from (``instance``). So:

- a pod seen for the first time, or with a new instance, adds its whole
  counter (it all accrued since the last look: the pod or process is new);
- the same instance adds what it grew by since the last reading;
- a pod that did not answer keeps its last reading and adds nothing now
  (what it spent is counted at its next answer);
- a pod that is gone is forgotten (its spend was counted at its last answer).

On the very first look at a runtime (no ``status.spend`` yet) every pod's
counter is a baseline only: spend counts from the moment a budget is set.
Pure: no I/O, time passed in.
"""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from openai_runtime_sidecar.runner.config import BudgetSettings

from .models import BudgetSpec, PodSpend, SpendStatus

__all__ = [
    "Reading",
    "Verdict",
    "account",
    "gate_settings",
    "judge",
    "period_bounds",
    "reading_of",
]


def period_bounds(now: datetime, budget: BudgetSpec) -> tuple[datetime, datetime]:
    """The start of the period holding ``now`` and the start of the next, in UTC."""
    zone = zoneinfo.ZoneInfo(budget.time_zone)
    local = now.astimezone(zone).date()
    if budget.period == "day":
        first, following = local, local + timedelta(days=1)
    else:
        first = local.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    # Midnight as the zone has it that day (a DST change never falls on it in practice).
    return (
        datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC),
        datetime.combine(following, time(0), tzinfo=zone).astimezone(UTC),
    )


@dataclass(frozen=True, slots=True)
class Reading:
    """One sidecar's counters: which process, USD since it started, per model."""

    instance: str
    usd: float
    by_model: Mapping[str, float] = field(default_factory=dict)


def _usd(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def reading_of(document: Any) -> Reading | None:
    """The ``spend`` of a sidecar's ``/status`` document; None when it has none that reads."""
    spend = document.get("spend") if isinstance(document, Mapping) else None
    if not isinstance(spend, Mapping):
        return None
    instance, usd, models = spend.get("instance"), _usd(spend.get("usd")), spend.get("byModel")
    if not isinstance(instance, str) or not instance or usd is None:
        return None
    by_model: dict[str, float] = {}
    if isinstance(models, Mapping):
        for model, value in models.items():
            amount = _usd(value)
            if isinstance(model, str) and amount is not None:
                by_model[model] = amount
    return Reading(instance, usd, by_model)


def _grown(now: float, before: float | None) -> float:
    # The same process: what the counter grew by (it never shrinks; if it did, start again).
    if before is None or now < before:
        return now
    return now - before


def account(
    previous: SpendStatus | None,
    readings: Mapping[str, Reading],
    present: Collection[str],
    *,
    period_start: datetime,
    now: datetime,
) -> SpendStatus:
    """The spend after this look: ``readings`` by pod name, ``present`` every pod that exists."""
    if previous is None:
        pods = {name: _pod(reading) for name, reading in readings.items()}
        return SpendStatus(period_start=period_start, pods=pods, updated_at=now)
    usd, by_model, warned = previous.usd, dict(previous.by_model), list(previous.warned)
    exceeded_at = previous.exceeded_at
    if previous.period_start != period_start:  # a new period: its spend starts at zero
        usd, by_model, warned, exceeded_at = 0.0, {}, [], None
    pods = dict(previous.pods)
    for name, reading in readings.items():
        before = pods.get(name)
        same = before is not None and before.instance == reading.instance
        usd += _grown(reading.usd, before.usd if same and before else None)
        for model, amount in reading.by_model.items():
            earlier = before.by_model.get(model) if same and before else None
            grown = _grown(amount, earlier)
            if grown:
                by_model[model] = by_model.get(model, 0.0) + grown
        pods[name] = _pod(reading)
    return SpendStatus(
        period_start=period_start,
        usd=round(usd, 10),
        by_model={model: round(amount, 10) for model, amount in sorted(by_model.items())},
        warned=warned,
        exceeded_at=exceeded_at,
        pods={name: pod for name, pod in sorted(pods.items()) if name in present},
        updated_at=now,
    )


def _pod(reading: Reading) -> PodSpend:
    return PodSpend(instance=reading.instance, usd=reading.usd, by_model=dict(reading.by_model))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What this period's spend means against the budget."""

    percent: float
    crossed: tuple[int, ...]
    """Warning thresholds reached by this look (not announced before this period)."""
    exceeded: bool
    condition: tuple[Literal["True", "False"], str, str]
    """BudgetWarning's status, reason and message."""


def judge(spend: SpendStatus, budget: BudgetSpec) -> Verdict:
    """Thresholds newly reached, whether the limit is, and the BudgetWarning condition."""
    percent = 100.0 * spend.usd / budget.limit_usd
    reached = sorted({t for t in budget.warn_at_percent if percent >= t})
    crossed = tuple(t for t in reached if t not in spend.warned)
    exceeded = spend.usd >= budget.limit_usd
    spent = f"${spend.usd:.2f} of ${budget.limit_usd:g} this {budget.period} ({percent:.0f}%)"
    condition: tuple[Literal["True", "False"], str, str]
    if exceeded:
        refused = "spending calls are refused" if budget.action == "reject" else "alert only"
        condition = ("True", "LimitReached", f"{spent}: {refused} until the period ends")
    elif reached:
        condition = ("True", "ThresholdReached", f"{spent}: past {reached[-1]}%")
    else:
        condition = ("False", "WithinBudget", spent)
    return Verdict(percent, crossed, exceeded, condition)


def gate_settings(
    budget: BudgetSpec | None,
    spend: SpendStatus | None,
    *,
    now: datetime,
    recheck: float,
) -> BudgetSettings:
    """What the sidecars are told: refuse until the next period, or a share of what is left."""
    if budget is None:
        return BudgetSettings()
    blocked_until = local_limit = None
    if spend is not None:
        start, following = period_bounds(now, budget)
        current = spend.period_start == start
        used = spend.usd if current else 0.0
        if budget.action == "reject" and current and used >= budget.limit_usd:
            blocked_until = following.isoformat().replace("+00:00", "Z")
        elif budget.local_share:
            left = max(0.0, budget.limit_usd - used)
            # Rounded down (never up: the shares must not add up to more than is left).
            local_limit = math.floor(1e9 * left / max(1, len(spend.pods))) / 1e9
    return BudgetSettings(
        limit_usd=budget.limit_usd,
        period=budget.period,
        blocked_until=blocked_until,
        local_limit_usd=local_limit,
        recheck=recheck,
    )
