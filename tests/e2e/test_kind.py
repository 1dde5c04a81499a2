"""End to end on kind: install, inject, call, rotate the key, deny a bad pod.

Needs Docker (with an engine), kind and kubectl; skips itself, saying which is
missing, otherwise (or with OPENAI_RUNTIME_E2E_SKIP=1). It creates a kind cluster
(``openai-runtime-e2e``, or reuses the one OPENAI_RUNTIME_E2E_CLUSTER names),
builds the operator, sidecar and demo images from the Dockerfile and loads them into kind,
installs deploy/ with the operator image replaced, runs a fake upstream, the
example Secret, runtime and demo app (see plan.py), and checks, on the cluster:

- a pod labelled for a runtime that does not exist is denied, and says why;
- the demo pod got the native sidecar, the injection annotations and the env;
- the demo app's calls succeed through the sidecar;
- rotating the key Secret reaches the runtime's status, the pod's annotation and
  the sidecar within 60 seconds, without a restart and without a failed call.

A cluster the suite created is deleted at the end unless OPENAI_RUNTIME_E2E_KEEP=1;
a reused one is kept. The kubeconfig is a temporary file: the current context of
the user's kubeconfig is never changed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_runtime_sidecar.runner.credentials import fingerprint

from . import plan
from .plan import CommandError, Obj, run, wait_until

# Creating a cluster and building three images come first: minutes, not seconds.
pytestmark = pytest.mark.timeout(1800)

OLD_KEY, NEW_KEY = plan.KEYS
NS = plan.APP_NAMESPACE
MISSING_RUNTIME = "no-such-runtime"


class Kube:
    """kubectl against one kind cluster, through a kubeconfig of the suite's own."""

    def __init__(self, cluster: str, kubeconfig: Path, *, reused: bool) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.reused = reused

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True
    ) -> Any:
        return run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            timeout=timeout,
            check=check,
        )

    def get(self, *args: str) -> Obj:
        result: Obj = json.loads(self("get", "-o", "json", *args).stdout)
        return result

    def apply(self, objects: list[Obj], namespace: str | None = None) -> None:
        scope = ["--namespace", namespace] if namespace else []
        self("apply", *scope, "-f", "-", input=plan.dump_all(objects), timeout=120)


# -- fixtures: cluster, images, install, workload ---------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    reason = plan.prerequisites(environ=os.environ)
    if reason:
        pytest.skip(f"kind end-to-end suite: {reason}")
    name = os.environ.get(plan.ENV_CLUSTER) or plan.DEFAULT_CLUSTER
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    existing = run(["kind", "get", "clusters"]).stdout.split()
    created = name not in existing
    if created:
        image = os.environ.get(plan.ENV_NODE_IMAGE) or plan.DEFAULT_NODE_IMAGE
        run(
            [
                *("kind", "create", "cluster", "--name", name, "--image", image),
                *("--kubeconfig", str(kubeconfig), "--wait", "180s"),
            ],
            timeout=600,
        )
    else:
        kubeconfig.write_text(run(["kind", "get", "kubeconfig", "--name", name]).stdout)
    kube = Kube(name, kubeconfig, reused=not created)
    try:
        version = plan.parse_version(
            json.loads(kube("version", "-o", "json").stdout)["serverVersion"]
        )
        if version < plan.MIN_KUBERNETES:
            pytest.fail(
                f"kind cluster {name} runs Kubernetes {version[0]}.{version[1]}; the suite "
                "needs 1.29 or later (native sidecars)"
            )
        yield kube
    finally:
        if created and os.environ.get(plan.ENV_KEEP) != "1":
            run(["kind", "delete", "cluster", "--name", name], timeout=300, check=False)


@pytest.fixture(scope="module")
def images(kube: Kube) -> None:
    for image, target in plan.DOCKER_TARGETS.items():
        run(["docker", "build", "--target", target, "-t", image, "."], timeout=1200)
        run(["kind", "load", "docker-image", image, "--name", kube.cluster], timeout=600)


def _webhook_answers(kube: Kube) -> tuple[bool, str]:
    """A server-side dry run of a labelled pod: denied by the operator once it serves."""
    done = _run_labelled_pod(kube, "e2e-webhook-probe", "--dry-run=server")
    return "denied the request" in done.stderr, done.stderr.strip() or done.stdout.strip()


