"""Reconciliation of one OpenAiRuntime: spec -> sidecar ConfigMap, Secret -> status.

kopf calls :func:`reconcile` when a runtime is created, updated or found on
start-up (resume), and from the resync loop (:mod:`.resync`). It validates the spec with
its model, renders the sidecar config into the ConfigMap
``<runtime>-openai-runtime`` (owned by the runtime, created or patched only
when it differs), likewise the NetworkPolicy fencing off the sidecars' admin
port (:mod:`.networking`, unless switched off), and looks up the referenced
Secret key, all as the observation of :func:`.status.write_status`, which
writes the status itself under the runtime's lock (never through handler results, which kopf would
store under ``status`` where the CRD's schema prunes them).

An invalid spec is a verdict, not a failure: Ready=False with reason
InvalidSpec and a Warning Event (:mod:`.posting`, which works outside kopf's
handlers too), and the handler returns normally so kopf
does not retry in a loop. A key that changed since the status was written is
a rotation (:mod:`.rotation` does the nudging); the Secret watch usually sees
it first. The key never leaves :func:`.status.resolve_credential`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from openai_runtime_sidecar.contract import CONFIG_KEY
from openai_runtime_sidecar.runner.config import BudgetSettings
from openai_runtime_sidecar.runner.modeling import ValidationError

from .context import OperatorContext
from .kubeapi import KubeApiError, resource_path
from .models import (
    CONDITION_READY,
    OpenAiRuntimeSpec,
    api_key_secret,
    render_sidecar_config,
)
from .networking import (
    NetworkPolicySettings,
    ensure_network_policy,
    network_policy_name,
    render_network_policy,
)
from .owning import existing_or_created, metadata_in_place, metadata_patch, own
from .posting import post_event
from .rotation import after_rotation, warn_unresolved
from .spending import gate_settings
from .status import (
    CredentialResolution,
    Observation,
    SpecVerdict,
    StatusChange,
    StatusWrite,
    load_status,
    resolve_credential,
    write_status,
)

__all__ = [
    "CONFIG_KEY",
    "configmap_name",
    "ensure_configmap",
    "parse_spec",
    "reconcile",
    "render_configmap",
]

MANAGED_BY = "openai-runtime-operator"


def configmap_name(runtime: str) -> str:
    """The ConfigMap holding a runtime's sidecar config (the webhook mounts it)."""
    return f"{runtime}-openai-runtime"


def render_configmap(
    owner: Mapping[str, Any],
    namespace: str,
    name: str,
    spec: OpenAiRuntimeSpec,
    budget: BudgetSettings | None = None,
) -> dict[str, Any]:
    """The desired ConfigMap: the rendered config, owned by the runtime.

    Written as JSON, which is YAML (the key stays ``config.yaml``): the
    sidecar parses it without loading a YAML parser. ``budget`` is the
    verdict on the spend (:func:`.spending.gate_settings`).
    """
    config = render_sidecar_config(namespace, name, spec, budget)
    document = config.model_dump(by_alias=True, mode="json", exclude_none=True)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(name),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "openai-runtime",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "data": {CONFIG_KEY: text},
    }
    own(body, owner)
    return body


async def ensure_configmap(ctx: OperatorContext, desired: Mapping[str, Any]) -> str:
    """Create the ConfigMap, or patch it where it differs; ``created``/``patched``/``unchanged``."""
    path, existing = await existing_or_created(ctx.api, "v1", "configmaps", desired)
    if existing is None:
        return "created"
    data = existing.get("data") or {}
    if data == desired["data"] and metadata_in_place(existing, desired):
        return "unchanged"
    await ctx.api.merge_patch(
        path,
        {
            "metadata": metadata_patch(existing, desired),
            "data": {**{k: None for k in data if k not in desired["data"]}, **desired["data"]},
        },
    )
    return "patched"


