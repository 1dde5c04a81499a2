"""Budgets: read every pod's spend, keep the runtime's total, tell the sidecars the verdict.

Where it sits in the flow::

    budget_forever (a background loop, every --budget-interval, acting replica only)
      -> poll_budget(each runtime reconciliation saw with a valid spec.budget)
           GET http://<podIP>:<admin port>/status  (each Running pod: spend)
           under the runtime's lock:
             .spending.account() -> status.spend, .spending.judge() -> BudgetWarning
             .spending.gate_settings() -> the ConfigMap (reconciling.render_configmap)
             pods annotated with the ConfigMap's version when it changed (kubelet
             then refreshes the mounted file at once; the sidecar hot-reloads it)
      -> Events: BudgetWarning per threshold, BudgetExceeded at the limit,
         BudgetReset when a new period starts after one

Reconciliation renders the same gate settings from the stored status, so a
spec edit (a raised limit) lifts a refusal at once, and the status survives
operator restarts and hand-overs between replicas. A pod that does not
answer costs nothing but its share of this look (see :mod:`.spending`).
"""

from __future__ import annotations

import asyncio
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
    BudgetSpec,
    OpenAiRuntimeSpec,
    SpendStatus,
)
from .posting import post_event
from .reconciling import ensure_configmap, parse_spec, render_configmap
from .resync import Acting
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
    "budget_forever",
    "poll_budget",
    "read_spend",
]

logger = logging.getLogger(__name__)

ANNOTATION_CONFIG_VERSION = f"{GROUP}/config-version"
"""Set on a runtime's pods to a digest of its ConfigMap when a budget verdict changed it."""


async def read_spend(
    pods: Sequence[Mapping[str, Any]], settings: ConvergenceSettings
) -> dict[str, Reading]:
    """Each Running pod's spend counters, by pod name; pods that do not answer are left out."""
    readings: dict[str, Reading] = {}
    for pod, document in zip(pods, await pod_statuses(pods, settings), strict=True):
        name = (pod.get("metadata") or {}).get("name")
        reading = reading_of(document)
        if isinstance(name, str) and reading is not None:
            readings[name] = reading
    return readings


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


async def poll_budget(ctx: OperatorContext, namespace: str, name: str) -> BudgetPoll | None:
    """Read the pods' spend and record it; None when the runtime has no (valid) budget."""
    path = resource_path(API_VERSION, PLURAL, namespace, name)
    if _budget_of(await ctx.api.get(path)) is None:
        return None
    pods = await runtime_pods(ctx, namespace, name)
    readings = await read_spend(pods, ctx.convergence)
    present = {str((p.get("metadata") or {}).get("name")) for p in pods}
    async with ctx.lock(namespace, name):
        runtime = await ctx.api.get(path)
        spec = _budget_of(runtime)
        if runtime is None or spec is None or spec.budget is None:
            return None
        budget = spec.budget
        moment = ctx.now()
        stored = runtime.get("status")
        previous = load_status(stored)
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
        conditions = {c.type: c for c in previous.conditions}
        conditions[CONDITION_BUDGET_WARNING] = next_condition(
            previous,
            CONDITION_BUDGET_WARNING,
            verdict.condition,
            previous.observed_generation,
            moment,
        )
        status = previous.model_copy(
            update={"spend": spend, "conditions": list(conditions.values())}
        )
        patch = status_patch(stored, dump_status(status))
        if patch is not None:
            await ctx.api.merge_patch(f"{path}/status", patch)
        gate = gate_settings(budget, spend, now=moment, recheck=ctx.budget_interval)
        desired = render_configmap(runtime, namespace, name, spec, gate)
        outcome = await ensure_configmap(ctx, desired)
    if outcome != "unchanged":
        await _annotate(ctx, namespace, name, pods, desired)
    reset = was is not None and was.period_start != start and was.exceeded_at is not None
    poll = BudgetPoll(spend, verdict, outcome, exceeded, reset)
    await _report(ctx, runtime, budget, poll)
    ctx.telemetry.budget(namespace, name, spend.usd, budget.limit_usd)
    return poll


def _budget_of(runtime: Mapping[str, Any] | None) -> OpenAiRuntimeSpec | None:
    """The runtime's spec when it is valid and sets a budget."""
    if runtime is None or (runtime.get("metadata") or {}).get("deletionTimestamp"):
        return None
    raw = runtime.get("spec")
    if not isinstance(raw, Mapping) or raw.get("budget") is None:
        return None
    spec = parse_spec(raw, None).spec
    return spec if spec is not None and spec.budget is not None else None


async def _annotate(
    ctx: OperatorContext,
    namespace: str,
    name: str,
    pods: Sequence[Mapping[str, Any]],
    configmap: Mapping[str, Any],
) -> None:
    # kubelet refreshes a mounted ConfigMap on its next sync of the pod, which
    # a change to the pod starts at once: the verdict reaches the sidecars in
    # seconds rather than within kubelet's sync period and cache TTL.
    text = "".join(str(v) for v in (configmap.get("data") or {}).values())
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("annotations") or {}).get(ANNOTATION_CONFIG_VERSION) == version:
            continue
        pod_path = resource_path("v1", "pods", namespace, meta.get("name"))
        await ctx.api.merge_patch(
            pod_path, {"metadata": {"annotations": {ANNOTATION_CONFIG_VERSION: version}}}
        )


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

    Which runtimes have one is what reconciliation saw (:attr:`.OperatorContext.budgeted`,
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
        for namespace, name in sorted(ctx.budgeted):
            try:
                await poll_budget(ctx, namespace, name)
            except Exception as exc:
                # One runtime's failure must not starve the others' budgets.
                logger.error("Budget poll of %s/%s failed: %s", namespace, name, exc, exc_info=exc)
