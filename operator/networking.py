"""The NetworkPolicy that fences a runtime's sidecar admin port off the pod network.

The sidecar's admin listener (``--sidecar-admin-port``, 9464) answers
``/status`` and ``/metrics`` on the pod IP, so without a policy every pod of
the cluster can reach it. A NetworkPolicy only selects pods of its own
namespace, and deploy/ cannot know the apps' namespaces, so the operator
renders one per runtime, beside its ConfigMap and owned by the runtime:
``<runtime>-openai-runtime-admin`` selecting ``infer.atomr.io/runtime: <runtime>``.

It admits the admin port only from the operator's namespace (convergence asks
each pod's ``/status``) and from the monitoring namespaces (Prometheus scrapes
``/metrics``). Every other port must stay as open as it was: a policy that
selects a pod for ingress denies whatever no rule admits, which would cut the
apps' own traffic. A rule cannot say "every port but one", so the rules admit
every source on the TCP ranges around the admin port (``endPort``, GA since
Kubernetes 1.25) and on all of UDP. Protocols a policy cannot name (ICMP) or
that not every CNI supports (SCTP) are denied by the CNIs that enforce
policies; apps needing them should not be fenced this way
(``--no-sidecar-network-policy``).

Kubelet's probes come from the node, whose traffic to its own pods most CNIs
exempt from NetworkPolicy, so the sidecar's probes on the admin port keep
working without a rule for the nodes (a CNI that does not would need one). Where
the CNI does not enforce policies the object is inert, which is why it is
on by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import kopf

from .kubeapi import KubeApiError, resource_path
from .models import LABEL_RUNTIME

if TYPE_CHECKING:
    from .context import OperatorContext

__all__ = [
    "NETWORK_POLICY_API",
    "NetworkPolicySettings",
    "ensure_network_policy",
    "network_policy_name",
    "render_network_policy",
]

NETWORK_POLICY_API = "networking.k8s.io/v1"
MAX_PORT = 65535
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
MANAGED_BY = "openai-runtime-operator"


@dataclass(frozen=True, slots=True)
class NetworkPolicySettings:
    """Whom the sidecars' admin port admits, and which port that is."""

    operator_namespace: str
    """Where the operator runs: its convergence checks ask every pod's ``/status``."""
    monitoring_namespaces: Sequence[str] = ("monitoring",)
    """Where Prometheus runs, scraping the sidecars' ``/metrics``."""
    port: int = 9464
    """The sidecars' admin port (the same as the convergence checks ask)."""


def network_policy_name(runtime: str) -> str:
    return f"{runtime}-openai-runtime-admin"


def _namespace_peer(namespace: str) -> dict[str, Any]:
    # The label the API server sets on every namespace (GA since 1.22), so
    # nobody has to label the operator's or the monitoring namespace.
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}}


def _range(protocol: str, first: int, last: int) -> dict[str, Any]:
    port: dict[str, Any] = {"protocol": protocol, "port": first}
    if last > first:
        port["endPort"] = last
    return port


def render_network_policy(
    owner: Mapping[str, Any], namespace: str, name: str, settings: NetworkPolicySettings
) -> dict[str, Any]:
    """The desired NetworkPolicy of one runtime, owned by it."""
    admin = settings.port
    others = [
        _range("TCP", first, last)
        for first, last in ((1, admin - 1), (admin + 1, MAX_PORT))
        if first <= last
    ]
    # All of UDP: the admin port is TCP only, UDP on its number is the app's.
    others.append(_range("UDP", 1, MAX_PORT))
    allowed = list(dict.fromkeys([settings.operator_namespace, *settings.monitoring_namespaces]))
    body: dict[str, Any] = {
        "apiVersion": NETWORK_POLICY_API,
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(name),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "openai-runtime",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_RUNTIME: name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                # The apps' own ports, from anywhere, as before the policy.
                {"ports": others},
                # The admin port: convergence checks and Prometheus only.
                {
                    "from": [_namespace_peer(ns) for ns in allowed],
                    "ports": [{"protocol": "TCP", "port": admin}],
                },
            ],
        },
    }
    # As for the ConfigMap: garbage collection deletes it with the runtime, and
    # blockOwnerDeletion: true would need update on openairuntimes/finalizers
    # under OwnerReferencesPermissionEnforcement.
    kopf.append_owner_reference(body, owner=_as_body(owner), block_owner_deletion=False)
    return body


def _as_body(owner: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, dict(owner)))


def _owned_by(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    refs = existing.get("metadata", {}).get("ownerReferences") or []
    return any(isinstance(ref, Mapping) and dict(ref) == dict(desired) for ref in refs)


async def ensure_network_policy(ctx: OperatorContext, desired: Mapping[str, Any]) -> str:
    """Create the policy, or patch it where it differs; ``created``/``patched``/``unchanged``."""
    meta = desired["metadata"]
    collection = resource_path(NETWORK_POLICY_API, "networkpolicies", meta["namespace"])
    path = resource_path(NETWORK_POLICY_API, "networkpolicies", meta["namespace"], meta["name"])
    existing = await ctx.api.get(path)
    if existing is None:
        try:
            await ctx.api.create(collection, desired)
            return "created"
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            existing = await ctx.api.get(path) or {}
    spec = existing.get("spec") or {}
    labels = existing.get("metadata", {}).get("labels") or {}
    owner = meta["ownerReferences"][0]
    if (
        all(spec.get(k) == v for k, v in desired["spec"].items())
        and _owned_by(existing, owner)
        and all(labels.get(k) == v for k, v in meta["labels"].items())
    ):
        return "unchanged"
    refs = [
        r
        for r in existing.get("metadata", {}).get("ownerReferences") or []
        if isinstance(r, Mapping) and r.get("uid") != owner.get("uid")
    ]
    # podSelector is replaced as a whole (its other keys and labels nulled): a
    # merge patch would keep what someone added, and select fewer pods.
    current = spec.get("podSelector") or {}
    selector: dict[str, Any] = {k: None for k in current if k != "matchLabels"}
    selector["matchLabels"] = {
        **dict.fromkeys(current.get("matchLabels") or {}),
        **desired["spec"]["podSelector"]["matchLabels"],
    }
    await ctx.api.merge_patch(
        path,
        {
            "metadata": {"labels": meta["labels"], "ownerReferences": [*refs, owner]},
            # Lists (policyTypes, ingress) are replaced whole by a merge patch.
            "spec": {**desired["spec"], "podSelector": selector},
        },
    )
    return "patched"
