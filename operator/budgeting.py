"""Budgets and backend health: what the runtime's sidecars report, kept in its status.

Where it sits in the flow::

    budget_forever (a background loop, every --budget-interval, acting replica only)
      -> poll_runtime(each runtime reconciliation saw with spec.budget or several backends)
         GET http://<podIP>:<admin port>/status  (each Running pod: spend, backends)
         under the runtime's lock, one read and one status patch:
           backend_health() -> status.backends
           .spending.account() -> status.spend, .spending.judge() -> BudgetWarning
           .spending.gate_settings() -> the ConfigMap (reconciling.render_configmap)
         pods annotated with the ConfigMap's version when it changed (kubelet
         then refreshes the mounted file at once; the sidecar hot-reloads it)
      -> Events: BackendUnhealthy / BackendRecovered when a backend turns;
         BudgetWarning per threshold, BudgetExceeded at the limit,
         BudgetReset when a new period starts after one

Reconciliation renders the same gate settings from the stored status, so a
spec edit (a raised limit) lifts a refusal at once, and the status survives
operator restarts and hand-overs between replicas. A pod that does not
answer costs nothing but its share of this look (see :mod:`.spending`).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .convergence import ConvergenceSettings, pod_statuses, runtime_pods
from .kubeapi import resource_path
from .models import (
    API_VERSION,
    CONDITION_BUDGET_WARNING,
    GROUP,
    PLURAL,
    BackendHealth,
    BudgetSpec,
    OpenAiRuntimeSpec,
    OpenAiRuntimeStatus,
    SpendStatus,
)
from .posting import post_event
from .reconciling import ensure_configmap, parse_spec, render_configmap
from .resync import Acting
from .rotation import annotate_pods
from .spending import (
    Reading,
    Verdict,
    account,
    gate_settings,
    judge,
    period_bounds,
    reading_of,
)
from .status import dump_status, load_status, next_condition, status_patch

if TYPE_CHECKING:
    from .context import OperatorContext

__all__ = [
    "ANNOTATION_CONFIG_VERSION",
    "BudgetPoll",
    "backend_health",
    "budget_forever",
    "poll_runtime",
    "read_spend",
]

logger = logging.getLogger(__name__)

ANNOTATION_CONFIG_VERSION = f"{GROUP}/config-version"
"""Set on a runtime's pods to a digest of its ConfigMap when a budget verdict changed it."""


async def read_spend(
    pods: Sequence[Mapping[str, Any]], settings: ConvergenceSettings
) -> dict[str, Reading]:
    """Each Running pod's spend counters, by pod name; pods that do not answer are left out."""
    return _readings(pods, await pod_statuses(pods, settings))


def _readings(pods: Sequence[Mapping[str, Any]], documents: Sequence[Any]) -> dict[str, Reading]:
    readings: dict[str, Reading] = {}
    for pod, document in zip(pods, documents, strict=True):
        name = (pod.get("metadata") or {}).get("name")
        reading = reading_of(document)
        if isinstance(name, str) and reading is not None:
            readings[name] = reading
    return readings


def backend_health(spec: OpenAiRuntimeSpec, documents: Sequence[Any]) -> list[BackendHealth]:
    """Per backend, how many answering pods report it healthy (``closed``)."""
    names = [spec.primary.name, *(f.name for f in spec.fallbacks)]
    pods = dict.fromkeys(names, 0)
    healthy = dict.fromkeys(names, 0)
    for document in documents:
        shown = document.get("backends") if isinstance(document, Mapping) else None
        if not isinstance(shown, Mapping):
            continue
        for name in names:
            if isinstance(shown.get(name), str):
                pods[name] += 1
                healthy[name] += shown[name] == "closed"
    return [BackendHealth(name=n, pods=pods[n], healthy=healthy[n]) for n in names]


