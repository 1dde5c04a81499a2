"""Key rotation: from a Secret's watch event to the runtimes' status and pods.

kopf indexes runtimes by the Secret they reference (:func:`runtimes_by_secret`)
and feeds every Secret event, read-only, to :func:`on_secret_event` (never an
``on.update`` handler: that would write kopf's annotations onto Secrets). For
each runtime that references the Secret, :func:`refresh_credential` reads
the runtime and the Secret afresh and resolves the key to its fingerprint;
:func:`.status.write_status` patches the status subresource when anything
changed. A new fingerprint is a rotation:
``credential.rotatedAt``/``rotations`` move, a Normal ``CredentialRotated``
Event is posted (:mod:`.posting`) and :func:`nudge_pods` annotates the runtime's pods with
``infer.atomr.io/credential-version`` so kubelet refreshes their volumes now;
then :mod:`.convergence` follows, in the background, how many pods serve it.
Unchanged data (label edits, resyncs) changes nothing. A Secret that appears
or comes back makes ``CredentialResolved`` recover the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf

from .context import OperatorContext
from .convergence import follow_convergence, runtime_pods
from .kubeapi import KubeApiError, resource_path
from .models import (
    ANNOTATION_CREDENTIAL_VERSION,
    ANNOTATION_FALLBACK_VERSION,
    API_VERSION,
    CONDITION_CREDENTIAL_RESOLVED,
    PLURAL,
    OpenAiRuntimeStatus,
    api_key_secret,
    fallback_secrets,
)
from .posting import post_event
from .status import Observation, StatusChange, resolve_credential, write_status

__all__ = [
    "Uses",
    "after_rotation",
    "annotate_pods",
    "as_body",
    "nudge_pods",
    "on_secret_event",
    "refresh_credential",
    "refresh_fallbacks",
    "rotation_event",
    "runtime_pods",
    "runtimes_by_secret",
    "secret_digest",
    "warn_unresolved",
]

Logger = logging.Logger | logging.LoggerAdapter[Any]

RETRY_DELAYS = (1.0, 3.0, 10.0)
"""Seconds between attempts to follow a Secret change after an API error."""


def as_body(raw: Mapping[str, Any]) -> kopf.Body:
    """A plain object from the API as the ``kopf.Body`` that kopf's Event helpers take."""
    return kopf.Body(cast(kopf.RawBody, dict(raw)))


Uses = tuple[str, tuple[str, ...]]
"""A runtime's name and what it uses a Secret for: ``key``, ``fallback`` or both."""


def runtimes_by_secret(
    namespace: str | None, name: str | None, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], Uses]:
    """Index entries of a runtime: ``(namespace, secret name) -> (runtime name, uses)``,
    for its key's Secret and each fallback's."""
    if not namespace or not name:
        return {}
    uses: dict[str, set[str]] = {}
    primary = api_key_secret(spec)
    if primary is not None:
        uses.setdefault(primary[0], set()).add("key")
    for secret, _key in fallback_secrets(spec).values():
        uses.setdefault(secret, set()).add("fallback")
    return {(namespace, secret): (name, tuple(sorted(u))) for secret, u in uses.items()}


