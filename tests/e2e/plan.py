"""What the kind end-to-end suite applies, and how it waits: no cluster needed here.

test_kind.py drives a cluster with these; test_plan.py checks them without one.
Everything the suite applies comes from the repository: deploy/ (rendered by
``kubectl kustomize``) with the operator image replaced by the locally built one,
examples/secret.yaml, examples/runtime-direct.yaml and examples/demo-app.yaml
adapted to the test's namespace, images and fake upstream, and fake-upstream.yaml
next to this file.
"""

from __future__ import annotations

import base64
import copy
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests import kustomize
from tests.support import NEW_KEY, OLD_KEY

Obj = dict[str, Any]
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = kustomize.DEPLOY
EXAMPLES = ROOT / "examples"
FAKE_UPSTREAM = Path(__file__).with_name("fake-upstream.yaml")

ENV_CLUSTER = "OPENAI_RUNTIME_E2E_CLUSTER"
"""Names the kind cluster to use; an existing one is reused (and kept)."""
ENV_KEEP = "OPENAI_RUNTIME_E2E_KEEP"
"""``1``: keep the cluster the suite created (for a look around, or a faster rerun)."""
ENV_NODE_IMAGE = "OPENAI_RUNTIME_E2E_NODE_IMAGE"
"""The kind node image of a new cluster (Kubernetes 1.29 or later)."""
ENV_SKIP = "OPENAI_RUNTIME_E2E_SKIP"
"""``1``: skip the kind suite even where Docker, kind and kubectl are present."""

DEFAULT_CLUSTER = "openai-runtime-e2e"
DEFAULT_NODE_IMAGE = "kindest/node:v1.31.2"
MIN_KUBERNETES = (1, 29)
"""Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29."""

OPERATOR_NAMESPACE = "openai-runtime-system"
OPERATOR_DEPLOYMENT = "openai-runtime-operator"
WEBHOOK_CONFIGURATION = "openai-runtime"
APP_NAMESPACE = "openai-runtime-e2e"

RELEASE_OPERATOR_IMAGE = "ghcr.io/atomr/openai-runtime-operator:0.1.0"
RELEASE_SIDECAR_IMAGE = "ghcr.io/atomr/openai-runtime-sidecar:0.1.0"
RELEASE_DEMO_IMAGE = "ghcr.io/atomr/openai-runtime-demo:0.1.0"
OPERATOR_IMAGE = "openai-runtime-operator:e2e"
RUNTIME_IMAGE = "openai-runtime:e2e"
"""The sidecar image the suite builds; it also serves the fake upstream."""
DEMO_IMAGE = "openai-runtime-demo:e2e"
IMAGES = {
    RELEASE_OPERATOR_IMAGE: OPERATOR_IMAGE,
    RELEASE_SIDECAR_IMAGE: RUNTIME_IMAGE,
    RELEASE_DEMO_IMAGE: DEMO_IMAGE,
}
"""Released image -> the image built by the suite and loaded into kind."""
DOCKER_TARGETS = {OPERATOR_IMAGE: "operator", RUNTIME_IMAGE: "sidecar", DEMO_IMAGE: "demo"}
"""Image the suite builds -> its Dockerfile target."""

RUNTIME_NAME = "openai"
SECRET_NAME = "openai-key"
DEMO_DEPLOYMENT = "openai-demo"
DEMO_CONTAINER = "app"
DEMO_SELECTOR = "app.kubernetes.io/name=openai-demo"
DEMO_INTERVAL = "1"
"""Seconds between the demo's calls in the suite (the example says 5)."""
FAKE_UPSTREAM_NAME = "fake-upstream"
FAKE_UPSTREAM_PORT = 8080
SIDECAR_CONTAINER = "openai-runtime"
ADMIN_PORT = 9464
LABEL_RUNTIME = "infer.atomr.io/runtime"
ANNOTATION_INJECTED = "infer.atomr.io/injected"
ANNOTATION_CREDENTIAL_VERSION = "infer.atomr.io/credential-version"

KEYS = (OLD_KEY, NEW_KEY)
"""The old and the new API key: the fake upstream accepts both, the Secret holds one."""


# -- manifests ----------------------------------------------------------------------


