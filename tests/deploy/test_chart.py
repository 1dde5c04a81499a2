"""The Helm chart in charts/openai-runtime: render, schema-check, and compare with deploy/.

Rendered offline with ``helm_python`` (Helm's Go SDK, no cluster): every object
of every value set is validated against the Kubernetes OpenAPI schemas of
``kubernetes-validate``; kinds defined by CRDs (kopf, cert-manager,
prometheus-operator) get a shape check instead. Installed as the release
"openai-runtime", the chart must give the same objects as ``kubectl apply -k
deploy/`` (minus the Namespace and the CRDs, which Helm handles itself); deploy/
is built with the real ``kubectl kustomize``, and those comparisons skip where
kubectl is missing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .. import kustomize
from ..k8svalidate import api_group, schema_problems

helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "openai-runtime"
DASHBOARD = CHART / "dashboards" / "openai-runtime.json"
RELEASE = "openai-runtime"
NAMESPACE = "openai-runtime-system"
# The oldest and the newest Kubernetes minor versions the manifests must fit.
K8S_VERSIONS = ("1.30.0", "latest")
# Kinds of these groups come from CRDs: no schema in kubernetes-validate.
CUSTOM_GROUPS = {"monitoring.coreos.com", "cert-manager.io", "kopf.dev"}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "MutatingWebhookConfiguration",
}
CERT_DIR = "/etc/openai-runtime/webhook-tls"
CA_BUNDLE = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
).decode()

Obj = dict[str, Any]

_MONITORING: Obj = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "sidecarPodMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prom"}},
    },
}
if DASHBOARD.is_file():  # written separately; test_dashboard_configmap says when it is not
    _MONITORING["grafana"] = {"dashboard": {"enabled": True, "namespace": "grafana"}}

VALUE_SETS: dict[str, Obj | None] = {
    "default": None,
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "cert-manager": {"webhook": {"tls": {"mode": "certManager"}}},
    "cert-manager-issuer": {
        "webhook": {
            "tls": {
                "mode": "certManager",
                "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
            }
        }
    },
    "secret": {
        "webhook": {"tls": {"mode": "secret", "secretName": "my-tls", "caBundle": CA_BUNDLE}}
    },
    "ignore": {"webhook": {"failurePolicy": "Ignore", "excludeNamespaces": ["legacy"]}},
    "monitoring": _MONITORING,
    "custom": {
        "replicaCount": 3,
        "image": {"repository": "registry.example/oair", "tag": "0.2.0-rc.1"},
        "imagePullSecrets": [{"name": "registry"}],
        "operator": {
            "workers": 4,
            "resyncInterval": 60,
            "budgetInterval": 5,
            "logLevel": "DEBUG",
            "extraArgs": ["--standalone"],
            "extraEnv": [
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4318"},
                {
                    "name": "NODE",
                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                },
            ],
        },
        "webhook": {"port": 10443, "timeoutSeconds": 5},
        "metrics": {"port": 9100},
        "serviceAccount": {"name": "oair", "annotations": {"example.com/role": "oair"}},
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "podDisruptionBudget": {"minAvailable": "50%"},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"team": "ml"}},
            }
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["system"]}
                            ]
                        }
                    ]
                }
            }
        },
    },
}


# --- rendering, once per value set -----------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


_RENDERED: dict[str, dict[str, str]] = {}


@pytest.fixture
def render(chart: Any) -> Any:
    def _render(value_set: str) -> dict[str, str]:
        if value_set not in _RENDERED:
            _RENDERED[value_set] = chart.render(
                VALUE_SETS[value_set], name=RELEASE, namespace=NAMESPACE, is_install=True
            )
        return _RENDERED[value_set]

    return _render


def _objects_of(manifests: dict[str, str]) -> list[Obj]:
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            objects.append(doc)
    return objects


@pytest.fixture
def objects(render: Any) -> Any:
    def _objects(value_set: str) -> list[Obj]:
        return _objects_of(render(value_set))

    return _objects


def _notes(manifests: dict[str, str]) -> str:
    (notes,) = [text for path, text in manifests.items() if path.endswith("NOTES.txt")]
    return notes


def _find(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[Obj], kind: str) -> Obj:
    found = _find(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(objs: list[Obj]) -> Obj:
    (container,) = _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _flags(args: list[str]) -> dict[str, str | None]:
    """{--flag: value} of the --flag=value arguments (value None without '=')."""
    flags: dict[str, str | None] = {}
    for arg in args:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            flags[name] = value if eq else None
    return flags


def _is_watched_namespace_rbac(obj: Obj) -> bool:
    """A Role or RoleBinding granting the operator its rights in one watched namespace."""
    return obj["kind"] in {"Role", "RoleBinding"} and obj["metadata"]["name"].endswith("-operator")


# --- deploy/, the reference --------------------------------------------------------------


def _deploy_objects() -> list[Obj]:
    """What ``kubectl apply -k deploy/`` applies (skips the test without kubectl)."""
    return kustomize.build(kustomize.DEPLOY)


def _deployed(kind: str) -> Obj:
    return _one(_deploy_objects(), kind)


# --- every object of every value set ----------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_schema_accepts_the_value_set(chart: Any, value_set: str) -> None:
    chart.validate_schema(VALUE_SETS[value_set])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_objects_have_identity(objects: Any, value_set: str) -> None:
    objs = objects(value_set)
    assert objs
    seen = set()
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["helm.sh/chart"] == "openai-runtime-0.1.0"
        if obj["kind"] == "KopfPeering" or _is_watched_namespace_rbac(obj):
            assert meta["namespace"] in VALUE_SETS[value_set]["watchNamespaces"]  # type: ignore[index]
        elif obj["kind"] == "ConfigMap":
            assert meta["namespace"] == "grafana"
        elif obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, key
        else:
            assert meta.get("namespace") == NAMESPACE, key


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_objects_match_the_kubernetes_schema(
    objects: Any, value_set: str, version: str
) -> None:
    # Custom kinds: test_custom_resources_have_their_shape
    problems = schema_problems(objects(value_set), version, CUSTOM_GROUPS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_custom_resources_have_their_shape(objects: Any, value_set: str) -> None:
    expected = {
        "ClusterKopfPeering": "kopf.dev/v1",
        "KopfPeering": "kopf.dev/v1",
        "Issuer": "cert-manager.io/v1",
        "Certificate": "cert-manager.io/v1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
        "PodMonitor": "monitoring.coreos.com/v1",
    }
    for obj in objects(value_set):
        if api_group(obj) not in CUSTOM_GROUPS:
            continue
        assert expected.get(obj["kind"]) == obj["apiVersion"], obj["kind"]
        assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
        if obj["kind"] in {"Certificate", "Issuer", "ServiceMonitor", "PodMonitor"}:
            assert isinstance(obj["spec"], dict) and obj["spec"], obj["kind"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_ask_the_ports_that_serve_them(objects: Any, value_set: str) -> None:
    """Liveness: kopf's /healthz. Readiness: the operator's /readyz, on --metrics-port.

    /readyz answers once the admission webhook listens, so a replica joins the
    webhook Service only when it can take the API server's calls.
    """
    container = _container(objects(value_set))
    flags = _flags(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = container["livenessProbe"]["httpGet"]
    assert flags["--liveness"] == f"http://0.0.0.0:{ports[liveness['port']]}{liveness['path']}"
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert str(ports[readiness["port"]]) == flags["--metrics-port"]
    env = {e["name"]: e for e in container["env"]}
    # kopf's peering identity: the pod's name, unique per replica.
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_images_are_pinned(objects: Any) -> None:
    for value_set in VALUE_SETS:
        image = _container(objects(value_set))["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


# --- the default render is deploy/ --------------------------------------------------------


def test_default_render_has_the_objects_of_deploy(objects: Any) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objects("default")}
    deployed = {
        (o["kind"], o["metadata"]["name"])
        for o in _deploy_objects()
        if o["kind"] not in {"Namespace", "CustomResourceDefinition"}
    }
    assert rendered == deployed


def test_default_render_uses_the_namespaces_of_deploy(objects: Any) -> None:
    deployed = {
        (o["kind"], o["metadata"]["name"]): o["metadata"].get("namespace")
        for o in _deploy_objects()
    }
    for obj in objects("default"):
        key = (obj["kind"], obj["metadata"]["name"])
        assert obj["metadata"].get("namespace") == deployed[key], key


def test_default_labels_include_those_of_deploy(objects: Any) -> None:
    deployed = {(o["kind"], o["metadata"]["name"]): o for o in _deploy_objects()}
    for obj in objects("default"):
        want = deployed[(obj["kind"], obj["metadata"]["name"])]["metadata"].get("labels", {})
        assert want.items() <= obj["metadata"]["labels"].items(), obj["kind"]


def test_default_clusterrole_is_deploys(objects: Any) -> None:
    assert _one(objects("default"), "ClusterRole")["rules"] == _deployed("ClusterRole")["rules"]


def test_default_role_is_deploys(objects: Any) -> None:
    objs = objects("default")
    assert _one(objs, "Role")["rules"] == _deployed("Role")["rules"]
    binding, deployed = _one(objs, "RoleBinding"), _deployed("RoleBinding")
    assert binding["roleRef"] == deployed["roleRef"]
    assert binding["subjects"] == deployed["subjects"]


def test_default_clusterrolebinding_is_deploys(objects: Any) -> None:
    binding, deployed = (
        _one(objects("default"), "ClusterRoleBinding"),
        _deployed("ClusterRoleBinding"),
    )
    assert binding["roleRef"] == deployed["roleRef"]
    assert binding["subjects"] == deployed["subjects"]


def test_default_webhook_is_deploys(objects: Any) -> None:
    (webhook,) = _one(objects("default"), "MutatingWebhookConfiguration")["webhooks"]
    (deployed,) = _deployed("MutatingWebhookConfiguration")["webhooks"]
    for field in (
        "name",
        "admissionReviewVersions",
        "sideEffects",
        "failurePolicy",
        "matchPolicy",
        "reinvocationPolicy",
        "timeoutSeconds",
        "rules",
        "objectSelector",
        "namespaceSelector",
    ):
        assert webhook[field] == deployed[field], field
    assert webhook["clientConfig"] == deployed["clientConfig"]  # no caBundle: the operator's
    assert "caBundle" not in webhook["clientConfig"]


def _pod_template(obj: Obj) -> Obj:
    return obj["spec"]["template"]


def test_default_deployment_is_deploys(objects: Any) -> None:
    deployment, deployed = _one(objects("default"), "Deployment"), _deployed("Deployment")
    spec, want = deployment["spec"], deployed["spec"]
    for field in ("replicas", "revisionHistoryLimit", "strategy"):
        assert spec[field] == want[field], field
    assert want["selector"]["matchLabels"].items() <= spec["selector"]["matchLabels"].items()
    template = _pod_template(deployment)
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["annotations"] == _pod_template(deployed)["metadata"]["annotations"]
    pod, want_pod = template["spec"], _pod_template(deployed)["spec"]
    for field in (
        "serviceAccountName",
        "enableServiceLinks",
        "terminationGracePeriodSeconds",
        "securityContext",
        "volumes",
    ):
        assert pod[field] == want_pod[field], field
    (constraint,) = pod["topologySpreadConstraints"]
    (want_constraint,) = want_pod["topologySpreadConstraints"]
    assert constraint["topologyKey"] == want_constraint["topologyKey"]
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert constraint["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    )

    container = _container(objects("default"))
    (want_container,) = want_pod["containers"]
    for field in (
        "name",
        "image",
        "imagePullPolicy",
        "ports",
        "env",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ):
        assert container[field] == want_container[field], field


def test_default_args(objects: Any) -> None:
    args = _container(objects("default"))["args"]
    want = _container(_deploy_objects())["args"]
    assert args[:2] == ["operator", "-A"] == want[:2]
    assert _flags(want).items() <= _flags(args).items()
    assert _flags(args) == {
        "--liveness": "http://0.0.0.0:8080/healthz",
        "--webhook-port": "9443",
        "--peering-name": "openai-runtime",
        "--webhook-service": "openai-runtime-webhook",
        "--webhook-secret": "openai-runtime-webhook-tls",
        "--webhook-configuration": "openai-runtime",
        "--workers": "16",
        "--resync-interval": "300",
        "--budget-interval": "15",
        "--metrics-port": "9465",
        "--sidecar-admin-port": "9464",
        "--monitoring-namespace": "monitoring",
        "--log-level": "INFO",
    }
    assert len(args) == len(set(args))


def test_default_network_policy_is_deploys(objects: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/ relies on the operator's defaults where the chart spells them out."""
    import logging

    from openai_runtime_operator.main import build_parser, network_policy_settings
    from openai_runtime_operator.networking import NetworkPolicySettings

    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)

    def settings(objs: list[Obj]) -> NetworkPolicySettings | None:
        args = build_parser().parse_args(_container(objs)["args"][1:])
        return network_policy_settings(args, logging.getLogger(__name__))

    want = NetworkPolicySettings(NAMESPACE, ("monitoring",), 9464)
    assert settings(objects("default")) == settings(_deploy_objects()) == want


