"""Reconciliation of one OpenAiRuntime: spec -> sidecar ConfigMap, Secret -> status.

kopf calls :func:`reconcile` when a runtime is created, updated or found on
start-up (resume), and from the resync loop (:mod:`.resync`). It validates the spec with
the pydantic model, renders the sidecar config into the ConfigMap
``<runtime>-openai-runtime`` (owned by the runtime, created or patched only
when it differs), looks up the referenced Secret key, and writes the status
itself under the runtime's lock (never through handler results, which kopf
would store under ``status`` where the CRD's schema prunes them).

An invalid spec is a verdict, not a failure: Ready=False with reason
InvalidSpec and a Warning Event, and the handler returns normally so kopf
does not retry in a loop. A key that changed since the status was written is
a rotation (:mod:`.rotation` does the nudging); the Secret watch usually sees
it first. The key never leaves :func:`.status.resolve_credential`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import yaml
from pydantic import ValidationError

from .context import OperatorContext
from .kubeapi import KubeApiError, resource_path
from .models import API_VERSION, CONDITION_READY, PLURAL, OpenAiRuntimeSpec, render_sidecar_config
from .rotation import after_rotation, as_body
from .status import (
    CredentialResolution,
    StatusChange,
    dump_status,
    load_status,
    next_status,
    resolve_credential,
)

__all__ = [
    "CONFIG_KEY",
    "configmap_name",
    "ensure_configmap",
    "reconcile",
    "render_configmap",
]

CONFIG_KEY = "config.yaml"
MANAGED_BY = "openai-runtime-operator"


def configmap_name(runtime: str) -> str:
    """The ConfigMap holding a runtime's sidecar config (the webhook mounts it)."""
    return f"{runtime}-openai-runtime"


def render_configmap(
    owner: Mapping[str, Any], namespace: str, name: str, spec: OpenAiRuntimeSpec
) -> dict[str, Any]:
    """The desired ConfigMap: the rendered config as YAML, owned by the runtime."""
    config = render_sidecar_config(namespace, name, spec)
    text = yaml.safe_dump(
        config.model_dump(by_alias=True, mode="json", exclude_none=True),
        sort_keys=False,
        allow_unicode=True,
    )
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
    kopf.append_owner_reference(body, owner=as_body(owner))
    return body


def _owned_by(existing: Mapping[str, Any], uid: str | None) -> bool:
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    return any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in refs)


async def ensure_configmap(ctx: OperatorContext, desired: Mapping[str, Any]) -> str:
    """Create the ConfigMap, or patch it where it differs; ``created``/``patched``/``unchanged``."""
    meta = desired["metadata"]
    collection = resource_path("v1", "configmaps", meta["namespace"])
    path = resource_path("v1", "configmaps", meta["namespace"], meta["name"])
    existing = await ctx.api.get(path)
    if existing is None:
        try:
            await ctx.api.create(collection, desired)
            return "created"
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            existing = await ctx.api.get(path) or {}
    data = existing.get("data") or {}
    labels = existing.get("metadata", {}).get("labels") or {}
    uid = meta["ownerReferences"][0].get("uid")
    if (
        data == desired["data"]
        and _owned_by(existing, uid)
        and all(labels.get(k) == v for k, v in meta["labels"].items())
    ):
        return "unchanged"
    refs = [
        r
        for r in existing.get("metadata", {}).get("ownerReferences") or []
        if isinstance(r, Mapping) and r.get("uid") != uid
    ]
    await ctx.api.merge_patch(
        path,
        {
            "metadata": {
                "labels": meta["labels"],
                "ownerReferences": [*refs, *meta["ownerReferences"]],
            },
            "data": {**{k: None for k in data if k not in desired["data"]}, **desired["data"]},
        },
    )
    return "patched"


async def fetch_secret(ctx: OperatorContext, namespace: str, name: str) -> dict[str, Any] | None:
    return await ctx.api.get(resource_path("v1", "secrets", namespace, name))


def describe_spec_error(exc: ValidationError) -> str:
    """One line naming each invalid field by its path under ``spec`` (never its value)."""
    problems = [
        f"spec.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return "invalid spec: " + "; ".join(problems)


def _secret_ref(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    ref = spec.get("apiKeySecretRef")
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        return None
    key = ref.get("key", "api-key")
    return ref["name"], key if isinstance(key, str) else "api-key"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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
    the API: kopf applies a handler's ``patch`` only after the handler returns,
    outside any lock, where it could overwrite a rotation that the Secret watch
    recorded meanwhile. None when the runtime is gone. Traced as
    ``reconcile <namespace>/<name>`` and counted by result.
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
    generation = meta.get("generation")
    generation = generation if isinstance(generation, int) else None
    parsed: OpenAiRuntimeSpec | None = None
    invalid: str | None = None
    try:
        parsed = OpenAiRuntimeSpec.model_validate(dict(spec))
    except ValidationError as exc:
        invalid = describe_spec_error(exc)
    path = resource_path(API_VERSION, PLURAL, namespace, name)
    resolution: CredentialResolution | None = None
    async with ctx.lock(namespace, name):
        fresh = await ctx.api.get(path)
        if fresh is None:
            return None
        previous = load_status(fresh.get("status"))
        if parsed is not None:
            outcome = await ensure_configmap(ctx, render_configmap(body, namespace, name, parsed))
            if outcome != "unchanged":
                logger.info("ConfigMap %s %s", configmap_name(name), outcome)
        ref = _secret_ref(spec)
        if ref is not None:
            secret = await fetch_secret(ctx, namespace, ref[0])
            resolution = resolve_credential(ref[0], ref[1], secret)
        change = next_status(
            previous,
            generation=generation,
            spec=parsed,
            invalid_reason=invalid,
            credential=resolution,
            now=_now(),
        )
        new = dump_status(change.status)
        if new != dump_status(previous):
            await ctx.api.merge_patch(f"{path}/status", {"status": new})
    _report(body, change, resolution, generation != previous.observed_generation)
    if change.rotated:
        await after_rotation(ctx, body, change.status, logger)
    return change


def _report(
    body: kopf.Body,
    change: StatusChange,
    resolution: CredentialResolution | None,
    new_generation: bool,
) -> None:
    """Events for verdicts that changed (and again for each new generation)."""
    ready = change.status.condition(CONDITION_READY)
    if ready is not None and ready.reason == "InvalidSpec":
        if new_generation or CONDITION_READY in change.changed_conditions:
            kopf.warn(body, reason="InvalidSpec", message=ready.message)
        return
    if resolution is None:
        return
    if not resolution.resolved and (
        new_generation or "CredentialResolved" in change.changed_conditions
    ):
        kopf.warn(body, reason=resolution.reason, message=resolution.message)