def load_all(path: Path) -> list[Obj]:
    """The YAML documents of ``path`` (empty ones left out)."""
    text = path.read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def parse_all(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def dump_all(objects: Iterable[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False)


def base_objects() -> list[Obj]:
    """deploy/ as ``kubectl kustomize deploy/`` renders it, which is what the suite installs.

    Built by kubectl itself (the calling test skips without it), never emulated:
    what kustomize refuses must not pass here.
    """
    return kustomize.build(DEPLOY)


def pod_template_specs(obj: Obj) -> list[Obj]:
    """The pod specs an object holds (a Pod's own, or a workload's template)."""
    if obj.get("kind") == "Pod":
        return [obj.get("spec") or {}]
    template = (obj.get("spec") or {}).get("template") or {}
    return [template["spec"]] if "spec" in template else []


def replace_images(
    objects: Iterable[Obj], images: Mapping[str, str], pull_policy: str = "Never"
) -> tuple[list[Obj], list[str]]:
    """Copies of ``objects`` running the images of the suite; and what was replaced.

    Every container (init containers too) whose image is a key of ``images``
    gets its value and ``imagePullPolicy: pull_policy`` (kind-loaded images are
    never pulled). The second result names each replaced container as
    ``Kind/name/container``.
    """
    result = [copy.deepcopy(o) for o in objects]
    replaced: list[str] = []
    for obj in result:
        for spec in pod_template_specs(obj):
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                if container.get("image") in images:
                    container["image"] = images[container["image"]]
                    container["imagePullPolicy"] = pull_policy
                    name = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
                    replaced.append(name)
    return result, replaced


def images_of(objects: Iterable[Obj]) -> set[str]:
    return {
        c["image"]
        for obj in objects
        for spec in pod_template_specs(obj)
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
    }


def split_crds(objects: Iterable[Obj]) -> tuple[list[Obj], list[Obj]]:
    """(CustomResourceDefinitions, everything else): the first must be established first."""
    objects = list(objects)
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    return crds, [o for o in objects if o["kind"] != "CustomResourceDefinition"]


def install_objects(base: Iterable[Obj]) -> tuple[list[Obj], list[Obj]]:
    """The operator's install (CRDs, the rest) from the rendered base, images replaced."""
    objects, _ = replace_images(base, IMAGES)
    return split_crds(objects)


def namespace_object(name: str = APP_NAMESPACE) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def secret_object(key: str) -> Obj:
    """examples/secret.yaml holding ``key`` (as ``data``: a plain re-apply replaces it)."""
    secret = load_all(EXAMPLES / "secret.yaml")[0]
    (name,) = secret.pop("stringData")
    secret["data"] = {name: base64.b64encode(key.encode()).decode()}
    return secret


def fake_upstream_objects() -> list[Obj]:
    return load_all(FAKE_UPSTREAM)


def fake_upstream_url(namespace: str = APP_NAMESPACE) -> str:
    return f"http://{FAKE_UPSTREAM_NAME}.{namespace}.svc:{FAKE_UPSTREAM_PORT}/v1"


def runtime_object(namespace: str = APP_NAMESPACE) -> Obj:
    """examples/runtime-direct.yaml aimed at the fake upstream, with the suite's sidecar image."""
    runtime = load_all(EXAMPLES / "runtime-direct.yaml")[0]
    runtime["spec"]["variant"]["direct"]["endpoint"] = fake_upstream_url(namespace)
    runtime["spec"]["sidecar"] = {"image": RUNTIME_IMAGE, "imagePullPolicy": "Never"}
    return runtime


def demo_objects() -> list[Obj]:
    """examples/demo-app.yaml with the suite's demo image, calling every second."""
    objects, replaced = replace_images(load_all(EXAMPLES / "demo-app.yaml"), IMAGES)
    assert replaced == [f"Deployment/{DEMO_DEPLOYMENT}/{DEMO_CONTAINER}"], replaced
    for obj in objects:
        for spec in pod_template_specs(obj):
            for container in spec["containers"]:
                for env in container.get("env", []):
                    if env["name"] == "DEMO_INTERVAL":
                        env["value"] = DEMO_INTERVAL
    return objects


# -- commands and waiting -----------------------------------------------------------


class CommandError(RuntimeError):
    """A command exited non-zero or timed out (the message has its stderr)."""

    def __init__(self, args: Sequence[str], message: str, stdout: str = "", stderr: str = ""):
        super().__init__(f"{' '.join(args)}: {message}\n{stderr.strip()}")
        self.stdout = stdout
        self.stderr = stderr


def run(
    args: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 60,
    check: bool = True,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell), capturing text output."""
    try:
        done = subprocess.run(
            list(args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, f"no answer after {timeout}s") from exc
    if check and done.returncode != 0:
        raise CommandError(args, f"exit status {done.returncode}", done.stdout, done.stderr)
    return done


def prerequisites(
    which: Callable[[str], str | None] = shutil.which,
    runner: Callable[..., subprocess.CompletedProcess[str]] = run,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Why the kind suite cannot run here, or None when it can."""
    environ = {} if environ is None else environ
    if environ.get(ENV_SKIP) == "1":
        return f"{ENV_SKIP}=1"
    if which("docker") is None:
        return "docker is not installed (the suite builds the images with it)"
    try:
        runner(["docker", "info"], timeout=30)
    except CommandError as exc:
        first = (exc.stderr.strip().splitlines() or [str(exc)])[-1]
        return f"docker info failed: no Docker engine to build images and run kind ({first})"
    for tool, why in (("kind", "creates the cluster"), ("kubectl", "drives the cluster")):
        if which(tool) is None:
            return f"{tool} is not installed (it {why})"
    return None


def wait_until(
    probe: Callable[[], tuple[bool, T]],
    timeout: float,
    what: str,
    *,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``probe`` until it reports done; its last state, or TimeoutError naming it.

    ``probe`` returns ``(done, state)``. A :class:`CommandError` it raises (the
    API server restarting, an object not there yet) counts as not done, with the
    error as the state. Polling a cluster is the one place a test sleeps.
    """
    deadline = clock() + timeout
    state: object = None
    while True:
        try:
            done, value = probe()
        except CommandError as exc:
            state = exc
        else:
            if done:
                return value
            state = value
        if clock() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s; last observed: {state}")
        sleep(interval)


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The status condition ``type_`` of ``obj``, if it has one."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def parse_version(version: Mapping[str, Any]) -> tuple[int, int]:
    """(major, minor) of ``kubectl version -o json``'s serverVersion (minor may end in +)."""
    return int(version["major"]), int(str(version["minor"]).rstrip("+"))


def call_lines(log: str) -> list[tuple[int, str, str]]:
    """The demo app's per-call lines: (call number, result, the line)."""
    found: list[tuple[int, str, str]] = []
    for line in log.splitlines():
        if line.startswith("call="):
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            found.append((int(fields["call"]), fields.get("result", "?"), line))
    return found


STATUS_SCRIPT = (
    "import sys, urllib.request; "
    f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{ADMIN_PORT}/status', "
    "timeout=5).read().decode())"
)
"""Run with the demo image's python in the app container: the sidecar's /status (same pod,
same loopback)."""
