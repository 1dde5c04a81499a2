"""Kubernetes Events about runtimes, posted through the operator's own API client.

Reconciliation (:mod:`.reconciling`), the Secret watch (:mod:`.rotation`),
the resync loop (:mod:`.resync`) and the deletion notice (:mod:`.registry`)
tell users what happened with a core/v1 Event on the runtime
(``kubectl describe oair``). They post it with :func:`post_event` rather than
``kopf.event``/``kopf.warn``: those need a kopf handler's context and raise
:class:`LookupError` anywhere else, such as in the resync loop, a background
task. An Event is auxiliary: a failure to post one is logged at WARNING and
never fails the caller.

Messages carry fingerprints, Secret names and key names, never a key.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from .kubeapi import resource_path
from .models import API_VERSION, KIND

if TYPE_CHECKING:
    from .context import OperatorContext

__all__ = ["COMPONENT", "EventType", "build_event", "involved_object", "post_event"]

logger = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
Logger = logging.Logger | logging.LoggerAdapter[Any]

COMPONENT = "openai-runtime-operator"
MAX_MESSAGE = 1024
"""The API server refuses longer notes on Events that carry an ``eventTime``."""
MAX_NAME = 253
MAX_INSTANCE = 128


def _instance() -> str:
    # In a pod the hostname is the pod's name: which replica posted.
    return (socket.gethostname() or COMPONENT)[:MAX_INSTANCE]


def involved_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The reference to ``obj`` an Event is about.

    Objects read from a list carry no ``apiVersion``/``kind`` (the list does);
    Events here are about runtimes, so those default to the OpenAiRuntime's.
    """
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": obj.get("apiVersion") or API_VERSION,
        "kind": obj.get("kind") or KIND,
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {key: value for key, value in ref.items() if value is not None}


def _shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - 3) // 2
    return f"{message[:half]}...{message[-(MAX_MESSAGE - 3 - half) :]}"


def build_event(
    obj: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type: EventType = "Normal",
    now: datetime | None = None,
) -> dict[str, Any]:
    """The core/v1 Event to create in ``obj``'s namespace.

    It has a name of its own, ``<object>.<random hex>`` (as kubectl's
    recorders name them; the emulator the tests use has no ``generateName``).
    With an ``eventTime`` the API server also wants ``reportingInstance`` and
    ``action``; the first/last timestamps feed ``kubectl get events``.
    """
    ref = involved_object(obj)
    when = now or datetime.now(UTC)
    suffix = secrets.token_hex(8)
    stem = str(ref.get("name") or "runtime")[: MAX_NAME - len(suffix) - 1]
    seconds = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{stem}.{suffix}", "namespace": ref.get("namespace")},
        "involvedObject": ref,
        "reason": reason,
        "message": _shorten(message),
        "type": type,
        "action": reason,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": _instance(),
        "firstTimestamp": seconds,
        "lastTimestamp": seconds,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "count": 1,
    }


async def post_event(
    ctx: OperatorContext,
    obj: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type: EventType = "Normal",
    log: Logger | None = None,
) -> bool:
    """Post an Event about ``obj`` (a runtime's body); True once the API accepted it.

    Never raises (but for cancellation): an Event that cannot be posted is
    logged at WARNING on ``log`` (default: this module's logger).
    """
    event = build_event(obj, reason=reason, message=message, type=type)
    namespace = event["metadata"]["namespace"]
    try:
        if not namespace:
            raise ValueError("the object has no namespace")
        await ctx.api.create(resource_path("v1", "events", namespace), event)
    except Exception as exc:  # auxiliary: whatever went wrong, the caller carries on
        (log or logger).warning(
            "Could not post %s Event %s about %s/%s: %s",
            type,
            reason,
            namespace,
            event["involvedObject"].get("name"),
            exc,
        )
        return False
    return True