async def _ensure_network_policy(
    ctx: OperatorContext,
    settings: NetworkPolicySettings,
    owner: Mapping[str, Any],
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    policy = render_network_policy(owner, namespace, name, settings)
    try:
        outcome = await ensure_network_policy(ctx, policy)
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        # An upgrade that kept the old RBAC: the runtime's config and status
        # matter more than the fence, so say what is missing and go on.
        logger.warning(
            "Cannot write NetworkPolicy %s (%s): grant networkpolicies get, create, patch "
            "or run with --no-sidecar-network-policy",
            network_policy_name(name),
            exc,
        )
        return
    if outcome != "unchanged":
        logger.info("NetworkPolicy %s %s", network_policy_name(name), outcome)


async def fetch_secret(ctx: OperatorContext, namespace: str, name: str) -> dict[str, Any] | None:
    return await ctx.api.get(resource_path("v1", "secrets", namespace, name))


def describe_spec_error(exc: ValidationError) -> str:
    """One line naming each invalid field by its path under ``spec`` (never its value)."""
    problems = [
        f"spec.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
    ]
    return "invalid spec: " + "; ".join(problems)


def parse_spec(spec: Mapping[str, Any], generation: Any) -> SpecVerdict:
    """The verdict on a spec: the parsed model, or which fields are invalid."""
    generation = generation if isinstance(generation, int) else None
    try:
        return SpecVerdict(generation, OpenAiRuntimeSpec.model_validate(dict(spec)))
    except ValidationError as exc:
        return SpecVerdict(generation, None, describe_spec_error(exc))


async def reconcile(
    ctx: OperatorContext,
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> StatusChange | None:
    """Bring the ConfigMap and the status in line with the spec and the Secret.

    The status is read and written under the runtime's lock, straight through
    the API (:func:`.status.write_status`): kopf applies a handler's ``patch``
    only after the handler returns, outside any lock, where it could overwrite
    a rotation that the Secret watch recorded meanwhile. None when the runtime
    is gone. Traced as ``reconcile <namespace>/<name>`` and counted by result.
    """
    with ctx.telemetry.span("reconcile", namespace, name) as span:
        try:
            change = await _reconcile(
                ctx, body=body, spec=spec, meta=meta, namespace=namespace, name=name, logger=logger
            )
        except Exception:
            ctx.telemetry.reconciled(span, "error")
            raise
        ready = change.status.condition(CONDITION_READY) if change is not None else None
        invalid = ready is not None and ready.reason == "InvalidSpec"
        ctx.telemetry.reconciled(span, "invalid" if invalid else "ok")
        return change


async def _reconcile(
    ctx: OperatorContext,
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    meta: kopf.Meta,
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> StatusChange | None:
    verdict = parse_spec(spec, meta.get("generation"))
    ref = api_key_secret(spec)
    if verdict.spec is not None and (verdict.spec.budget or verdict.spec.fallbacks):
        ctx.polled.add((namespace, name))
    elif verdict.spec is not None:
        ctx.polled.discard((namespace, name))

    async def observe(runtime: Mapping[str, Any]) -> Observation:
        if verdict.spec is not None:
            # The object as read now owns the ConfigMap: its uid is the current
            # one even if the runtime was recreated since kopf's event.
            owner = runtime if runtime.get("apiVersion") and runtime.get("kind") else body
            # The budget's verdict from the stored spend: a raised limit lifts a refusal now.
            gate = gate_settings(
                verdict.spec.budget,
                load_status(runtime.get("status")).spend,
                now=ctx.now(),
                recheck=ctx.budget_interval,
            )
            desired = render_configmap(owner, namespace, name, verdict.spec, gate)
            outcome = await ensure_configmap(ctx, desired)
            if outcome != "unchanged":
                logger.info("ConfigMap %s %s", configmap_name(name), outcome)
            if ctx.network_policy is not None:
                # Switched off, existing policies stay: deleting them is left to
                # whoever switched it off (the runtime's deletion still removes them).
                await _ensure_network_policy(
                    ctx, ctx.network_policy, owner, namespace, name, logger
                )
        resolution: CredentialResolution | None = None
        if ref is not None:
            secret = await fetch_secret(ctx, namespace, ref[0])
            resolution = resolve_credential(ref[0], ref[1], secret)
        return Observation(spec=verdict, credential=resolution)

    written = await write_status(ctx, namespace, name, observe)
    if written is None:
        return None
    new_generation = verdict.generation != written.previous.observed_generation
    await _report(ctx, written, new_generation, logger)
    if written.change.rotated:
        await after_rotation(ctx, written.runtime, written.change.status, logger)
    return written.change


async def _report(
    ctx: OperatorContext,
    written: StatusWrite,
    new_generation: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Warning Events for verdicts that changed (and again for each new generation)."""
    change = written.change
    ready = change.status.condition(CONDITION_READY)
    if ready is not None and ready.reason == "InvalidSpec":
        if new_generation or CONDITION_READY in change.changed_conditions:
            await post_event(
                ctx,
                written.runtime,
                type="Warning",
                reason="InvalidSpec",
                message=ready.message,
                log=logger,
            )
        return
    await warn_unresolved(ctx, written.runtime, change, logger, again=new_generation)
