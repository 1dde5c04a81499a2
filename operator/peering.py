"""Which replica acts: kopf's peering, as the operator's own loops need to know it.

Several replicas run with peering on (``deploy/`` and the chart run two). kopf
pauses every replica that sees a live peer of a higher *or equal* priority, so
each replica gets its own priority (:func:`random_priority`, the default of
``--priority``) and exactly one acts; the others serve the admission webhook
and take over when the acting one leaves (at once when it exits cleanly,
within the peering lifetime when it dies).

kopf keeps that verdict to itself, yet the operator's own background loops
(the safety-net resync of :mod:`.resync`) must run only where kopf's handlers
run. :func:`acting` applies kopf's rule to the peering object's status, which
lists every replica's identity, priority, lifetime and last keep-alive; the
operator passes its identity and priority to kopf, so both judge alike.

:func:`check_peering` tells what is missing when peering cannot work: kopf
only says so at DEBUG, and pauses every watch meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime
import fnmatch
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from .kubeapi import KubeApi, KubeApiError

__all__ = [
    "PEERING_GROUP_VERSION",
    "PeeringSettings",
    "acting",
    "check_peering",
    "is_acting",
    "own_identity",
    "random_priority",
    "report_peering",
]

log = logging.getLogger(__name__)

PEERING_GROUP_VERSION = "kopf.dev/v1"
PEERING_MANIFEST = "deploy/base/peering.yaml"
_MAX_PRIORITY = 2**31 - 1
_GLOB = set("*?[!")


def random_priority() -> int:
    """A priority for this replica: random, so two replicas (almost) never tie.

    kopf pauses replicas of equal priority all together ("Pausing all
    operators, including self"); with 2**31 values a tie between two replicas
    has a chance of one in two billion.
    """
    return random.SystemRandom().randint(1, _MAX_PRIORITY)


def own_identity() -> str:
    """This replica's peering identity: the pod's name (``POD_ID``), else host and a nonce."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@dataclass(frozen=True)
class PeeringSettings:
    """Where the peering object is and who this replica is in it."""

    name: str
    """The KopfPeering / ClusterKopfPeering object shared by the replicas."""
    identity: str
    priority: int
    standalone: bool = False
    """No peering at all: this replica always acts."""
    namespaces: Sequence[str] = field(default_factory=tuple)
    """Empty: cluster-wide (a ClusterKopfPeering); else a KopfPeering in each namespace."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def plural(self) -> str:
        return "clusterkopfpeerings" if self.clusterwide else "kopfpeerings"


def _deadline(info: Mapping[str, Any]) -> datetime.datetime | None:
    try:
        seen = datetime.datetime.fromisoformat(str(info["lastseen"]))
        lifetime = datetime.timedelta(seconds=int(info.get("lifetime", 60)))
    except (KeyError, TypeError, ValueError):
        return None
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    return seen + lifetime


def acting(status: Mapping[str, Any], identity: str, priority: int, now: datetime.datetime) -> bool:
    """kopf's rule on one peering object's status: act unless a live other peer
    has a priority at least ours (an equal one pauses both, as kopf does)."""
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        deadline = _deadline(info)
        if deadline is None or deadline <= now:
            continue  # dead (or unreadable): kopf cleans it up
        try:
            theirs = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if theirs >= priority:
            return False
    return True


def _object_path(settings: PeeringSettings, namespace: str | None) -> str:
    base = f"/apis/{PEERING_GROUP_VERSION}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    return f"{base}/{settings.plural}/{settings.name}"


async def _peering_objects(api: KubeApi, settings: PeeringSettings) -> list[dict[str, Any]]:
    if settings.clusterwide:
        found = await api.get(_object_path(settings, None))
        return [found] if found is not None else []
    exact = [ns for ns in settings.namespaces if not set(ns) & _GLOB]
    objects = [obj for ns in exact if (obj := await api.get(_object_path(settings, ns)))]
    patterns = [ns for ns in settings.namespaces if set(ns) & _GLOB]
    if patterns:
        for obj in await api.list_items(f"/apis/{PEERING_GROUP_VERSION}/{settings.plural}"):
            meta = obj.get("metadata") or {}
            ns = str(meta.get("namespace") or "")
            wanted = [p for p in patterns if not p.startswith("!")] or ["*"]
            if (
                meta.get("name") == settings.name
                and any(fnmatch.fnmatchcase(ns, p) for p in wanted)
                and not any(fnmatch.fnmatchcase(ns, p[1:]) for p in patterns if p[0] == "!")
            ):
                objects.append(obj)
    return objects


async def is_acting(
    api: KubeApi, settings: PeeringSettings, now: datetime.datetime | None = None
) -> bool:
    """Whether this replica acts now (kopf pauses it everywhere if any peering says so).

    A peering object that cannot be read counts as not acting: two replicas
    acting at once is worse than a resync pass skipped.
    """
    if settings.standalone:
        return True
    moment = now or datetime.datetime.now(datetime.UTC)
    try:
        objects = await _peering_objects(api, settings)
    except (KubeApiError, OSError, TimeoutError):
        return False
    return all(
        acting(obj.get("status") or {}, settings.identity, settings.priority, moment)
        for obj in objects
    )


async def check_peering(api: KubeApi, settings: PeeringSettings) -> str | None:
    """What keeps peering from working, in words that say what to apply; None if nothing.

    kopf, told to peer, pauses every watch until its peering resource exists
    and says so only at DEBUG; without the peering *object* it never pauses,
    so every replica would act at once.
    """
    if settings.standalone:
        return None
    discovery = await api.get(f"/apis/{PEERING_GROUP_VERSION}")
    served = {
        r.get("name") for r in (discovery or {}).get("resources") or [] if isinstance(r, Mapping)
    }
    if settings.plural not in served:
        return (
            f"peering is on but the {settings.plural}.kopf.dev CRD is not installed, so "
            f"nothing is reconciled: kubectl apply -f {PEERING_MANIFEST} "
            "(or run with --standalone for a single replica)"
        )
    kind = "ClusterKopfPeering" if settings.clusterwide else "KopfPeering"
    if settings.clusterwide:
        if await api.get(_object_path(settings, None)) is None:
            return (
                f"peering is on but the {kind} {settings.name!r} does not exist, so every "
                f"replica acts at once: kubectl apply -f {PEERING_MANIFEST}"
            )
        return None
    missing = [
        ns
        for ns in settings.namespaces
        if not set(ns) & _GLOB and await api.get(_object_path(settings, ns)) is None
    ]
    if missing:
        return (
            f"peering is on but the {kind} {settings.name!r} does not exist in "
            f"{', '.join(missing)}, so every replica acts at once there: create it "
            f"(as in {PEERING_MANIFEST}, kind {kind}, in each watched namespace)"
        )
    return None


async def report_peering(
    api: Callable[[], KubeApi], settings: PeeringSettings, *, interval: float = 30.0
) -> None:
    """Check the peering every ``interval`` seconds; ERROR while it is broken, INFO when healed.

    A problem is logged when found and when it changes, not on every check.
    """
    last: str | None = None
    while True:
        try:
            problem = await check_peering(api(), settings)
        except (KubeApiError, OSError, TimeoutError, kopf.TemporaryError) as exc:
            # Not logged in yet, or the API is unreachable: kopf reports that itself.
            log.debug("Cannot check the peering: %s", exc)
        else:
            if problem is not None and problem != last:
                log.error("Peering: %s", problem)
            elif problem is None and last is not None:
                log.info("Peering: %s %r found", settings.plural, settings.name)
            last = problem
        await asyncio.sleep(interval)
