"""What the kind suite applies and how it waits, checked without a cluster.

The manifests (fake upstream, runtime, Secret, demo app, the operator's install)
are schema-checked the way tests/deploy and tests/operator check theirs; the
image replacement must hit exactly the containers it should; the demo app runs,
as a process, against a real sidecar in front of the fake upstream.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openai_runtime_operator import injecting, models
from openai_runtime_operator.crd import build_crd
from openai_runtime_operator.models import OpenAiRuntimeSpec
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from tests.operator.k8sschema import cel_errors, schema_errors

from . import plan
from .plan import CommandError, Obj

K8S_VERSIONS = ("1.30.0", "latest")
DEMO_APP = plan.EXAMPLES / "demo_app.py"
OK_LINE = re.compile(
    r"call=\d+ result=ok status=200 model=gpt-4o-mini\S* prompt_tokens=\d+ "
    r"completion_tokens=\d+ total_tokens=\d+ cost_usd=\d+(\.\d+)? attempts=1"
)


def validate(obj: Obj) -> None:
    """Against the Kubernetes OpenAPI schemas (as tests/deploy/test_manifests.py does)."""
    kv = pytest.importorskip("kubernetes_validate")
    for version in K8S_VERSIONS:
        target = kv.latest_version() if version == "latest" else version
        try:
            kv.validate(obj, target, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} {list(exc.path)}")


def containers(obj: Obj) -> list[Obj]:
    return [c for spec in plan.pod_template_specs(obj) for c in spec.get("containers", [])]


# -- the manifests ------------------------------------------------------------------


def test_the_demo_app_example_is_valid_and_configures_nothing_itself() -> None:
    (deployment,) = plan.load_all(plan.EXAMPLES / "demo-app.yaml")
    validate(deployment)
    assert deployment["kind"] == "Deployment"
    assert deployment["metadata"]["name"] == plan.DEMO_DEPLOYMENT
    template = deployment["spec"]["template"]
    runtime = plan.load_all(plan.EXAMPLES / "runtime-direct.yaml")[0]
    assert template["metadata"]["labels"][plan.LABEL_RUNTIME] == runtime["metadata"]["name"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        template["metadata"]["labels"].items()
    )
    (app,) = containers(deployment)
    assert app["name"] == plan.DEMO_CONTAINER
    assert app["image"] == plan.RELEASE_DEMO_IMAGE
    # No URL, no key, no command: the injection and the image provide them.
    assert [e["name"] for e in app.get("env", [])] == ["DEMO_INTERVAL"]
    assert "command" not in app and "args" not in app
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_demo_objects_run_the_suites_image() -> None:
    (deployment,) = plan.demo_objects()
    validate(deployment)
    (app,) = containers(deployment)
    assert (app["image"], app["imagePullPolicy"]) == (plan.DEMO_IMAGE, "Never")
    assert app["env"] == [{"name": "DEMO_INTERVAL", "value": plan.DEMO_INTERVAL}]
    # The example itself is untouched.
    (example,) = plan.load_all(plan.EXAMPLES / "demo-app.yaml")
    assert containers(example)[0]["image"] == plan.RELEASE_DEMO_IMAGE


def test_the_fake_upstream_accepts_both_keys_and_serves_the_runtimes_endpoint() -> None:
    objects = plan.fake_upstream_objects()
    for obj in objects:
        validate(obj)
        assert "namespace" not in obj["metadata"]  # applied in the suite's namespace
    deployment, service = sorted(objects, key=lambda o: o["kind"])
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    (container,) = containers(deployment)
    assert (container["image"], container["imagePullPolicy"]) == (plan.RUNTIME_IMAGE, "Never")
    args = container["args"]
    assert args[0] == "fake-upstream"
    assert [a.removeprefix("--key=") for a in args if a.startswith("--key=")] == list(plan.KEYS)
    assert f"--port={plan.FAKE_UPSTREAM_PORT}" in args and "--host=0.0.0.0" in args
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["metadata"]["name"] == plan.FAKE_UPSTREAM_NAME
    assert [p["port"] for p in service["spec"]["ports"]] == [plan.FAKE_UPSTREAM_PORT]


def test_the_runtime_points_at_the_fake_upstream_and_fits_the_crd() -> None:
    runtime = plan.runtime_object()
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema_errors(schema, runtime, strict_fields=True) == []
    assert cel_errors(schema, runtime) == []
    spec = OpenAiRuntimeSpec.model_validate(runtime["spec"])
    assert runtime["metadata"]["name"] == plan.RUNTIME_NAME
    assert spec.variant.direct is not None
    assert spec.variant.direct.endpoint == (
        f"http://fake-upstream.{plan.APP_NAMESPACE}.svc:{plan.FAKE_UPSTREAM_PORT}/v1"
    )
    assert (spec.sidecar.image, spec.sidecar.image_pull_policy) == (plan.RUNTIME_IMAGE, "Never")
    assert spec.sidecar.native is True
    assert spec.models.default == "gpt-4o-mini"
    assert spec.api_key_secret_ref.name == plan.SECRET_NAME


@pytest.mark.parametrize("key", plan.KEYS)
def test_the_secret_holds_the_key_as_data(key: str) -> None:
    secret = plan.secret_object(key)
    validate(secret)
    assert secret["metadata"]["name"] == plan.SECRET_NAME
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["api-key"]).decode() == key


def test_the_install_replaces_exactly_the_operator_image() -> None:
    base = plan.base_objects()
    assert plan.images_of(base) == {plan.RELEASE_OPERATOR_IMAGE}
    replaced_objects, replaced = plan.replace_images(base, plan.IMAGES)
    assert replaced == [f"Deployment/{plan.OPERATOR_DEPLOYMENT}/operator"]
    assert plan.images_of(replaced_objects) == {plan.OPERATOR_IMAGE}
    assert plan.images_of(base) == {plan.RELEASE_OPERATOR_IMAGE}  # the input is untouched
    crds, rest = plan.install_objects(base)
    assert crds and all(o["kind"] == "CustomResourceDefinition" for o in crds)
    assert {o["metadata"]["name"] for o in crds} >= {f"{models.PLURAL}.{models.GROUP}"}
    assert len(crds) + len(rest) == len(base)
    assert not any(o["kind"] == "CustomResourceDefinition" for o in rest)
    assert plan.images_of(rest) == {plan.OPERATOR_IMAGE}
    (operator,) = [c for o in rest for c in containers(o)]
    assert operator["imagePullPolicy"] == "Never"


def test_replace_images_covers_init_containers_and_pods() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "initContainers": [{"name": "i", "image": plan.RELEASE_SIDECAR_IMAGE}],
            "containers": [{"name": "c", "image": "busybox:1.36"}],
        },
    }
    [result], replaced = plan.replace_images([pod], plan.IMAGES)
    assert replaced == ["Pod/p/i"]
    assert plan.images_of([result]) == {plan.RUNTIME_IMAGE, "busybox:1.36"}


def test_the_suite_agrees_with_the_operator_and_the_webhook() -> None:
    assert plan.LABEL_RUNTIME == models.LABEL_RUNTIME
    assert plan.ANNOTATION_INJECTED == models.ANNOTATION_INJECTED
    assert plan.ANNOTATION_CREDENTIAL_VERSION == models.ANNOTATION_CREDENTIAL_VERSION
    assert plan.SIDECAR_CONTAINER == models.CONTAINER_NAME
    assert plan.RELEASE_SIDECAR_IMAGE == models.DEFAULT_IMAGE
    assert plan.ADMIN_PORT == injecting.ADMIN_PORT
    base = plan.base_objects()
    (webhook_config,) = [o for o in base if o["kind"] == "MutatingWebhookConfiguration"]
    assert webhook_config["metadata"]["name"] == plan.WEBHOOK_CONFIGURATION
    (webhook,) = webhook_config["webhooks"]
    excluded = {
        value
        for expression in webhook["namespaceSelector"]["matchExpressions"]
        for value in expression.get("values", [])
    }
    assert plan.APP_NAMESPACE not in excluded
    assert webhook["objectSelector"]["matchExpressions"][0]["key"] == plan.LABEL_RUNTIME
    (operator,) = [o for o in base if o["kind"] == "Deployment"]
    assert operator["metadata"]["namespace"] == plan.OPERATOR_NAMESPACE


# -- the Dockerfile targets ---------------------------------------------------------


def _stages() -> list[tuple[str, list[str]]]:
    text = (plan.ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    stages: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            words = line.split()
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else ""
            stages.append((name, []))
        if stages:
            stages[-1][1].append(line)
    return stages


def test_the_dockerfile_has_the_suites_targets_and_sidecar_is_the_default() -> None:
    stages = _stages()
    names = [name for name, _ in stages]
    assert set(plan.DOCKER_TARGETS.values()) <= set(names)
    assert names[-1] == "sidecar"  # `docker build .` builds the last stage
    demo = dict(stages)["demo"]
    assert 'ENTRYPOINT ["python", "/app/demo_app.py"]' in demo
    assert "COPY examples/demo_app.py /app/demo_app.py" in demo
    users = [line.split()[1] for line in demo if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1] != "0"
    ignore = (plan.ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!examples/demo_app.py" in ignore


# -- commands and waiting -----------------------------------------------------------


def _done(returncode: int, stderr: str = "") -> Any:
    def runner(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if returncode:
            raise CommandError(args, f"exit status {returncode}", "", stderr)
        return subprocess.CompletedProcess(args, 0, "", "")

    return runner


def test_prerequisites_name_what_is_missing() -> None:
    everything = {"docker": "/d", "kind": "/k", "kubectl": "/c"}
    assert plan.prerequisites(everything.get, _done(0)) is None

    def without(tool: str) -> Any:
        return {k: v for k, v in everything.items() if k != tool}.get

    assert "docker is not installed" in str(plan.prerequisites(without("docker"), _done(0)))
    reason = plan.prerequisites(everything.get, _done(1, "Cannot connect to the Docker daemon"))
    assert reason is not None
    assert reason.startswith("docker info failed") and "Cannot connect" in reason
    assert "kind is not installed" in str(plan.prerequisites(without("kind"), _done(0)))
    assert "kubectl is not installed" in str(plan.prerequisites(without("kubectl"), _done(0)))
    skip = {plan.ENV_SKIP: "1"}
    assert plan.prerequisites(everything.get, _done(0), skip) == f"{plan.ENV_SKIP}=1"


def test_run_reports_the_failing_command() -> None:
    with pytest.raises(CommandError, match="exit status 3") as caught:
        plan.run([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert caught.value.stderr == "boom"
    assert plan.run([sys.executable, "-c", "print('hi')"]).stdout == "hi\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_until_polls_through_errors_until_done() -> None:
    clock = FakeClock()
    answers: list[Any] = [CommandError(["kubectl"], "refused"), (False, "pending"), (True, "ok")]

    def probe() -> tuple[bool, str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert plan.wait_until(probe, 10, "x", interval=0.5, clock=clock, sleep=clock.sleep) == "ok"
    assert clock.sleeps == [0.5, 0.5]


def test_wait_until_raises_with_the_last_observed_state() -> None:
    clock = FakeClock()
    states = iter(range(100))

    def probe() -> tuple[bool, str]:
        return False, f"replicas={next(states)}"

    with pytest.raises(TimeoutError, match=r"the thing: not within 3s; .*replicas=3$"):
        plan.wait_until(probe, 3, "the thing", clock=clock, sleep=clock.sleep)


def test_helpers_read_conditions_versions_and_call_lines() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert plan.condition(obj, "Ready") == {"type": "Ready", "status": "True"}
    assert plan.condition(obj, "Other") is None and plan.condition({}, "Ready") is None
    assert plan.parse_version({"major": "1", "minor": "31+"}) == (1, 31)
    assert plan.parse_version({"major": "1", "minor": "28"}) < plan.MIN_KUBERNETES
    log = "noise\ncall=1 result=unreachable error=APIConnectionError\ncall=2 result=ok status=200\n"
    assert [(n, r) for n, r, _ in plan.call_lines(log)] == [(1, "unreachable"), (2, "ok")]


# -- the demo app, as a process, against a real sidecar ------------------------------


def _demo_env(base_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DEMO_", "PYTHON"))}
    env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=injecting.PLACEHOLDER_API_KEY)
    env.update(settings)
    return env


async def _run_demo(env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEMO_APP),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(40):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_demo_app_reports_each_call_through_the_sidecar(
    sidecar: Sidecar, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = _demo_env(sidecar.api_url + "/v1", DEMO_MAX_CALLS="3", DEMO_INTERVAL="0")
    code, out, err = await _run_demo(env, tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4, out
    for number, line in enumerate(lines[:3], start=1):
        assert OK_LINE.fullmatch(line), line
        assert line.startswith(f"call={number} ")
    assert lines[3] == "stopped calls=3 ok=3 failed=0 unreachable=0"
    # Never the prompt or the reply.
    assert "platform teams" not in out and "content" not in out
    assert [r.model for r in upstream.requests] == ["gpt-4o-mini"] * 3


async def test_the_demo_app_reports_failed_calls_and_exits_non_zero(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    env = _demo_env(
        sidecar.api_url + "/v1",
        DEMO_MAX_CALLS="1",
        DEMO_INTERVAL="0",
        DEMO_MODEL="fake-context-length",
    )
    code, out, _ = await _run_demo(env, tmp_path)
    assert code == 1
    first, summary = out.splitlines()
    assert re.fullmatch(r"call=1 result=failed status=400 error=BadRequestError code=\S+", first)
    assert summary == "stopped calls=1 ok=0 failed=1 unreachable=0"


async def test_the_demo_app_retries_while_the_sidecar_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _demo_env(f"http://127.0.0.1:{port}/v1", DEMO_MAX_CALLS="2", DEMO_INTERVAL="0")
    code, out, _ = await _run_demo(env, tmp_path)
    assert code == 1
    assert out.splitlines() == [
        "call=1 result=unreachable error=APIConnectionError",
        "call=2 result=unreachable error=APIConnectionError",
        "stopped calls=2 ok=0 failed=0 unreachable=2",
    ]


async def test_the_demo_app_needs_the_injected_environment(tmp_path: Path) -> None:
    env = _demo_env("http://127.0.0.1:1/v1")
    del env["OPENAI_BASE_URL"]
    code, out, err = await _run_demo(env, tmp_path)
    assert (code, out) == (2, "")
    assert "OPENAI_BASE_URL not set" in err and "infer.atomr.io/runtime" in err


async def test_the_demo_app_stops_cleanly_on_sigterm(sidecar: Sidecar, tmp_path: Path) -> None:
    env = _demo_env(sidecar.api_url + "/v1", DEMO_INTERVAL="60")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEMO_APP),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        first = (await process.stdout.readline()).decode()
        assert OK_LINE.fullmatch(first.strip()), first
        process.send_signal(signal.SIGTERM)
        rest, _ = await process.communicate()
    assert process.returncode == 0
    assert rest.decode().splitlines() == ["stopped calls=1 ok=1 failed=0 unreachable=0"]
