"""The safety net: every few minutes, reconcile every runtime again.

Watches can miss events (a dropped stream, an operator restart mid-rotation),
so a background loop started by the operator's startup handler lists the
runtimes in scope and runs :func:`.reconciling.reconcile` on each. It
repairs a drifted ConfigMap, recovers a missed rotation (Event and pod
nudges included) and re-annotates pods that missed a nudge, and reports once more how many pods
serve the current key (``status.convergence``, see :mod:`.convergence`). It is a loop of
its own rather than a ``kopf.timer`` because kopf puts a finalizer on every
object with a timer, and a runtime's deletion must never wait for the
operator. Being outside kopf's handlers, everything it calls posts Events
through :mod:`.posting` (``kopf.event`` would raise there). It never dies of
an error: a runtime that fails is logged, counted and skipped, and so is a
whole pass. With peering, only the acting replica resyncs (``acting``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .context import OperatorContext
from .convergence import update_convergence
from .kubeapi import resource_path
from .models import API_VERSION, KIND, PLURAL
from .reconciling import reconcile
from .rotation import as_body, nudge_pods

__all__ = ["Acting", "resync_forever", "resync_once", "resync_one"]

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
    """Reconcile one runtime outside kopf's handlers, then nudge its pods and report convergence."""
    # Items of a list carry no apiVersion/kind (the list does); the Events and
    # the ConfigMap's owner reference need them.
    body = as_body({"apiVersion": API_VERSION, "kind": KIND, **raw})
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
    """One pass over every runtime in scope; how many were reconciled.

    A runtime that fails, whatever the error, is logged at ERROR (with the
    exception), counted (``resync_errors{scope=runtime}``) and skipped: one
    broken runtime must not starve the others. Listing errors propagate.
    """
    done = 0
    for raw in await _runtimes(ctx, namespaces):
        try:
            await resync_one(ctx, raw)
        except Exception as exc:
            meta = raw.get("metadata") or {}
            ctx.telemetry.resync_failed("runtime")
            # The traceback names code and the error, never a key: the key is
            # only ever decoded inside .status.resolve_credential.
            logger.error(
                "Resync of %s/%s failed: %s",
                meta.get("namespace"),
                meta.get("name"),
                exc,
                exc_info=exc,
            )
        else:
            done += 1
    return done


Acting = Callable[[], Awaitable[bool]]
"""Whether this replica should resync now (peering: only the acting one)."""


async def resync_forever(
    ctx: OperatorContext,
    namespaces: Sequence[str],
    interval: float,
    *,
    acting: Acting | None = None,
) -> None:
    """Sleep ``interval`` seconds, resync, repeat (until cancelled).

    Before each pass ``acting`` (when given) is asked whether to resync at
    all; a pass it declines is skipped. Nothing but cancellation ends the loop:
    a failed pass (listing failed, ``acting`` raised) is logged, counted
    (``resync_errors{scope=pass}``) and the next one comes as usual.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            if acting is not None and not await acting():
                logger.debug("Resync skipped: this replica is not the acting one")
                continue
            count = await resync_once(ctx, namespaces)
            logger.debug("Resynced %d runtimes", count)
        except Exception as exc:
            ctx.telemetry.resync_failed("pass")
            logger.error("Resync pass failed: %s", exc, exc_info=exc)
