"""The operator/sidecar contract: cheap to import, the only shared facts, and what both use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import openai_runtime_operator
from openai_runtime_operator.convergence import ConvergenceSettings
from openai_runtime_operator.injecting import inject
from openai_runtime_operator.main import build_parser
from openai_runtime_operator.models import OpenAiRuntimeSpec, SecretKeyRef, render_sidecar_config
from openai_runtime_operator.networking import NetworkPolicySettings
from openai_runtime_operator.reconciling import render_configmap
from openai_runtime_sidecar import contract
from openai_runtime_sidecar.admin import build_admin_app
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig, parse_listen
from openai_runtime_sidecar.fakes.secretvolume import SecretVolume

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"pydantic", "aiohttp", "opentelemetry", "kopf", "kubernetes", "yaml"}


def test_the_contract_imports_only_the_standard_library(tmp_path: Path) -> None:
    # A fresh interpreter: this one has long imported everything.
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import openai_runtime_sidecar.contract\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'openai_runtime_sidecar'}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]", run.stdout
    assert not HEAVY & set(sys.stdlib_module_names)


def test_the_contract_exports_what_it_defines() -> None:
    public = {n for n in vars(contract) if not n.startswith("_") and n != "annotations"}
    assert set(contract.__all__) == public


def _private_sidecar_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "openai_runtime_sidecar":
                parts = [*node.module.split(".")[1:], *(a.name for a in node.names)]
                found += [f"{path.name}:{node.lineno} {node.module}" for p in parts if p[0] == "_"]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "openai_runtime_sidecar" and any(p[0] == "_" for p in parts):
                    found.append(f"{path.name}:{node.lineno} {alias.name}")
    return found


def test_the_operator_imports_nothing_private_from_the_sidecar() -> None:
    sources = sorted(
        path for where in openai_runtime_operator.__path__ for path in Path(where).glob("*.py")
    )
    assert sources, "the operator's sources were not found"
    assert [hit for path in sources for hit in _private_sidecar_imports(path)] == []


def test_the_sidecar_defaults_are_the_contract() -> None:
    config = SidecarConfig.model_validate({"variant": {"direct": {}}})
    assert config.listen.api == contract.API_LISTEN
    assert parse_listen(config.listen.api) == (contract.API_HOST, contract.API_PORT)
    assert parse_listen(config.listen.admin)[1] == contract.ADMIN_PORT
    assert config.api_key.file == contract.DEFAULT_KEY_FILE
    assert contract.key_file(contract.DEFAULT_SECRET_KEY) == contract.DEFAULT_KEY_FILE
    assert contract.key_file("token").startswith(contract.KEY_DIR + "/")
    assert f"http://{config.listen.api}/v1" == contract.API_BASE_URL
    assert SecretVolume.__init__.__defaults__ == (contract.DEFAULT_SECRET_KEY,)


def test_the_sidecar_serves_the_admin_paths_the_operator_calls() -> None:
    # Routes are registered without touching the sidecar; none is called.
    app = build_admin_app(cast(Sidecar, object()))
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}
    assert {contract.HEALTHZ_PATH, contract.READYZ_PATH, contract.STATUS_PATH} <= paths


def test_the_operator_defaults_are_the_contract() -> None:
    assert ConvergenceSettings().port == contract.ADMIN_PORT
    assert ConvergenceSettings().path == contract.STATUS_PATH
    assert NetworkPolicySettings("ops").port == contract.ADMIN_PORT
    assert build_parser().parse_args([]).sidecar_admin_port == contract.ADMIN_PORT
    assert SecretKeyRef(name="k").key == contract.DEFAULT_SECRET_KEY


def test_what_the_operator_writes_is_what_the_sidecar_reads() -> None:
    spec = OpenAiRuntimeSpec.model_validate(
        {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "k"}}
    )
    # A runtime naming no Secret key gets the file the sidecar reads by default.
    assert render_sidecar_config("ns", "rt", spec).api_key.file == contract.DEFAULT_KEY_FILE
    configmap = render_configmap(
        {"apiVersion": "v1", "kind": "X", "metadata": {"name": "rt", "uid": "u"}}, "ns", "rt", spec
    )
    assert list(configmap["data"]) == [contract.CONFIG_KEY]

    runtime: dict[str, Any] = {
        "metadata": {"name": "rt", "namespace": "ns"},
        "spec": spec.model_dump(by_alias=True, mode="json"),
    }
    pod = inject({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}, runtime)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["args"][-1] == contract.CONFIG_FILE
    assert [p["containerPort"] for p in sidecar["ports"]] == [contract.ADMIN_PORT]
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts == {contract.CONFIG_DIR, contract.KEY_DIR}
    probes = [sidecar[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert probes == [
        {"path": contract.HEALTHZ_PATH, "port": contract.ADMIN_PORT},
        {"path": contract.READYZ_PATH, "port": contract.ADMIN_PORT},
        {"path": contract.HEALTHZ_PATH, "port": contract.ADMIN_PORT},
    ]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["OPENAI_BASE_URL"] == contract.API_BASE_URL


def test_the_image_runs_the_sidecar_on_the_contract_config_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'CMD ["sidecar", "--config", "{contract.CONFIG_FILE}"]' in dockerfile
