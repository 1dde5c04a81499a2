"""Objects a runtime owns: its ConfigMap and its NetworkPolicy.

:mod:`.reconciling` and :mod:`.networking` render them whole from the
runtime, create them once, and patch them only where they drifted. What they
share lives here: the owner reference, the create that tolerates a racing
replica, and the metadata a patch must restore (the labels, and the
runtime's reference next to anyone else's). Each caller compares and patches
its own body (``data``, ``spec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from .kubeapi import KubeApi, KubeApiError, resource_path

__all__ = ["existing_or_created", "metadata_in_place", "metadata_patch", "own"]


def own(body: dict[str, Any], owner: Mapping[str, Any]) -> None:
    """Make ``owner`` (a runtime) the controller of ``body``, without blocking its deletion.

    Garbage collection deletes the object with its runtime all the same, and
    blockOwnerDeletion: true would need ``update`` on openairuntimes/finalizers
    wherever OwnerReferencesPermissionEnforcement runs (OpenShift turns it on).
    """
    owner_body = kopf.Body(cast(kopf.RawBody, dict(owner)))
    kopf.append_owner_reference(body, owner=owner_body, block_owner_deletion=False)


async def existing_or_created(
    api: KubeApi, api_version: str, plural: str, desired: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """The object's path, and the object as stored; None when this call created it.

    A 409 means another replica created it meanwhile: that one is read back.
    """
    meta = desired["metadata"]
    path = resource_path(api_version, plural, meta["namespace"], meta["name"])
    existing = await api.get(path)
    if existing is None:
        try:
            await api.create(resource_path(api_version, plural, meta["namespace"]), desired)
            return path, None
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            existing = await api.get(path) or {}
    return path, existing


def _reference(desired: Mapping[str, Any]) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], desired["metadata"]["ownerReferences"][0])


def metadata_in_place(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """The runtime's exact reference (an older, blocking one is redone) and the labels are there."""
    meta = existing.get("metadata") or {}
    wanted = dict(_reference(desired))
    refs = meta.get("ownerReferences") or []
    labels = meta.get("labels") or {}
    return any(isinstance(ref, Mapping) and dict(ref) == wanted for ref in refs) and all(
        labels.get(k) == v for k, v in desired["metadata"]["labels"].items()
    )


def metadata_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metadata`` of a merge patch: the labels, others' references kept, ours replaced."""
    reference = _reference(desired)
    others = [
        ref
        for ref in (existing.get("metadata") or {}).get("ownerReferences") or []
        if isinstance(ref, Mapping) and ref.get("uid") != reference.get("uid")
    ]
    return {"labels": desired["metadata"]["labels"], "ownerReferences": [*others, reference]}