def _run_labelled_pod(kube: Kube, name: str, *extra: str) -> Any:
    return kube(
        "run",
        name,
        "--namespace",
        NS,
        f"--image={plan.RUNTIME_IMAGE}",
        "--image-pull-policy=Never",
        "--restart=Never",
        f"--labels={plan.LABEL_RUNTIME}={MISSING_RUNTIME}",
        *extra,
        "--command",
        "--",
        "sleep",
        "1",
        check=False,
    )


@pytest.fixture(scope="module")
def installed(kube: Kube, images: None) -> Kube:
    base = plan.base_objects()
    crds, rest = plan.install_objects(base)
    kube.apply(crds)
    for crd in crds:
        name = crd["metadata"]["name"]
        kube("wait", "--for=condition=established", "--timeout=60s", f"crd/{name}")
    kube.apply(rest)
    deployment = f"deployment/{plan.OPERATOR_DEPLOYMENT}"
    if kube.reused:  # it may run an older build under the same tag
        kube("rollout", "restart", "--namespace", plan.OPERATOR_NAMESPACE, deployment)
    kube(
        "rollout",
        "status",
        "--namespace",
        plan.OPERATOR_NAMESPACE,
        deployment,
        "--timeout=300s",
        timeout=330,
    )
    kube(
        "wait",
        "--namespace",
        plan.OPERATOR_NAMESPACE,
        "--for=condition=Available",
        "--timeout=60s",
        deployment,
    )

    def ca_bundle() -> tuple[bool, str]:
        config = kube.get("mutatingwebhookconfiguration", plan.WEBHOOK_CONFIGURATION)
        bundles = [w.get("clientConfig", {}).get("caBundle") for w in config["webhooks"]]
        return all(bundles), f"caBundle set: {[bool(b) for b in bundles]}"

    wait_until(ca_bundle, 120, "the operator patches the webhook's caBundle")
    # A fresh namespace per run, even on a reused cluster.
    kube("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=300)
    kube.apply([plan.namespace_object()])
    wait_until(lambda: _webhook_answers(kube), 120, "the admission webhook answers")
    return kube


def _runtime(kube: Kube) -> Obj:
    return kube.get("--namespace", NS, "openairuntime", plan.RUNTIME_NAME)


def _demo_pod(kube: Kube) -> Obj:
    pods = kube.get("--namespace", NS, "pods", "-l", plan.DEMO_SELECTOR)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in live]
    return live[0]


def _sidecar_status(kube: Kube, pod: str) -> Obj:
    out = kube(
        "exec",
        "--namespace",
        NS,
        pod,
        "-c",
        plan.DEMO_CONTAINER,
        "--",
        "python",
        "-c",
        plan.STATUS_SCRIPT,
    ).stdout
    status: Obj = json.loads(out)
    return status


def _calls(kube: Kube, pod: str) -> list[tuple[int, str, str]]:
    log = kube("logs", "--namespace", NS, pod, "-c", plan.DEMO_CONTAINER).stdout
    return plan.call_lines(log)


@pytest.fixture(scope="module")
def demo(installed: Kube) -> str:
    """The demo app running against the fake upstream with the old key; its pod's name."""
    kube = installed
    kube.apply(plan.fake_upstream_objects(), NS)
    kube(
        "rollout",
        "status",
        "--namespace",
        NS,
        f"deployment/{plan.FAKE_UPSTREAM_NAME}",
        "--timeout=120s",
        timeout=150,
    )
    kube.apply([plan.secret_object(OLD_KEY)], NS)
    kube.apply([plan.runtime_object()], NS)

    def runtime_ready() -> tuple[bool, Any]:
        runtime = _runtime(kube)
        ready = plan.condition(runtime, "Ready")
        return bool(ready and ready["status"] == "True"), runtime.get("status")

    wait_until(runtime_ready, 90, f"OpenAiRuntime {plan.RUNTIME_NAME} is Ready")
    kube.apply(plan.demo_objects(), NS)
    try:
        kube(
            "rollout",
            "status",
            "--namespace",
            NS,
            f"deployment/{plan.DEMO_DEPLOYMENT}",
            "--timeout=180s",
            timeout=210,
        )
    except CommandError as exc:
        pods = kube("get", "--namespace", NS, "pods", "-o", "wide", check=False).stdout
        events = kube("get", "--namespace", NS, "events", check=False).stdout
        raise AssertionError(f"the demo app is not ready:\n{pods}\n{events}") from exc
    return str(_demo_pod(kube)["metadata"]["name"])


# -- the tests (in this order: the rotation comes last) ---------------------------------