def test_default_args_name_the_rendered_objects(objects: Any) -> None:
    objs = objects("default")
    flags = _flags(_container(objs)["args"])
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("ClusterKopfPeering", flags["--peering-name"]) in names
    assert ("Service", flags["--webhook-service"]) in names
    assert ("MutatingWebhookConfiguration", flags["--webhook-configuration"]) in names
    assert ("Role", flags["--webhook-secret"]) in names
    (rule,) = [
        r for r in _one(objs, "Role")["rules"] if "patch" in r["verbs"] and r.get("resourceNames")
    ]
    assert rule["resourceNames"] == [flags["--webhook-secret"]]


def test_default_pdb_and_service_are_deploys(objects: Any) -> None:
    objs = objects("default")
    pdb, want = _one(objs, "PodDisruptionBudget"), _deployed("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == want["spec"]["minAvailable"] == 1
    labels = _pod_template(_one(objs, "Deployment"))["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service, want = _one(objs, "Service"), _deployed("Service")
    assert service["spec"]["ports"] == want["spec"]["ports"]
    assert service["spec"]["type"] == want["spec"]["type"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert want["spec"]["selector"].items() <= service["spec"]["selector"].items()


def test_default_peering_is_deploys(objects: Any) -> None:
    assert (
        _one(objects("default"), "ClusterKopfPeering")["metadata"]["name"]
        == _deployed("ClusterKopfPeering")["metadata"]["name"]
    )


def test_default_has_no_optional_objects(objects: Any) -> None:
    kinds = {o["kind"] for o in objects("default")}
    for kind in ("Certificate", "Issuer", "ServiceMonitor", "PodMonitor", "ConfigMap"):
        assert kind not in kinds


# --- modes ---------------------------------------------------------------------------


def test_namespaced_watches_each_namespace(objects: Any) -> None:
    objs = objects("namespaced")
    args = _container(objs)["args"]
    assert "-A" not in args
    assert args[:5] == ["operator", "-n", "a", "-n", "b"]
    peerings = _find(objs, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"a", "b"}
    assert {p["metadata"]["name"] for p in peerings} == {_flags(args)["--peering-name"]}
    assert not _find(objs, "ClusterKopfPeering")
    (webhook,) = _one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
        ]
    }


def test_namespaced_never_injects_into_the_release_namespace(chart: Any) -> None:
    values = {"watchNamespaces": ["a", NAMESPACE, "kube-system"]}
    objs = _objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    (webhook,) = _one(objs, "MutatingWebhookConfiguration")["webhooks"]
    (expression,) = webhook["namespaceSelector"]["matchExpressions"]
    assert expression["values"] == ["a"]
    assert _container(objs)["args"][1:7] == ["-n", "a", "-n", NAMESPACE, "-n", "kube-system"]
    with pytest.raises(helm.HelmRenderError, match="leaves no namespace"):
        chart.render({"watchNamespaces": [NAMESPACE]}, name=RELEASE, namespace=NAMESPACE)


def _grants(rules: list[Obj]) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} of RBAC rules."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_namespaced_grants_namespaced_rights_only_in_the_watched_namespaces(objects: Any) -> None:
    """Secrets, ConfigMaps, pods, Events, runtimes and peerings: a Role in each watched namespace.

    The ClusterRole keeps what has no namespace: the CRDs (kopf's scanning), the
    namespaces (kopf lists and watches them when it runs with -n) and the one
    webhook configuration.
    """
    objs = objects("namespaced")
    assert _grants(_one(objs, "ClusterRole")["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
        ("", "namespaces"): {"list", "watch"},
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "patch"},
    }
    cluster_level = {
        "customresourcedefinitions",
        "clusterkopfpeerings",
        "mutatingwebhookconfigurations",
    }
    cluster_wide = _grants(_one(objects("default"), "ClusterRole")["rules"])
    wanted = {key: verbs for key, verbs in cluster_wide.items() if key[1] not in cluster_level}
    assert ("", "secrets") in wanted and ("kopf.dev", "kopfpeerings") in wanted
    roles = {
        r["metadata"]["namespace"]: r for r in _find(objs, "Role") if _is_watched_namespace_rbac(r)
    }
    bindings = {
        b["metadata"]["namespace"]: b
        for b in _find(objs, "RoleBinding")
        if _is_watched_namespace_rbac(b)
    }
    assert roles.keys() == bindings.keys() == {"a", "b"}
    account = _pod_template(_one(objs, "Deployment"))["spec"]["serviceAccountName"]
    for namespace, role in roles.items():
        assert _grants(role["rules"]) == wanted, namespace
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        ]


