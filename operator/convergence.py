"""Convergence: how many of a runtime's pods already serve its current key.

After a rotation the pods' sidecars pick the new key up from their Secret
volume once kubelet refreshes it (the nudge in :mod:`.rotation` hurries that
along). Each sidecar shows the fingerprint it serves on its admin listener
(``GET http://<podIP>:<admin port>/status`` -> ``credential.fingerprint``, see
``openai_runtime_sidecar.admin``; port and path from
:mod:`openai_runtime_sidecar.contract`). :func:`probe_pods` asks every Running pod
of the runtime, a few at a time with a short timeout; a pod that does not
answer, or answers with something else, counts as not current and never fails
the caller. :func:`update_convergence` writes ``status.convergence = {pods,
current}`` when it changed, and only while the fingerprint it checked against
is still the runtime's; :func:`follow_convergence` repeats that with a bounded
backoff until every pod is current or the attempts run out.

Only fingerprints travel: the sidecar never shows the key, and nothing here
reads a Secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from openai_runtime_sidecar.contract import ADMIN_PORT, STATUS_PATH

from .kubeapi import resource_path
from .models import API_VERSION, LABEL_RUNTIME, PLURAL, ConvergenceStatus
from .status import load_status

if TYPE_CHECKING:
    from .context import OperatorContext

__all__ = [
    "ConvergenceSettings",
    "follow_convergence",
    "pod_address",
    "pod_statuses",
    "probe_pods",
    "runtime_pods",
    "update_convergence",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConvergenceSettings:
    """Where the sidecars' admin listeners are and how patiently to ask them."""

    port: int = ADMIN_PORT
    scheme: str = "http"
    path: str = STATUS_PATH
    timeout: float = 1.0
    """Seconds per pod and request, connecting included."""
    concurrency: int = 16
    """At most this many pods asked at once."""
    backoff: Sequence[float] = (1.0, 2.0, 4.0)
    """Seconds between checks after a rotation (one check more than delays)."""


async def runtime_pods(ctx: OperatorContext, namespace: str, name: str) -> list[dict[str, Any]]:
    """Pods opted in to runtime ``name`` (filtered here too: selectors are a hint)."""
    pods = await ctx.api.list_items(
        resource_path("v1", "pods", namespace), label_selector=f"{LABEL_RUNTIME}={name}"
    )
    return [
        pod
        for pod in pods
        if (pod.get("metadata", {}).get("labels") or {}).get(LABEL_RUNTIME) == name
        and not pod.get("metadata", {}).get("deletionTimestamp")
    ]


def pod_address(pod: Mapping[str, Any]) -> str | None:
    """The IP of a Running pod, or None when there is nothing to ask."""
    status = pod.get("status") or {}
    if not isinstance(status, Mapping) or status.get("phase") != "Running":
        return None
    ip = status.get("podIP")
    return ip if isinstance(ip, str) and ip else None


def _url(settings: ConvergenceSettings, ip: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{settings.scheme}://{host}:{settings.port}{settings.path}"


async def _status_of(session: aiohttp.ClientSession, url: str, gate: asyncio.Semaphore) -> Any:
    async with gate:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            logger.debug("No status from %s: %s", url, exc)
            return None


async def pod_statuses(
    pods: Sequence[Mapping[str, Any]], settings: ConvergenceSettings
) -> list[Any]:
    """Each pod's sidecar ``/status`` document, in the pods' order; None where there is
    none (not Running, no answer, not JSON). Convergence and budgets read these."""
    urls = [_url(settings, ip) if (ip := pod_address(pod)) else None for pod in pods]
    if not any(urls):
        return [None] * len(pods)
    gate = asyncio.Semaphore(max(1, settings.concurrency))
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        asked = [_status_of(session, u, gate) for u in urls if u is not None]
        answers = iter(await asyncio.gather(*asked))
    return [next(answers) if u is not None else None for u in urls]


def _served_fingerprint(document: Any) -> str | None:
    credential = document.get("credential") if isinstance(document, Mapping) else None
    served = credential.get("fingerprint") if isinstance(credential, Mapping) else None
    return served if isinstance(served, str) else None


async def probe_pods(
    pods: Sequence[Mapping[str, Any]], fp: str, settings: ConvergenceSettings
) -> ConvergenceStatus:
    """``pods``: all of them; ``current``: those whose sidecar says it serves ``fp``."""
    documents = await pod_statuses(pods, settings)
    current = sum(1 for document in documents if _served_fingerprint(document) == fp)
    return ConvergenceStatus(pods=len(pods), current=current)


async def update_convergence(
    ctx: OperatorContext, namespace: str, name: str
) -> ConvergenceStatus | None:
    """Check the runtime's pods once and record the result; None when there is no key yet.

    The write is skipped when nothing changed, and when the runtime's
    fingerprint moved on while the pods were asked (the newer rotation's
    own check reports then).
    """
    path = resource_path(API_VERSION, PLURAL, namespace, name)
    runtime = await ctx.api.get(path)
    if runtime is None:
        return None
    credential = load_status(runtime.get("status")).credential
    if credential is None:
        return None
    fp = credential.fingerprint
    result = await probe_pods(await runtime_pods(ctx, namespace, name), fp, ctx.convergence)
    async with ctx.lock(namespace, name):
        fresh = await ctx.api.get(path)
        if fresh is None:
            return None
        status = load_status(fresh.get("status"))
        if status.credential is None or status.credential.fingerprint != fp:
            return None
        if status.convergence != result:
            dumped = result.model_dump(by_alias=True, mode="json")
            await ctx.api.merge_patch(f"{path}/status", {"status": {"convergence": dumped}})
    return result


async def follow_convergence(ctx: OperatorContext, namespace: str, name: str) -> None:
    """After a rotation: check, wait, check again, until all pods are current.

    Runs in the background (:meth:`.OperatorContext.background_for`), so it
    never holds up a handler; API errors end it quietly (the resync checks again).
    """
    delays = [*ctx.convergence.backoff, None]
    for delay in delays:
        try:
            result = await update_convergence(ctx, namespace, name)
        except Exception as exc:  # never let a report break anything
            logger.warning("Convergence check of %s/%s failed: %s", namespace, name, exc)
            return
        if result is None or result.current >= result.pods or delay is None:
            if result is not None:
                logger.info(
                    "Runtime %s/%s: %d of %d pods serve the current key",
                    namespace,
                    name,
                    result.current,
                    result.pods,
                )
            return
        await asyncio.sleep(delay)
