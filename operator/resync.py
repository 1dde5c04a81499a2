"""The safety net: every few minutes, reconcile every runtime again.

Watches can miss events (a dropped stream, an operator restart mid-rotation),
so a background loop started by the operator's startup handler lists the
runtimes in scope and runs :func:`.reconciling.reconcile` on each. It
repairs a drifted ConfigMap, recovers a missed rotation (Event and pod
nudges included) and re-annotates pods that missed a nudge, and reports once more how many pods
serve the current key (``status.convergence``, see :mod:`.convergence`). It is a loop of
its own rather than a ``kopf.timer`` because kopf puts a finalizer on every
object with a timer, and a runtime's deletion must never wait for the
operator.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import kopf

from .context import OperatorContext
from .convergence import update_convergence
from .kubeapi import KubeApiError, resource_path
from .models import API_VERSION, PLURAL
from .reconciling import reconcile
from .rotation import as_body, nudge_pods

__all__ = ["resync_forever", "resync_once"]

logger = logging.getLogger(__name__)


async def _runtimes(ctx: OperatorContext, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    if not namespaces or any(set(ns) & set("*?[!") for ns in namespaces):
        # Glob patterns (as kopf accepts them): list everything, keep what matches.
        every = await ctx.api.list_items(resource_path(API_VERSION, PLURAL))
        if not namespaces:
            return every
        wanted = [ns for ns in namespaces if not ns.startswith("!")]
        unwanted = [ns[1:] for ns in namespaces if ns.startswith("!")]
        return [
            raw
            for raw in every
            if (ns := str(raw.get("metadata", {}).get("namespace", "")))
            and any(fnmatch.fnmatchcase(ns, p) for p in wanted or ["*"])
            and not any(fnmatch.fnmatchcase(ns, p) for p in unwanted)
        ]
    found: list[dict[str, Any]] = []
    for namespace in namespaces:
        found += await ctx.api.list_items(resource_path(API_VERSION, PLURAL, namespace))
    return found


async def resync_one(ctx: OperatorContext, raw: dict[str, Any]) -> None:
    """Reconcile one runtime outside kopf's handlers and write its status patch."""
    body = as_body(raw)
    namespace, name = body.metadata.namespace, body.metadata.name
    if not namespace or not name or body.metadata.get("deletionTimestamp"):
        return
    change = await reconcile(
        ctx,
        body=body,
        spec=body.spec,
        meta=body.metadata,
        namespace=namespace,
        name=name,
        logger=logger,
    )
    if change is None:
        return
    credential = change.status.credential
    resolved = change.status.condition("CredentialResolved")
    if credential is not None and resolved is not None and resolved.status == "True":
        await nudge_pods(ctx, namespace, name, credential.fingerprint, logger)
    if credential is not None:
        await update_convergence(ctx, namespace, name)


async def resync_once(ctx: OperatorContext, namespaces: Sequence[str]) -> int:
    """One pass over every runtime in scope; how many were reconciled."""
    done = 0
    for raw in await _runtimes(ctx, namespaces):
        try:
            await resync_one(ctx, raw)
            done += 1
        except (KubeApiError, kopf.TemporaryError, OSError, TimeoutError) as exc:
            meta = raw.get("metadata", {})
            logger.warning(
                "Resync of %s/%s failed: %s", meta.get("namespace"), meta.get("name"), exc
            )
    return done


async def resync_forever(ctx: OperatorContext, namespaces: Sequence[str], interval: float) -> None:
    """Sleep ``interval`` seconds, resync, repeat (until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        try:
            count = await resync_once(ctx, namespaces)
            logger.debug("Resynced %d runtimes", count)
        except (KubeApiError, kopf.TemporaryError, OSError, TimeoutError) as exc:
            logger.warning("Resync failed: %s", exc)
