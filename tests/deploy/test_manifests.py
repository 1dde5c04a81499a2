"""deploy/ as kubectl applies it, and the Dockerfile: schema-check, RBAC == README.

Every kustomization under deploy/ (deploy/ itself, its base, the cert-manager
overlay) is built with the real ``kubectl kustomize``, as ``kubectl apply -k``
would build it (skipped, saying so, where kubectl is missing), and every object
it yields is validated against the Kubernetes OpenAPI schemas shipped by
``kubernetes-validate``; kinds that CRDs define must match a CRD's group,
version and kind instead. The checks of the operator's Deployment, RBAC and webhook read the
build of deploy/, which is what ``kubectl apply -k deploy/`` installs, and the
ClusterRole is compared with the README's "RBAC the operator needs" table so
that docs and manifests cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..k8svalidate import schema_problems
from ..kustomize import DEPLOY, ROOT, build, kustomizations, label

BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "cert-manager"
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
NAMESPACE = "openai-runtime-system"
# The oldest and the newest Kubernetes minor versions the manifests must fit.
K8S_VERSIONS = ("1.30.0", "latest")
# Kinds whose CRDs come with cert-manager, not with deploy/.
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}

Obj = dict[str, Any]
KUSTOMIZATIONS = kustomizations()


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _documents(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{label(path)}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{label(path)}: a document is not a mapping"
    return docs


def _objects(directory: Path = DEPLOY) -> list[Obj]:
    """What ``kubectl apply -k directory`` applies; deploy/ unless told otherwise."""
    return build(directory)


def _one(kind: str, directory: Path = DEPLOY) -> Obj:
    found = [o for o in _objects(directory) if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _custom_groups(objects: list[Obj]) -> set[str]:
    """API groups whose kinds the CRDs among ``objects`` define (no built-in schema)."""
    return {o["spec"]["group"] for o in objects if o["kind"] == "CustomResourceDefinition"}


# --- the kustomizations ------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=label)
def test_every_yaml_document_parses(path: Path) -> None:
    _documents(path)


def test_every_manifest_belongs_to_a_kustomization() -> None:
    """A file no kustomization.yaml sits beside is applied by nothing."""
    for path in _yaml_files():
        assert path.parent in KUSTOMIZATIONS, f"{label(path)}: no kustomization.yaml beside it"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_kustomization_lists_exactly_the_files_beside_it(directory: Path) -> None:
    kustomization = _documents(directory / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    files = set()
    for name in listed:
        target = (directory / name).resolve()
        if target.is_dir():
            assert target in KUSTOMIZATIONS, f"{name}: a directory without a kustomization"
        else:
            assert target.is_file(), f"{label(directory)} lists a missing file: {name}"
            assert target.parent == directory, f"{name}: a file from elsewhere"
            files.add(name)
    beside = {p.name for p in directory.iterdir() if p.suffix in {".yaml", ".yml"}}
    assert files == beside - {"kustomization.yaml"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_no_kustomization_includes_a_directory_around_it(directory: Path) -> None:
    """kustomize refuses a base that contains its overlay ("cycle detected")."""
    for name in _documents(directory / "kustomization.yaml")[0]["resources"]:
        target = (directory / name).resolve()
        if target.is_dir():
            assert not directory.is_relative_to(target), f"{label(directory)} includes {name}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_kustomization_builds(directory: Path) -> None:
    assert _objects(directory)


def test_deploy_installs_the_base_unchanged() -> None:
    assert sorted(_objects(DEPLOY), key=_key) == sorted(_objects(BASE), key=_key)


# --- every object of every kustomization -------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_objects_have_identity(directory: Path) -> None:
    seen = set()
    for obj in _objects(directory):
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert obj.get("metadata", {}).get("name"), obj
        namespace = obj["metadata"].get("namespace")
        assert namespace in (None, NAMESPACE), f"{_key(obj)}: namespace {namespace}"
        assert _key(obj) not in seen, f"built twice: {_key(obj)}"
        seen.add(_key(obj))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_objects_match_the_kubernetes_schema(directory: Path, version: str) -> None:
    objects = _objects(directory)
    # Custom kinds: test_custom_resources_are_defined
    custom = _custom_groups(objects) | {"cert-manager.io"}
    problems = schema_problems(objects, version, custom)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_custom_resources_are_defined(directory: Path) -> None:
    """Kinds without a built-in schema: from a CRD of the same build, or cert-manager's."""
    objects = _objects(directory)
    crds = {
        (o["spec"]["group"], v["name"], o["spec"]["names"]["kind"])
        for o in objects
        if o["kind"] == "CustomResourceDefinition"
        for v in o["spec"]["versions"]
    }
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if group == "cert-manager.io":
            assert obj["apiVersion"] == "cert-manager.io/v1" and obj["kind"] in CERT_MANAGER_KINDS
        elif group in _custom_groups(objects):
            assert (group, version, obj["kind"]) in crds, _key(obj)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=label)