NETWORK_POLICIES = ("networking.k8s.io", "networkpolicies")


def test_network_policy_rights_follow_the_value(chart: Any, objects: Any) -> None:
    """The operator writes the sidecars' NetworkPolicies; switched off, it may not."""
    default = _grants(_one(objects("default"), "ClusterRole")["rules"])
    assert default[NETWORK_POLICIES] == {"get", "create", "patch"}
    namespaced = objects("namespaced")
    assert NETWORK_POLICIES not in _grants(_one(namespaced, "ClusterRole")["rules"])
    for role in filter(_is_watched_namespace_rbac, _find(namespaced, "Role")):
        assert _grants(role["rules"])[NETWORK_POLICIES] == {"get", "create", "patch"}

    for scope in ({}, {"watchNamespaces": ["a"]}):
        values = {**scope, "sidecarNetworkPolicy": {"enabled": False}}
        objs = _objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        for rbac in [*_find(objs, "ClusterRole"), *_find(objs, "Role")]:
            assert NETWORK_POLICIES not in _grants(rbac["rules"]), rbac["metadata"]
        args = _container(objs)["args"]
        assert "--no-sidecar-network-policy" in args
        assert "--monitoring-namespace" not in _flags(args)


def test_network_policy_monitoring_namespaces(chart: Any) -> None:
    values = {"sidecarNetworkPolicy": {"enabled": True, "monitoringNamespaces": ["prom", "obs"]}}
    objs = _objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    args = _container(objs)["args"]
    assert [a for a in args if a.startswith("--monitoring-namespace")] == [
        "--monitoring-namespace=prom",
        "--monitoring-namespace=obs",
    ]
    assert "--no-sidecar-network-policy" not in args