@dataclass(frozen=True, slots=True)
class BudgetPoll:
    """What one look at a runtime's spend found and did."""

    spend: SpendStatus
    verdict: Verdict
    configmap: str
    """``created``, ``patched`` or ``unchanged``: whether what the sidecars are told moved."""
    exceeded: bool
    """The limit was reached by this look (the first time this period)."""
    reset: bool
    """A new period started after the limit was reached in the last one."""


async def poll_runtime(ctx: OperatorContext, namespace: str, name: str) -> BudgetPoll | None:
    """One look at a runtime's sidecars: its spend (with a budget), its backends' health.

    The runtime is read once before its pods are asked and once under its
    lock, where both findings go into one status patch. Returns what the
    look found of the budget; None without one.
    """
    path = resource_path(API_VERSION, PLURAL, namespace, name)
    spec = _valid_spec(await ctx.api.get(path))
    if spec is None or (spec.budget is None and not spec.fallbacks):
        return None
    pods = await runtime_pods(ctx, namespace, name)
    documents = await pod_statuses(pods, ctx.convergence)
    readings = _readings(pods, documents)
    present = {str((p.get("metadata") or {}).get("name")) for p in pods}
    poll: BudgetPoll | None = None
    async with ctx.lock(namespace, name):
        runtime = await ctx.api.get(path)
        spec = _valid_spec(runtime)
        if runtime is None or spec is None:
            return None
        stored = runtime.get("status")
        previous = load_status(stored)
        status = previous
        health = backend_health(spec, documents) if spec.fallbacks else None
        if health is not None:
            status = status.model_copy(update={"backends": health})
        if spec.budget is not None:
            moment = ctx.now()
            spend, verdict, exceeded = _account(previous, spec.budget, readings, present, moment)
            conditions = {c.type: c for c in status.conditions}
            conditions[CONDITION_BUDGET_WARNING] = next_condition(
                previous,
                CONDITION_BUDGET_WARNING,
                verdict.condition,
                previous.observed_generation,
                moment,
            )
            status = status.model_copy(
                update={"spend": spend, "conditions": list(conditions.values())}
            )
        patch = status_patch(stored, dump_status(status))
        if patch is not None:
            await ctx.api.merge_patch(f"{path}/status", patch)
        if spec.budget is not None:
            gate = gate_settings(spec.budget, spend, now=moment, recheck=ctx.budget_interval)
            desired = render_configmap(runtime, namespace, name, spec, gate)
            outcome = await ensure_configmap(ctx, desired)
            was = previous.spend
            start = spend.period_start
            reset = was is not None and was.period_start != start and was.exceeded_at is not None
            poll = BudgetPoll(spend, verdict, outcome, exceeded, reset)
    if health is not None:
        await _report_health(ctx, runtime, previous.backends or [], health)
    if poll is not None and spec.budget is not None:
        if poll.configmap != "unchanged":
            await _annotate(ctx, namespace, pods, desired)
        await _report(ctx, runtime, spec.budget, poll)
        ctx.telemetry.budget(namespace, name, poll.spend.usd, spec.budget.limit_usd)
    return poll


def _account(
    previous: OpenAiRuntimeStatus,
    budget: BudgetSpec,
    readings: Mapping[str, Reading],
    present: set[str],
    moment: datetime.datetime,
) -> tuple[SpendStatus, Verdict, bool]:
    """The spend after this look, the verdict on it, and whether it crossed the limit now."""
    start, _ = period_bounds(moment, budget)
    spend = account(previous.spend, readings, present, period_start=start, now=moment)
    verdict = judge(spend, budget)
    exceeded = verdict.exceeded and spend.exceeded_at is None
    spend = spend.model_copy(
        update={
            "warned": sorted({*spend.warned, *verdict.crossed}),
            "exceeded_at": moment if exceeded else spend.exceeded_at,
        }
    )
    was = previous.spend
    if was is not None and was.model_copy(update={"updated_at": None}) == spend.model_copy(
        update={"updated_at": None}
    ):
        # Nothing moved: no status write (a quiet runtime costs the API server nothing).
        spend = was
    return spend, verdict, exceeded