def test_images_are_pinned(directory: Path) -> None:
    for obj in _objects(directory):
        for container in _containers(obj):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, image
            assert not image.endswith(":latest"), image


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# --- the operator Deployment ----------------------------------------------------------


def test_operator_deployment() -> None:
    deployment = _one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["operator", "-A"]
    assert "--standalone" not in args, "peering must stay on with several replicas"
    assert _operator_flag("--liveness") == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9465, "webhook": 9443}
    env = {e["name"]: e for e in container["env"]}
    # kopf's peering identity: the pod's name, unique per replica.
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security.get("runAsUser", 65532) != 0
    # Soft spreading only: a one-node cluster must still schedule both replicas.
    for constraint in pod.get("topologySpreadConstraints", []):
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"].get(
        "podAntiAffinity", {}
    )


def test_probes_ask_the_ports_that_serve_them() -> None:
    """Liveness is kopf's /healthz; readiness the operator's /readyz on --metrics-port.

    /readyz answers only once the admission webhook listens, so a replica joins
    the webhook Service when it can take the API server's calls.
    """
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = container["livenessProbe"]["httpGet"]
    liveness_url = _operator_flag("--liveness")
    assert liveness_url == f"http://0.0.0.0:{ports[liveness['port']]}{liveness['path']}"
    assert liveness["path"] == "/healthz"
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert readiness["port"] == "metrics"
    assert ports["metrics"] == int(_operator_flag("--metrics-port"))


def test_pdb_and_webhook_service_select_the_operator() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == 443
    assert named.get(port["targetPort"], port["targetPort"]) == 9443


