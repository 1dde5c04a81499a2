"""The NetworkPolicy that fences a runtime's sidecar admin port off the pod network.

The sidecar's admin listener (``--sidecar-admin-port``, by default the
contract's ``ADMIN_PORT``) answers
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
from typing import TYPE_CHECKING, Any

from openai_runtime_sidecar.contract import ADMIN_PORT

from .models import LABEL_RUNTIME
from .owning import existing_or_created, metadata_in_place, metadata_patch, own

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
    port: int = ADMIN_PORT
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
    own(body, owner)
    return body


async def ensure_network_policy(ctx: OperatorContext, desired: Mapping[str, Any]) -> str:
    """Create the policy, or patch it where it differs; ``created``/``patched``/``unchanged``."""
    path, existing = await existing_or_created(
        ctx.api, NETWORK_POLICY_API, "networkpolicies", desired
    )
    if existing is None:
        return "created"
    spec = existing.get("spec") or {}
    if all(spec.get(k) == v for k, v in desired["spec"].items()) and metadata_in_place(
        existing, desired
    ):
        return "unchanged"
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
            "metadata": metadata_patch(existing, desired),
            # Lists (policyTypes, ingress) are replaced whole by a merge patch.
            "spec": {**desired["spec"], "podSelector": selector},
        },
    )
    return "patched"
