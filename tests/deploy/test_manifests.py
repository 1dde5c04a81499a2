"""The raw manifests in deploy/ and the Dockerfile: parse, schema-check, RBAC == README.

No API server runs here: every object is validated against the Kubernetes
OpenAPI schemas shipped by ``kubernetes-validate`` (when it is installed;
otherwise structural checks only), and the ClusterRole is compared with the
README's "RBAC the operator needs" table so that docs and manifests cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
NAMESPACE = "openai-runtime-system"
# The oldest and the newest Kubernetes minor versions the manifests must fit.
K8S_VERSIONS = ("1.30.0", "latest")

Obj = dict[str, Any]


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.iterdir() if p.suffix in {".yaml", ".yml"})


def _manifests() -> list[Path]:
    return [p for p in _yaml_files() if p.name != "kustomization.yaml"]


def _documents(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path.name}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    return docs


def _objects() -> Iterator[tuple[str, Obj]]:
    for path in _manifests():
        for doc in _documents(path):
            yield path.name, doc


def _ids() -> list[str]:
    return [f"{name}:{o.get('kind')}/{o.get('metadata', {}).get('name')}" for name, o in _objects()]


def _one(kind: str) -> Obj:
    found = [o for _, o in _objects() if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _custom_groups() -> set[str]:
    """API groups whose kinds are defined by CRDs in deploy/ (no built-in schema)."""
    return {o["spec"]["group"] for _, o in _objects() if o["kind"] == "CustomResourceDefinition"}


# --- parsing and kustomization --------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_every_yaml_document_parses(path: Path) -> None:
    _documents(path)


def test_kustomization_lists_exactly_the_files_in_deploy() -> None:
    kustomization = _documents(DEPLOY / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    for name in listed:
        assert (DEPLOY / name).is_file(), f"kustomization.yaml lists a missing file: {name}"
    assert set(listed) == {p.name for p in _manifests()}


# --- every object -------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "obj"), list(_objects()), ids=_ids())
def test_object_has_identity(filename: str, obj: Obj) -> None:
    assert obj.get("apiVersion"), filename
    assert obj.get("kind"), filename
    assert obj.get("metadata", {}).get("name"), filename
    namespace = obj["metadata"].get("namespace")
    assert namespace in (None, NAMESPACE), f"{filename}: namespace {namespace}"


@pytest.mark.parametrize(("filename", "obj"), list(_objects()), ids=_ids())
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_object_matches_the_kubernetes_schema(filename: str, obj: Obj, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    group = obj["apiVersion"].rpartition("/")[0]
    if group in _custom_groups():
        pytest.skip(f"{obj['kind']} is defined by a CRD in deploy/, not by Kubernetes")
    if version == "latest":
        version = kv.latest_version()
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{filename} {obj['kind']}: {exc.message} at {list(exc.path)}")


def test_custom_resources_are_defined_here() -> None:
    crds = {
        (o["spec"]["group"], v["name"], o["spec"]["names"]["kind"])
        for _, o in _objects()
        if o["kind"] == "CustomResourceDefinition"
        for v in o["spec"]["versions"]
    }
    for filename, obj in _objects():
        group, _, version = obj["apiVersion"].rpartition("/")
        if group in _custom_groups():
            assert (group, version, obj["kind"]) in crds, filename


def test_images_are_pinned() -> None:
    for filename, obj in _objects():
        for container in _containers(obj):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{filename}: {image}"
            assert not image.endswith(":latest"), f"{filename}: {image}"


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
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9465, "webhook": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert ports[container[probe]["httpGet"]["port"]] == 8080
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
    names = [o["metadata"]["name"] for _, o in _objects() if o["kind"] == "ClusterKopfPeering"]
    assert names == ["openai-runtime"]  # operator/main.py --peering-name default


# --- RBAC: the ClusterRole is the README's table ---------------------------------------


def _readme_rbac() -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} from the README's "RBAC the operator needs" table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### RBAC the operator needs", 1)[1]
    rows: list[str] = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:  # the first table of the section only
            break
    assert len(rows) > 2, "no RBAC table in README.md"
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
            wanted[(group, resource)] = verbs
    return wanted


def _granted() -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in _one("ClusterRole")["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_readme_rbac_table_parses_as_expected() -> None:
    table = _readme_rbac()
    assert table[("infer.atomr.io", "openairuntimes/status")] == {"patch"}
    assert table[("", "secrets")] == {"get", "list", "watch"}
    assert ("kopf.dev", "clusterkopfpeerings") in table
    assert ("kopf.dev", "kopfpeerings") in table


def test_clusterrole_grants_exactly_the_readme_table() -> None:
    assert _granted() == _readme_rbac()


def test_no_wildcards_in_rbac() -> None:
    for rule in _one("ClusterRole")["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule


def test_secrets_are_never_written() -> None:
    forbidden = {"create", "update", "patch", "delete", "deletecollection", "*"}
    for (group, resource), verbs in _granted().items():
        if group in ("", "*") and resource.split("/")[0] in ("secrets", "*"):
            assert not verbs & forbidden, f"{resource}: {sorted(verbs & forbidden)}"


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
    assert final[0].startswith("FROM ${PYTHON_IMAGE}") or "python:3.11-slim" in final[0]
    assert any(line.startswith("ARG PYTHON_IMAGE=python:3.11-slim") for line in _dockerfile())


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