def test_binding_ties_the_role_to_the_operator_account() -> None:
    binding = _one("ClusterRoleBinding")
    account = _one("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": _one("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_peering_object_matches_the_operator_default() -> None:
    names = [o["metadata"]["name"] for o in _objects() if o["kind"] == "ClusterKopfPeering"]
    assert names == ["openai-runtime"]  # operator/main.py --peering-name default


# --- RBAC: the ClusterRole is the README's table ---------------------------------------


def _readme_table(heading: str) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} from the first table under ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split(heading + "\n", 1)[1]
    rows: list[str] = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:  # the first table of the section only
            break
    assert len(rows) > 2, f"no table under {heading!r} in README.md"
    groups: dict[str, str] = {}  # resource -> group, for rows naming a subresource
    wanted: dict[tuple[str, str], set[str]] = {}
    for row in rows[2:]:  # header and separator
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        verbs = {v.strip() for v in cells[1].split(",")}
        assert names and verbs, row
        parsed = [name.partition(".") for name in names]
        cell_group = next((g for _, dot, g in parsed if dot), None)
        for resource, _, group in parsed:
            base = resource.split("/")[0]
            group = group or cell_group or groups.get(base, "")
            groups.setdefault(base, group)
            wanted.setdefault((group, resource), set()).update(verbs)
    return wanted


def _readme_rbac() -> dict[tuple[str, str], set[str]]:
    return _readme_table("### RBAC the operator needs")


def _granted(kind: str = "ClusterRole") -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} of the one ``kind`` that deploy/ applies."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in _one(kind)["rules"]:
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def _named_rules(kind: str) -> dict[tuple[str, str], list[str]]:
    """The rules limited to named objects: {(apiGroup, resource): resourceNames}."""
    return {
        (group, resource): rule["resourceNames"]
        for rule in _one(kind)["rules"]
        if "resourceNames" in rule
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_readme_rbac_table_parses_as_expected() -> None:
    table = _readme_rbac()
    assert table[("infer.atomr.io", "openairuntimes/status")] == {"patch"}
    assert table[("", "secrets")] == {"get", "list", "watch"}
    assert table[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get", "list", "watch"}
    assert ("kopf.dev", "clusterkopfpeerings") in table
    assert ("kopf.dev", "kopfpeerings") in table


def test_rbac_fits_a_real_api_server() -> None:
    """What kopf and the API server's admission plugins ask for, and nothing more.

    kopf's resource scanning lists and watches CRDs (to notice those installed
    after it); cluster-wide (-A) it never lists namespaces. The ConfigMap's
    ownerReference has blockOwnerDeletion: false, so OwnerReferencesPermissionEnforcement
    (on by default on OpenShift) asks for no update on openairuntimes/finalizers.
    """
    granted = _granted()
    assert granted[("apiextensions.k8s.io", "customresourcedefinitions")] == {
        "get",
        "list",
        "watch",
    }
    assert ("", "namespaces") not in granted
    assert "-A" in _operator_args()
    for kind in ("ClusterRole", "Role"):
        for group, resource in _granted(kind):
            assert not resource.endswith("/finalizers"), (kind, group, resource)


def test_clusterrole_grants_exactly_the_readme_table() -> None:
    assert _granted() == _readme_rbac()


def test_role_grants_exactly_the_readme_table() -> None:
    assert _granted("Role") == _readme_table("### RBAC for the self-signed webhook certificate")


def test_no_wildcards_in_rbac() -> None:
    for kind in ("ClusterRole", "Role"):
        for rule in _one(kind)["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule


def test_writes_outside_the_operator_namespace_are_limited() -> None:
    """Cluster-wide, Secrets are read-only and the webhook configuration is ours alone."""
    forbidden = {"create", "update", "patch", "delete", "deletecollection", "*"}
    for (group, resource), verbs in _granted().items():
        if group in ("", "*") and resource.split("/")[0] in ("secrets", "*"):
            assert not verbs & forbidden, f"{resource}: {sorted(verbs & forbidden)}"
    assert _named_rules("ClusterRole") == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): [
            _one("MutatingWebhookConfiguration")["metadata"]["name"]
        ]
    }
    # The Role may write one Secret in its namespace (create cannot be named).
    assert _named_rules("Role") == {("", "secrets"): [_operator_flag("--webhook-secret")]}
    for rule in _one("Role")["rules"]:
        assert "resourceNames" in rule or rule["verbs"] == ["create"], rule


def test_role_binding_ties_the_role_to_the_operator_account() -> None:
    binding = _one("RoleBinding")
    account = _one("ServiceAccount")
    assert binding["metadata"]["namespace"] == _one("Role")["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["roleRef"]["name"] == _one("Role")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]


# --- the webhook --------------------------------------------------------------------


def _operator_args() -> list[str]:
    return list(_one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])


def _operator_flag(flag: str) -> str:
    """The value the Deployment passes for ``flag``, else the operator's own default."""
    from openai_runtime_operator.main import build_parser

    args = build_parser().parse_args(_operator_args()[1:])
    return str(getattr(args, flag.lstrip("-").replace("-", "_")))


def test_webhook_configuration_points_at_the_operator() -> None:
    config = _one("MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == _operator_flag("--webhook-configuration")
    (webhook,) = config["webhooks"]
    service = _one("Service")
    assert webhook["clientConfig"]["service"] == {
        "name": service["metadata"]["name"],
        "namespace": NAMESPACE,
        "path": "/inject",  # the kopf handler id (operator/registry.py)
        "port": service["spec"]["ports"][0]["port"],
    }
    assert "caBundle" not in webhook["clientConfig"], "the operator or cert-manager fills it"
    assert service["metadata"]["name"] == _operator_flag("--webhook-service")
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(_operator_flag("--webhook-port")) == ports["webhook"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_webhook_sees_only_labelled_pod_creations_outside_system_namespaces() -> None:
    (webhook,) = _one("MutatingWebhookConfiguration")["webhooks"]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["objectSelector"] == {
        "matchExpressions": [{"key": "infer.atomr.io/runtime", "operator": "Exists"}]
    }
    (excluded,) = webhook["namespaceSelector"]["matchExpressions"]
    assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {NAMESPACE, "kube-system"}
    assert webhook["failurePolicy"] in ("Fail", "Ignore")
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["timeoutSeconds"] <= 10


# --- Dockerfile ----------------------------------------------------------------------


def _dockerfile() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    final = _final_stage()
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric uid (runAsNonRoot checks it)"
    assert int(uid) != 0


def test_dockerfile_entrypoint_and_default_command() -> None:
    final = _final_stage()
    assert 'ENTRYPOINT ["openai-runtime"]' in final
    assert 'CMD ["sidecar", "--config", "/etc/openai-runtime/config.yaml"]' in final
    root = _root_image(final[0])
    assert root.startswith("${PYTHON_IMAGE}") or "python:3.11-slim" in root
    assert any(line.startswith("ARG PYTHON_IMAGE=python:3.11-slim") for line in _dockerfile())


def test_dockerfile_sidecar_and_operator_images() -> None:
    """The default (last) image is the sidecar's, without the operator extra."""
    stages = _stages()
    assert stages[-1][0] == "sidecar"
    sidecar, operator = (" ".join(dict(stages)[name]) for name in ("sidecar", "operator"))
    assert "--find-links=/wheels openai-runtime " in sidecar
    assert "[operator]" not in sidecar
    assert '"openai-runtime[operator]"' in operator
    assert 'CMD ["operator"]' in operator
    for stage in (sidecar, operator):
        assert 'ENTRYPOINT ["openai-runtime"]' in stage
        assert "USER 65532:65532" in stage
    # The wheels serve both images: built with the extra.
    assert '"/src[operator]"' in " ".join(dict(stages)["build"])


def _stages() -> list[tuple[str, list[str]]]:
    """(name, lines) of each stage, in order; unnamed stages get ""."""
    stages: list[tuple[str, list[str]]] = []
    for line in _dockerfile():
        if line.upper().startswith("FROM "):
            words = line.split()
            stages.append((words[3] if len(words) >= 4 and words[2].upper() == "AS" else "", []))
        if stages:
            stages[-1][1].append(line)
    return stages


def _root_image(from_line: str) -> str:
    """The image a stage ends up on, following FROM through earlier stages."""
    named = {name: lines[0] for name, lines in _stages() if name}
    image = from_line.split()[1]
    while image in named:
        image = named[image].split()[1]
    return image


def test_dockerfile_is_multi_stage_and_installs_no_build_tools() -> None:
    lines = _dockerfile()
    assert sum(line.upper().startswith("FROM ") for line in lines) >= 2
    final = " ".join(_final_stage())
    for tool in ("apt-get install", "build-essential", "gcc", "COPY . "):
        assert tool not in final


def _final_stage() -> list[str]:
    lines = _dockerfile()
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[start:]


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore
    for needed in ("pyproject.toml", "README.md", "sidecar/", "operator/"):
        assert f"!{needed}" in ignore


# --- the cert-manager overlay ---------------------------------------------------------


def _by_key(directory: Path) -> dict[tuple[str, str, str], Obj]:
    return {_key(o): o for o in _objects(directory)}


def test_cert_manager_overlay_changes_only_what_it_means_to() -> None:
    """Its patches hit their targets; everything else is the base as it is."""
    base, overlay = _by_key(BASE), _by_key(OVERLAY)
    removed = {key[0] for key in base.keys() - overlay.keys()}
    added = {key[0] for key in overlay.keys() - base.keys()}
    changed = {key[0] for key in base.keys() & overlay.keys() if base[key] != overlay[key]}
    assert removed == {"Role", "RoleBinding"}  # the operator writes no Secret
    assert added == CERT_MANAGER_KINDS
    assert changed == {"Deployment", "MutatingWebhookConfiguration"}


def test_cert_manager_overlay_serves_the_issued_certificate() -> None:
    objects = _objects(OVERLAY)
    by_kind = {o["kind"]: o for o in objects}
    certificate = by_kind["Certificate"]
    service = by_kind["Service"]["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"]["name"] == by_kind["Issuer"]["metadata"]["name"]
    config = by_kind["MutatingWebhookConfiguration"]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    (webhook,) = config["webhooks"]
    assert "caBundle" not in webhook["clientConfig"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cert_dir = next(
        a.split("=", 1)[1] for a in container["args"] if a.startswith("--webhook-cert-dir=")
    )
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == cert_dir)
    assert mount["readOnly"] is True and "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