def test_namespaced_operator_still_reads_its_own_certificate(objects: Any) -> None:
    """The release namespace need not be watched: the certificate's Role grants the read."""
    (role,) = [r for r in _find(objects("namespaced"), "Role") if not _is_watched_namespace_rbac(r)]
    assert role["metadata"]["namespace"] == NAMESPACE
    (named,) = [r for r in role["rules"] if r.get("resourceNames")]
    assert named["resourceNames"] == ["openai-runtime-webhook-tls"]
    assert set(named["verbs"]) == {"get", "patch"}


def _assert_reads_its_certificate(objs: list[Obj], secret: str) -> None:
    container = _container(objs)
    flags = _flags(container["args"])
    assert flags["--webhook-cert-dir"] == CERT_DIR
    assert flags["--webhook-secret"] == secret
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == CERT_DIR]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volumes = _pod_template(_one(objs, "Deployment"))["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret
    assert "items" not in volume["secret"]  # the whole Secret: tls.crt and tls.key
    assert not _find(objs, "Role")
    assert not _find(objs, "RoleBinding")


def test_self_signed_mode_mounts_nothing(objects: Any) -> None:
    objs = objects("default")
    container = _container(objs)
    assert "--webhook-cert-dir" not in _flags(container["args"])
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    mwc = _one(objs, "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {})


def test_cert_manager_mode(objects: Any) -> None:
    objs = objects("cert-manager")
    _assert_reads_its_certificate(objs, "openai-runtime-webhook-cert")
    issuer = _one(objs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    certificate = _one(objs, "Certificate")
    assert certificate["spec"]["secretName"] == "openai-runtime-webhook-cert"
    assert certificate["spec"]["dnsNames"] == [
        f"openai-runtime-webhook.{NAMESPACE}.svc",
        f"openai-runtime-webhook.{NAMESPACE}.svc.cluster.local",
    ]
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    mwc = _one(objs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    (webhook,) = mwc["webhooks"]
    assert "caBundle" not in webhook["clientConfig"]


def test_cert_manager_mode_with_an_issuer(objects: Any) -> None:
    objs = objects("cert-manager-issuer")
    _assert_reads_its_certificate(objs, "openai-runtime-webhook-cert")
    assert not _find(objs, "Issuer")
    assert _one(objs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_secret_mode(objects: Any) -> None:
    objs = objects("secret")
    _assert_reads_its_certificate(objs, "my-tls")
    assert not _find(objs, "Certificate")
    assert not _find(objs, "Issuer")
    mwc = _one(objs, "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {})
    (webhook,) = mwc["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == CA_BUNDLE


@pytest.mark.parametrize(
    ("tls", "missing"),
    [
        ({}, "needs webhook.tls.secretName .* and webhook.tls.caBundle"),
        ({"secretName": "my-tls"}, "needs webhook.tls.caBundle"),
        ({"caBundle": CA_BUNDLE}, "needs webhook.tls.secretName"),
    ],
)
def test_secret_mode_needs_the_secret_and_its_ca(chart: Any, tls: Obj, missing: str) -> None:
    values = {"webhook": {"tls": {"mode": "secret", **tls}}}
    with pytest.raises(helm.HelmRenderError, match=f"webhook.tls.mode=secret {missing}"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    "values",
    [{"webhook": {"port": 8080}}, {"metrics": {"port": 9443}}],
    ids=["webhook-on-liveness", "metrics-on-webhook"],
)
def test_ports_must_differ(chart: Any, values: Obj) -> None:
    with pytest.raises(helm.HelmRenderError, match="must all differ"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_failure_policy_ignore_and_excluded_namespaces(objects: Any) -> None:
    (webhook,) = _one(objects("ignore"), "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": [NAMESPACE, "kube-system", "legacy"],
        }
    ]


def test_monitoring(objects: Any) -> None:
    objs = objects("monitoring")
    service_monitor = _one(objs, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    (metrics,) = [s for s in _find(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    for service in _find(objs, "Service"):
        if service is not metrics:  # the ServiceMonitor must not pick the webhook Service
            assert not selector.items() <= service["metadata"]["labels"].items()
    assert metrics["spec"]["ports"] == [
        {"name": "metrics", "port": 9465, "targetPort": "metrics", "protocol": "TCP"}
    ]
    labels = _pod_template(_one(objs, "Deployment"))["metadata"]["labels"]
    assert metrics["spec"]["selector"].items() <= labels.items()
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    pod_monitor = _one(objs, "PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prom"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["selector"] == {
        "matchExpressions": [{"key": "infer.atomr.io/runtime", "operator": "Exists"}]
    }
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "oair-admin", "path": "/metrics", "interval": "1m"}


def test_pod_monitor_port_is_the_injected_sidecars() -> None:
    """The PodMonitor scrapes the port the webhook declares on the injected sidecar."""
    from openai_runtime_operator.injecting import inject

    pod = {
        "metadata": {"name": "app", "labels": {"infer.atomr.io/runtime": "alpha"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    runtime = {
        "apiVersion": "infer.atomr.io/v1alpha1",
        "kind": "OpenAiRuntime",
        "metadata": {"name": "alpha", "namespace": "default"},
        "spec": {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "openai"}},
    }
    spec = inject(pod, runtime)["spec"]
    ports = {
        p["name"]: p["containerPort"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
    }
    assert ports["oair-admin"] == 9464


def test_pod_monitor_of_a_namespaced_install(chart: Any) -> None:
    values = {"watchNamespaces": ["a", "b"], "metrics": {"sidecarPodMonitor": {"enabled": True}}}
    objs = _objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    assert _one(objs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_dashboard_configmap(objects: Any) -> None:
    if not DASHBOARD.is_file():
        pytest.skip("charts/openai-runtime/dashboards/openai-runtime.json is not written yet")
    config_map = _one(objects("monitoring"), "ConfigMap")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard = json.loads(text)
    assert dashboard == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard.get("panels") or dashboard.get("rows")


def test_custom_values(objects: Any) -> None:
    objs = objects("custom")
    deployment = _one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "0.2.0-rc.1"
    template = _pod_template(deployment)
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["annotations"]["example.com/team"] == "ml"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9100"
    pod = template["spec"]
    assert pod["serviceAccountName"] == "oair"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == VALUE_SETS["custom"]["tolerations"]  # type: ignore[index]
    assert pod["affinity"] == VALUE_SETS["custom"]["affinity"]  # type: ignore[index]
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    container = _container(objs)
    assert container["image"] == "registry.example/oair:0.2.0-rc.1"
    args = container["args"]
    assert args[-1] == "--standalone"
    flags = _flags(args)
    assert flags["--workers"] == "4"
    assert flags["--resync-interval"] == "60"
    assert flags["--budget-interval"] == "5"
    assert flags["--log-level"] == "DEBUG"
    assert flags["--webhook-port"] == "10443"
    assert flags["--metrics-port"] == "9100"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9100, "webhook": 10443}
    env = [e["name"] for e in container["env"]]
    assert env == [
        "PYTHONUNBUFFERED",
        "POD_NAMESPACE",
        "POD_ID",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "NODE",
    ]
    account = _one(objs, "ServiceAccount")
    assert account["metadata"]["name"] == "oair"
    assert account["metadata"]["annotations"] == {"example.com/role": "oair"}
    subjects = [
        *_one(objs, "ClusterRoleBinding")["subjects"],
        *_one(objs, "RoleBinding")["subjects"],
    ]
    assert {s["name"] for s in subjects} == {"oair"}
    assert _one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    (webhook,) = _one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["timeoutSeconds"] == 5


def test_pdb_and_service_account_can_be_left_out(chart: Any) -> None:
    values = {"podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False}}
    objs = _objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
    assert not _find(objs, "PodDisruptionBudget")
    assert not _find(objs, "ServiceAccount")
    assert _pod_template(_one(objs, "Deployment"))["spec"]["serviceAccountName"] == "default"


@pytest.mark.parametrize(
    ("release", "fullname"),
    [("demo", "demo-openai-runtime"), ("team-openai-runtime", "team-openai-runtime")],
)
def test_names_follow_the_release(chart: Any, release: str, fullname: str) -> None:
    objs = _objects_of(chart.render(None, name=release, namespace="ml"))
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("Deployment", f"{fullname}-operator") in names
    assert ("Service", f"{fullname}-webhook") in names
    assert ("MutatingWebhookConfiguration", fullname) in names
    assert ("ClusterKopfPeering", fullname) in names
    assert ("Role", f"{fullname}-webhook-tls") in names
    (rule,) = [
        r
        for r in _one(objs, "ClusterRole")["rules"]
        if "mutatingwebhookconfigurations" in r["resources"]
    ]
    assert rule["resourceNames"] == [fullname]
    (webhook,) = _one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["service"]["namespace"] == "ml"
    assert "ml" in webhook["namespaceSelector"]["matchExpressions"][0]["values"]


def test_long_release_names_stay_valid(chart: Any) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    release = "a-very-long-release-name-that-goes-on-and-on-for-ever-and-ever"
    objs = _objects_of(chart.render(None, name=release, namespace=NAMESPACE))
    for obj in objs:
        if api_group(obj) not in CUSTOM_GROUPS:
            kv.validate(obj, "1.30.0", strict=True)
    service = _one(objs, "Service")["metadata"]["name"]
    assert len(service) <= 63


# --- NOTES.txt --------------------------------------------------------------------------


def test_notes(render: Any) -> None:
    notes = _notes(render("default"))
    assert "kubectl get oair -A" in notes
    assert f"kubectl -n {NAMESPACE} get pods" in notes
    assert "infer.atomr.io/runtime=" in notes
    assert "openai-runtime-webhook-tls" in notes
    assert "WARNING" not in notes
    assert "openai-runtime-webhook-cert" in _notes(render("cert-manager"))
    assert "my-tls" in _notes(render("secret"))


def test_notes_warn_about_a_single_replica_with_fail(chart: Any) -> None:
    notes = _notes(chart.render({"replicaCount": 1}, name=RELEASE, namespace=NAMESPACE))
    assert "WARNING: replicaCount is 1 with webhook.failurePolicy=Fail" in notes
    values = {"replicaCount": 1, "webhook": {"failurePolicy": "Ignore"}}
    assert "WARNING" not in _notes(chart.render(values, name=RELEASE, namespace=NAMESPACE))


# --- values.schema.json -----------------------------------------------------------------


BAD_VALUES = {
    "failure-policy-enum": {"webhook": {"failurePolicy": "Maybe"}},
    "tls-mode-enum": {"webhook": {"tls": {"mode": "letsEncrypt"}}},
    "log-level-enum": {"operator": {"logLevel": "TRACE"}},
    "pull-policy-enum": {"image": {"pullPolicy": "Sometimes"}},
    "negative-replicas": {"replicaCount": -1},
    "zero-replicas": {"replicaCount": 0},
    "string-replicas": {"replicaCount": "2"},
    "unknown-top-level": {"replicas": 2},
    "unknown-nested": {"webhook": {"tls": {"mode": "selfSigned", "issuer": "x"}}},
    "unknown-in-image": {"image": {"digest": "sha256:0"}},
    "string-port": {"webhook": {"port": "9443"}},
    "port-too-big": {"metrics": {"port": 70000}},
    # The metrics port also serves /readyz, the readiness probe: it cannot be off.
    "metrics-port-off": {"metrics": {"port": 0}},
    "port-zero": {"operator": {"sidecarAdminPort": 0}},
    "timeout-too-long": {"webhook": {"timeoutSeconds": 31}},
    "zero-workers": {"operator": {"workers": 0}},
    "zero-resync": {"operator": {"resyncInterval": 0}},
    "zero-budget-interval": {"operator": {"budgetInterval": 0}},
    "namespace-glob": {"watchNamespaces": ["team-*"]},
    "namespace-not-a-list": {"watchNamespaces": "a"},
    "issuer-ref-without-name": {
        "webhook": {"tls": {"mode": "certManager", "certManager": {"issuerRef": {"kind": "X"}}}}
    },
    "ca-bundle-not-base64": {"webhook": {"tls": {"caBundle": "-----BEGIN CERTIFICATE-----"}}},
    "extra-env-without-name": {"operator": {"extraEnv": [{"value": "x"}]}},
    "extra-args-not-strings": {"operator": {"extraArgs": [1]}},
    "pdb-bad-min-available": {"podDisruptionBudget": {"minAvailable": "half"}},
    "monitor-interval": {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
    "security-context-unknown": {"securityContext": {"runAsRoot": True}},
    "labels-not-strings": {"podLabels": {"team": 1}},
    "network-policy-enabled-string": {"sidecarNetworkPolicy": {"enabled": "yes"}},
    "network-policy-no-monitoring": {"sidecarNetworkPolicy": {"monitoringNamespaces": []}},
    "network-policy-bad-namespace": {"sidecarNetworkPolicy": {"monitoringNamespaces": ["Mon"]}},
    "network-policy-unknown": {"sidecarNetworkPolicy": {"ports": [9464]}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES)
def test_schema_rejects_bad_values(chart: Any, values: Obj) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_the_defaults(chart: Any) -> None:
    chart.validate_schema(None)
    chart.validate_schema(chart.values)


def test_schema_is_closed_and_values_yaml_covers_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def walk(node: Obj, value: Any, path: str) -> None:
        if node.get("type") != "object" or "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{path or '/'} is open"
        if not isinstance(value, dict):
            return
        for key in node.get("required", []):
            assert key in value, f"values.yaml has no {path}.{key}"
        for key, item in value.items():
            assert key in node["properties"], f"the schema has no {path}.{key}"
            walk(node["properties"][key], item, f"{path}.{key}")

    walk(schema, values, "")


def test_values_yaml_comments_every_knob() -> None:
    """Every knob of values.yaml has a comment right above it (what, unit, default)."""
    passthrough = {"resources", "podSecurityContext", "securityContext", "grafana.dashboard.labels"}
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    uncommented = []
    for n, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [key for _, key in stack]
        key = stripped.split(":", 1)[0]
        path = ".".join([*parents, key])
        stack.append((indent, key))
        if any(".".join(parents[: i + 1]) in passthrough for i in range(len(parents))):
            continue  # inside a Kubernetes object documented as a whole
        if stripped.endswith(":") and path not in passthrough:
            continue  # a section of knobs
        if not lines[n - 1].strip().startswith("#"):
            uncommented.append(path)
    assert not uncommented, uncommented


# --- lint, Chart.yaml and CRDs ----------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_is_clean(value_set: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE, kube_version="v1.30.0"
    )
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_chart_metadata(chart: Any) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "openai-runtime"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    assert meta["kubeVersion"] == ">=1.26.0-0"
    assert meta["type"] == "application"
    assert meta["description"]
    assert not (CHART / "README.md").exists(), "the project README documents the chart"


def _crds(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d and d["kind"] == "CustomResourceDefinition"]


def test_kopf_peering_crds_equal_deploy() -> None:
    chart_crds = _crds((CHART / "crds" / "kopf-peering.yaml").read_text(encoding="utf-8"))
    deployed = [
        o
        for o in _deploy_objects()
        if o["kind"] == "CustomResourceDefinition" and o["spec"]["group"] == "kopf.dev"
    ]

    def name(crd: Obj) -> str:
        return str(crd["metadata"]["name"])

    assert sorted(chart_crds, key=name) == sorted(deployed, key=name)
    assert {c["metadata"]["name"] for c in chart_crds} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


def test_chart_ships_every_crd_of_deploy(chart: Any) -> None:
    shipped = {d["metadata"]["name"] for crd in chart.crds for d in _crds(crd["data"])}
    deployed = {
        o["metadata"]["name"] for o in _deploy_objects() if o["kind"] == "CustomResourceDefinition"
    }
    assert shipped == deployed
