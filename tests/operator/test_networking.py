"""The NetworkPolicy fencing off each runtime's sidecar admin port (:mod:`networking`).

Rendered: it must be an object the API server accepts, select the runtime's
pods, admit the admin port only from the operator's and the monitoring
namespaces and leave every other port open (a selected pod denies whatever no
rule admits). In-process against kmock: a runtime gets its policy, a changed
setting or a tampered policy is patched back, and switched off none is made.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from openai_runtime_operator.main import build_parser, main, network_policy_settings
from openai_runtime_operator.models import LABEL_RUNTIME
from openai_runtime_operator.networking import NetworkPolicySettings, render_network_policy
from openai_runtime_operator.resync import resync_once

from ..k8svalidate import schema_problems
from ..support import OLD_KEY
from .test_operator import MERGE, NS, RUNTIMES, Cluster, eventually, ready, runtime, secret

POLICIES = "networking.k8s.io/v1/networkpolicies"
POLICIES_URL = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"
OPERATOR_NS = "openai-runtime-system"
SETTINGS = NetworkPolicySettings(OPERATOR_NS, ("monitoring",))
OWNER = runtime("alpha")
# endPort is GA since 1.25; the oldest version deploy/ and the chart are checked at too.
K8S_VERSIONS = ("1.30.0", "latest")


def _peers(rule: dict[str, Any]) -> list[str]:
    return [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]
    ]


def _open_ports(policy: dict[str, Any], protocol: str) -> set[int]:
    """Ports of ``protocol`` that every source may reach."""
    found: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        if "from" in rule:
            continue
        for port in rule["ports"]:
            if port["protocol"] == protocol:
                found.update(range(port["port"], port.get("endPort", port["port"]) + 1))
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_policy_fits_the_kubernetes_schema(version: str) -> None:
    for port in (1, 9464, 65535):
        policy = render_network_policy(OWNER, NS, "alpha", dataclasses.replace(SETTINGS, port=port))
        assert not schema_problems([policy], version, ()), port


def test_rendered_policy_fences_only_the_admin_port() -> None:
    policy = render_network_policy(OWNER, NS, "alpha", SETTINGS)
    assert policy["metadata"]["name"] == "alpha-openai-runtime-admin"
    assert policy["metadata"]["namespace"] == NS
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {LABEL_RUNTIME: "alpha"}}
    assert spec["policyTypes"] == ["Ingress"]
    everyone = set(range(1, 65536))
    assert _open_ports(policy, "TCP") == everyone - {9464}
    assert _open_ports(policy, "UDP") == everyone
    (admin,) = [r for r in spec["ingress"] if "from" in r]
    assert admin["ports"] == [{"protocol": "TCP", "port": 9464}]
    assert _peers(admin) == [OPERATOR_NS, "monitoring"]
    [owner] = policy["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-alpha" and owner["blockOwnerDeletion"] is False


def test_rendered_policy_at_the_edges_of_the_port_range() -> None:
    for port, tcp in ((1, set(range(2, 65536))), (65535, set(range(1, 65535)))):
        policy = render_network_policy(OWNER, NS, "alpha", dataclasses.replace(SETTINGS, port=port))
        assert _open_ports(policy, "TCP") == tcp
    # The operator's namespace given as a monitoring one too: one peer, not two.
    same = dataclasses.replace(SETTINGS, monitoring_namespaces=(OPERATOR_NS, "prom"))
    (admin,) = [
        r for r in render_network_policy(OWNER, NS, "a", same)["spec"]["ingress"] if "from" in r
    ]
    assert _peers(admin) == [OPERATOR_NS, "prom"]


# --- the command line -------------------------------------------------------------------


def _settings(argv: list[str]) -> NetworkPolicySettings | None:
    return network_policy_settings(build_parser().parse_args(argv), logging.getLogger(__name__))


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", OPERATOR_NS)
    assert _settings([]) == NetworkPolicySettings(OPERATOR_NS, ("monitoring",), 9464)
    assert _settings(
        [
            "--monitoring-namespace",
            "prom",
            "--monitoring-namespace=obs",
            "--sidecar-admin-port=9000",
        ]
    ) == NetworkPolicySettings(OPERATOR_NS, ("prom", "obs"), 9000)
    assert _settings(["--webhook-namespace", "ops"]) == NetworkPolicySettings(
        "ops", ("monitoring",)
    )
    assert _settings(["--no-sidecar-network-policy"]) is None
    assert _settings(["--sidecar-network-policy"]) is not None


def test_unknown_operator_namespace_makes_no_policy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with caplog.at_level(logging.WARNING):
        assert _settings([]) is None
    assert "POD_NAMESPACE" in caplog.text


def test_bad_monitoring_namespace_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--monitoring-namespace", "Not_A_Namespace"])
    assert exc.value.code == 2


# --- in-process against kmock -----------------------------------------------------------


def _policy(operator: Cluster, name: str = "alpha") -> dict[str, Any] | None:
    return operator.get(POLICIES, f"{name}-openai-runtime-admin")


def _with_alpha(operator: Cluster) -> None:
    """Runtime ``alpha`` and its key Secret, with the network policy switched on."""
    operator.kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    operator.kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    operator.ctx.network_policy = SETTINGS


async def _serving_alpha(operator: Cluster) -> None:
    """The operator started on :func:`_with_alpha`, its policy written, ``alpha`` Ready."""
    _with_alpha(operator)
    await operator.start()
    await eventually(lambda: _policy(operator), "NetworkPolicy")
    await eventually(ready(operator, "alpha"), "Ready=True")


async def test_runtime_gets_its_network_policy(operator: Cluster) -> None:
    _with_alpha(operator)
    await operator.start()

    policy = await eventually(lambda: _policy(operator), "NetworkPolicy")
    await eventually(ready(operator, "alpha"), "Ready=True")
    assert policy["spec"] == render_network_policy(OWNER, NS, "alpha", SETTINGS)["spec"]
    [owner] = policy["metadata"]["ownerReferences"]
    assert owner["kind"] == "OpenAiRuntime" and owner["uid"] == "uid-alpha"
    assert owner["blockOwnerDeletion"] is False
    assert not schema_problems([render_network_policy(OWNER, NS, "alpha", SETTINGS)], "latest", ())

    # Unchanged: a resync writes nothing.
    assert await resync_once(operator.ctx, [NS]) == 1
    assert not operator.requests("PATCH", "/networkpolicies/")


async def test_changed_monitoring_namespace_patches_the_policy(operator: Cluster) -> None:
    await _serving_alpha(operator)

    # As after a restart with --monitoring-namespace=prometheus.
    operator.ctx.network_policy = dataclasses.replace(
        SETTINGS, monitoring_namespaces=("prometheus",)
    )
    assert await resync_once(operator.ctx, [NS]) == 1
    policy = _policy(operator)
    assert policy is not None
    (admin,) = [r for r in policy["spec"]["ingress"] if "from" in r]
    assert _peers(admin) == [OPERATOR_NS, "prometheus"]
    assert len(operator.requests("PATCH", "/networkpolicies/")) == 1


async def test_tampered_selector_is_put_back(operator: Cluster) -> None:
    await _serving_alpha(operator)

    # A narrower selector would leave some of the runtime's pods unfenced.
    await operator.kmock.patch(
        f"{POLICIES_URL}/alpha-openai-runtime-admin",
        json={"spec": {"podSelector": {"matchLabels": {"tier": "x"}}, "ingress": []}},
        headers=MERGE,
    )
    assert await resync_once(operator.ctx, [NS]) == 1
    policy = _policy(operator)
    assert policy is not None
    assert policy["spec"] == render_network_policy(OWNER, NS, "alpha", SETTINGS)["spec"]


async def test_switched_off_makes_no_policy(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    assert operator.ctx.network_policy is None
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready=True")
    assert operator.get("v1/configmaps", "alpha-openai-runtime") is not None
    assert await resync_once(operator.ctx, [NS]) == 1
    assert _policy(operator) is None
    assert not [r for r in list(kmock) if "/networkpolicies" in str(r.url)]


async def test_forbidden_policy_leaves_the_runtime_ready(
    operator: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade that kept the old RBAC: the config and status still go through."""
    from openai_runtime_operator import reconciling
    from openai_runtime_operator.kubeapi import KubeApiError

    async def forbidden(*_: Any) -> str:
        raise KubeApiError("POST", POLICIES_URL, 403, "Forbidden")

    monkeypatch.setattr(reconciling, "ensure_network_policy", forbidden)
    _with_alpha(operator)
    with caplog.at_level(logging.WARNING):
        await operator.start()
        await eventually(ready(operator, "alpha"), "Ready=True")
    assert operator.get("v1/configmaps", "alpha-openai-runtime") is not None
    assert "--no-sidecar-network-policy" in caplog.text