def test_a_labelled_pod_naming_a_missing_runtime_is_denied(installed: Kube) -> None:
    done = _run_labelled_pod(installed, "e2e-denied")
    assert done.returncode != 0
    assert "denied the request" in done.stderr
    assert f"OpenAiRuntime {MISSING_RUNTIME} not found in namespace {NS}" in done.stderr
    gone = installed("get", "--namespace", NS, "pod", "e2e-denied", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_the_demo_pod_has_the_native_sidecar(installed: Kube, demo: str) -> None:
    pod = _demo_pod(installed)
    annotations = pod["metadata"].get("annotations") or {}
    assert annotations[plan.ANNOTATION_INJECTED] == plan.RUNTIME_NAME
    assert annotations[plan.ANNOTATION_CREDENTIAL_VERSION] == fingerprint(OLD_KEY)
    init = pod["spec"]["initContainers"][0]
    assert init["name"] == plan.SIDECAR_CONTAINER
    assert init["restartPolicy"] == "Always"
    assert init["image"] == plan.RUNTIME_IMAGE
    (app,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8787/v1"
    assert env["OPENAI_API_KEY"]  # a placeholder: the sidecar holds the key
    assert env["OPENAI_API_KEY"] != OLD_KEY
    statuses = {s["name"]: s for s in pod["status"].get("initContainerStatuses", [])}
    assert statuses[plan.SIDECAR_CONTAINER]["ready"] is True
    status = _sidecar_status(installed, demo)
    assert status["ready"] is True
    assert status["credential"]["fingerprint"] == fingerprint(OLD_KEY)
    assert status["upstream"].startswith(plan.fake_upstream_url())


def test_the_demo_app_calls_succeed_through_the_sidecar(installed: Kube, demo: str) -> None:
    def succeeded() -> tuple[bool, list[tuple[int, str, str]]]:
        calls = _calls(installed, demo)
        return sum(result == "ok" for _, result, _ in calls) >= 3, calls

    calls = wait_until(succeeded, 60, "three successful calls in the demo app's log")
    ok = [line for _, result, line in calls if result == "ok"]
    assert all(" status=200 model=gpt-4o-mini" in line for line in ok), ok
    assert all("cost_usd=-" not in line and "total_tokens=-" not in line for line in ok), ok
    # The sidecar starts first (native sidecar, startup probe): no call failed.
    assert [line for _, result, line in calls if result != "ok"] == []


def test_a_key_rotation_reaches_the_pod_without_a_failed_call(installed: Kube, demo: str) -> None:
    kube = installed
    old_fp, new_fp = fingerprint(OLD_KEY), fingerprint(NEW_KEY)
    assert _runtime(kube)["status"]["credential"]["fingerprint"] == old_fp
    last_before = max((n for n, _, _ in _calls(kube, demo)), default=0)
    restarts_before = _restarts(_demo_pod(kube))

    kube.apply([plan.secret_object(NEW_KEY)], NS)
    started = time.monotonic()

    def rotated() -> tuple[bool, dict[str, Any]]:
        state = {
            "runtime": _runtime(kube)["status"]["credential"]["fingerprint"],
            "pod": _demo_pod(kube)["metadata"]["annotations"].get(
                plan.ANNOTATION_CREDENTIAL_VERSION
            ),
            "sidecar": _sidecar_status(kube, demo)["credential"]["fingerprint"],
        }
        return set(state.values()) == {new_fp}, state

    wait_until(rotated, 60, f"the runtime, the pod and the sidecar at {new_fp}")
    assert time.monotonic() - started <= 60 + 15  # the last probe may have been slow
    last_rotated = max((n for n, _, _ in _calls(kube, demo)), default=0)

    def more_calls() -> tuple[bool, list[tuple[int, str, str]]]:
        calls = _calls(kube, demo)
        return sum(n > last_rotated for n, _, _ in calls) >= 3, calls

    calls = wait_until(more_calls, 60, "three calls after the sidecar took the new key")
    # Every call since the new key was applied, during and after the swap, succeeded.
    after = [line for n, result, line in calls if n > last_before and result != "ok"]
    assert after == []
    # Zero downtime: same pod, nothing restarted.
    pod = _demo_pod(kube)
    assert pod["metadata"]["name"] == demo
    assert _restarts(pod) == restarts_before


def _restarts(pod: Obj) -> dict[str, int]:
    statuses = [
        *pod["status"].get("initContainerStatuses", []),
        *pod["status"].get("containerStatuses", []),
    ]
    return {s["name"]: s.get("restartCount", 0) for s in statuses}