async def _report_health(
    ctx: OperatorContext,
    runtime: Mapping[str, Any],
    before: Sequence[BackendHealth],
    health: Sequence[BackendHealth],
) -> None:
    """An Event for each backend that turned unhealthy or recovered since the last look."""
    was_by_name = {b.name: b for b in before}
    for now in health:
        was = was_by_name.get(now.name)
        sick, was_sick = now.healthy < now.pods, was is not None and was.healthy < was.pods
        if sick and not was_sick:
            message = (
                f"Backend {now.name}: unhealthy in {now.pods - now.healthy} of {now.pods} "
                "pods (a circuit not closed, its upstream asked for a pause, or no key); "
                "calls fail over to the next backend"
            )
            await post_event(
                ctx, runtime, type="Warning", reason="BackendUnhealthy", message=message, log=logger
            )
        elif was_sick and not sick and now.pods:
            message = f"Backend {now.name}: healthy in all {now.pods} pods; traffic returns"
            await post_event(
                ctx, runtime, type="Normal", reason="BackendRecovered", message=message, log=logger
            )


def _valid_spec(runtime: Mapping[str, Any] | None) -> OpenAiRuntimeSpec | None:
    """The runtime's spec when it exists, is not being deleted and is valid."""
    if runtime is None or (runtime.get("metadata") or {}).get("deletionTimestamp"):
        return None
    raw = runtime.get("spec")
    return parse_spec(raw, None).spec if isinstance(raw, Mapping) else None


async def _annotate(
    ctx: OperatorContext,
    namespace: str,
    pods: Sequence[Mapping[str, Any]],
    configmap: Mapping[str, Any],
) -> None:
    # The verdict reaches the sidecars in seconds rather than within kubelet's
    # sync period and cache TTL (see annotate_pods).
    text = "".join(str(v) for v in (configmap.get("data") or {}).values())
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    await annotate_pods(ctx, namespace, pods, ANNOTATION_CONFIG_VERSION, version)


async def _report(
    ctx: OperatorContext, runtime: Mapping[str, Any], budget: BudgetSpec, poll: BudgetPoll
) -> None:
    spent = f"${poll.spend.usd:.2f} of ${budget.limit_usd:g} this {budget.period}"
    if poll.reset:
        message = f"A new {budget.period} started: spending calls are served again"
        await post_event(
            ctx, runtime, type="Normal", reason="BudgetReset", message=message, log=logger
        )
    for threshold in poll.verdict.crossed:
        message = f"Spent {spent}: past {threshold}% of the budget"
        await post_event(
            ctx, runtime, type="Warning", reason="BudgetWarning", message=message, log=logger
        )
    if poll.exceeded:
        what = (
            "spending calls are refused until the next period"
            if budget.action == "reject"
            else "alerting only (spec.budget.action)"
        )
        message = f"Spent {spent}: {what}"
        await post_event(
            ctx, runtime, type="Warning", reason="BudgetExceeded", message=message, log=logger
        )


async def budget_forever(
    ctx: OperatorContext, interval: float, *, acting: Acting | None = None
) -> None:
    """Every ``interval`` seconds, poll each runtime with a budget (until cancelled).

    Which runtimes have one is what reconciliation saw (:attr:`.OperatorContext.polled`,
    filled on start-up as kopf resumes every runtime): no list request per pass.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            if acting is not None and not await acting():
                continue
        except Exception as exc:
            logger.error("Budget pass skipped: %s", exc, exc_info=exc)
            continue
        for namespace, name in sorted(ctx.polled):
            try:
                await poll_runtime(ctx, namespace, name)
            except Exception as exc:
                # One runtime's failure must not starve the others' budgets.
                logger.error("Budget poll of %s/%s failed: %s", namespace, name, exc, exc_info=exc)