def secret_digest(secret: Mapping[str, Any]) -> str:
    """A digest of a Secret's data, to tell a replayed Secret from a changed one (no key)."""
    data = secret.get("data") or {}
    text = json.dumps(dict(data) if isinstance(data, Mapping) else data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


async def rotation_event(
    ctx: OperatorContext, runtime: Mapping[str, Any], status: OpenAiRuntimeStatus, logger: Logger
) -> None:
    """A Normal ``CredentialRotated`` Event on the runtime (the fingerprint only)."""
    credential = status.credential
    if credential is None:
        return
    await post_event(
        ctx,
        runtime,
        type="Normal",
        reason="CredentialRotated",
        message=(
            f"API key changed to {credential.fingerprint} "
            f"(rotation {credential.rotations}); annotating the runtime's pods"
        ),
        log=logger,
    )


async def annotate_pods(
    ctx: OperatorContext,
    namespace: str,
    pods: Sequence[Mapping[str, Any]],
    annotation: str,
    value: str,
) -> tuple[int, int]:
    """Set ``annotation`` to ``value`` on the pods that do not carry it yet.

    A change to a pod makes kubelet sync it, refreshing its mounted Secrets and
    ConfigMaps at once rather than within its sync period. Returns (annotated,
    replaced): how many pods were patched, and of those how many carried
    another value before (not a first annotation).
    """
    annotated = replaced = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        before = (meta.get("annotations") or {}).get(annotation)
        if before == value:
            continue
        path = resource_path("v1", "pods", namespace, meta.get("name"))
        if await ctx.api.merge_patch(path, {"metadata": {"annotations": {annotation: value}}}):
            annotated += 1
            replaced += before is not None
    return annotated, replaced


async def nudge_pods(
    ctx: OperatorContext, namespace: str, name: str, fp: str, logger: Logger
) -> tuple[int, int]:
    """Annotate the runtime's pods with the key's fingerprint; (pods, newly annotated)."""
    pods = await runtime_pods(ctx, namespace, name)
    nudged, _ = await annotate_pods(ctx, namespace, pods, ANNOTATION_CREDENTIAL_VERSION, fp)
    ctx.telemetry.nudged(len(pods), nudged)
    if nudged:
        logger.info("Annotated %d of %d pods with credential version %s", nudged, len(pods), fp)
    return len(pods), nudged


async def after_rotation(
    ctx: OperatorContext, runtime: Mapping[str, Any], status: OpenAiRuntimeStatus, logger: Logger
) -> None:
    """A recorded rotation's follow-up: Event, pod nudges, convergence report.

    Traced as ``rotate <namespace>/<name>``; the convergence checks run in the
    background so the handler does not wait for the sidecars.
    """
    credential = status.credential
    meta = runtime.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if credential is None or not isinstance(namespace, str) or not isinstance(name, str):
        return
    with ctx.telemetry.span("rotate", namespace, name) as span:
        ctx.telemetry.rotated(span, credential.fingerprint, credential.rotations)
        await rotation_event(ctx, runtime, status, logger)
        await nudge_pods(ctx, namespace, name, credential.fingerprint, logger)
    ctx.background_for((namespace, name), follow_convergence(ctx, namespace, name))


async def refresh_credential(
    ctx: OperatorContext,
    namespace: str,
    runtime_name: str,
    secret_name: str,
    logger: Logger,
) -> bool:
    """Re-resolve one runtime's key from Secret ``secret_name``; True if it rotated.

    Both objects are read afresh under the runtime's lock (:func:`.status.write_status`)
    rather than taken from the watch event: a late or replayed event must never
    roll a key back. The spec is not reconciled here, so its verdict and the
    fields derived from it stay as they are.
    """

    async def observe(runtime: Mapping[str, Any]) -> Observation | None:
        if runtime.get("metadata", {}).get("deletionTimestamp"):
            return None
        spec = runtime.get("spec") or {}
        ref = api_key_secret(spec) if isinstance(spec, Mapping) else None
        if ref is None or ref[0] != secret_name:
            return None  # the index lagged behind a spec change
        secret = await ctx.api.get(resource_path("v1", "secrets", namespace, secret_name))
        resolution = resolve_credential(secret_name, ref[1], secret)
        return Observation(spec=None, credential=resolution)

    written = await write_status(ctx, namespace, runtime_name, observe)
    if written is None or written.patch is None:
        return False
    change = written.change
    logger.info(
        "Runtime %s/%s credential %s",
        namespace,
        runtime_name,
        "rotated" if change.rotated else "re-resolved",
    )
    if change.rotated:
        await after_rotation(ctx, written.runtime, change.status, logger)
    else:
        await warn_unresolved(ctx, written.runtime, change, logger)
    return change.rotated


async def refresh_fallbacks(
    ctx: OperatorContext, namespace: str, runtime_name: str, secret_name: str, logger: Logger
) -> bool:
    """When ``secret_name`` is a fallback's: nudge the pods if a fallback key changed.

    The pods carry a digest of every fallback's key fingerprint; a new digest
    annotates them (kubelet refreshes their Secret volumes at once, the
    sidecars follow the files) and, when it replaced an older one, posts
    ``FallbackCredentialRotated``. A replayed Secret finds the pods annotated
    already and does nothing.
    """
    runtime = await ctx.api.get(resource_path(API_VERSION, PLURAL, namespace, runtime_name))
    spec = (runtime or {}).get("spec")
    refs = fallback_secrets(spec) if isinstance(spec, Mapping) else {}
    if runtime is None or secret_name not in {ref[0] for ref in refs.values()}:
        return False
    prints = []
    for fallback, (secret, key) in sorted(refs.items()):
        found = await ctx.api.get(resource_path("v1", "secrets", namespace, secret))
        resolution = resolve_credential(secret, key, found)
        prints.append(f"{fallback}={resolution.fingerprint or resolution.reason}")
    version = hashlib.sha256(",".join(prints).encode()).hexdigest()[:16]
    pods = await runtime_pods(ctx, namespace, runtime_name)
    nudged, changed = await annotate_pods(
        ctx, namespace, pods, ANNOTATION_FALLBACK_VERSION, version
    )
    # A first annotation (a new pod, a first look) is no rotation to report.
    if changed:
        logger.info("Annotated %d pods of %s with fallback keys %s", nudged, runtime_name, prints)
        await post_event(
            ctx,
            runtime,
            type="Normal",
            reason="FallbackCredentialRotated",
            message=f"Fallback keys now {', '.join(prints)}; annotated {nudged} pods",
            log=logger,
        )
    return nudged > 0


async def warn_unresolved(
    ctx: OperatorContext,
    runtime: Mapping[str, Any],
    change: StatusChange,
    logger: Logger,
    *,
    again: bool = False,
) -> None:
    """A Warning Event when the key cannot be resolved and that verdict is new (or ``again``)."""
    resolved = change.status.condition(CONDITION_CREDENTIAL_RESOLVED)
    if resolved is None or resolved.status == "True":
        return
    if again or CONDITION_CREDENTIAL_RESOLVED in change.changed_conditions:
        await post_event(
            ctx,
            runtime,
            type="Warning",
            reason=resolved.reason,
            message=resolved.message,
            log=logger,
        )


async def on_secret_event(
    ctx: OperatorContext,
    *,
    namespace: str | None,
    name: str | None,
    index: kopf.Index[tuple[str, str], Uses],
    logger: Logger,
    digest: str | None = None,
) -> None:
    """A Secret was listed, added, modified or deleted: follow it in its runtimes.

    kopf does not retry event handlers, so transient API errors are retried
    here a few times; the resync loop catches whatever still slips through.
    ``digest`` (:func:`secret_digest` of the event's Secret; None when it was
    deleted) skips the runtimes altogether when every one of them already
    followed that very data: re-lists of the watch and label edits replay a
    Secret unchanged, and each pass costs two reads per runtime sharing it.
    """
    if not namespace or not name or (namespace, name) not in index:
        return
    key = (namespace, name)
    if digest is not None and ctx.secrets_followed.get(key) == digest:
        return
    ctx.secrets_followed.pop(key, None)
    followed = True
    for runtime, uses in sorted(set(index[namespace, name])):
        for delay in (*RETRY_DELAYS, None):
            try:
                if "key" in uses:
                    await refresh_credential(ctx, namespace, runtime, name, logger)
                if "fallback" in uses:
                    await refresh_fallbacks(ctx, namespace, runtime, name, logger)
                break
            except (KubeApiError, OSError, TimeoutError) as exc:
                if delay is None:
                    logger.error(
                        "Giving up on %s/%s until the next resync: %s", namespace, runtime, exc
                    )
                    followed = False
                    break
                logger.warning("Retrying %s/%s in %.0fs: %s", namespace, runtime, delay, exc)
                await asyncio.sleep(delay)
    if followed and digest is not None:
        ctx.secrets_followed[key] = digest
