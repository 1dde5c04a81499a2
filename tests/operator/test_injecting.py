"""The sidecar injection: :func:`inject` alone, and the admission webhook over HTTP.

The webhook tests run kopf against kmock with kopf's own webhook server
(plain HTTP on loopback) and POST AdmissionReviews to ``/inject`` as the API
server would; the JSONPatch in the answer is applied to the pod and the
result asserted on.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.injecting import (
    ADMIN_PORT,
    API_PORT,
    BASE_URL,
    CONFIG_VOLUME,
    KEY_VOLUME,
    PLACEHOLDER_API_KEY,
    InjectionRefused,
    NamespacedWebhookServer,
    inject,
)
from openai_runtime_operator.models import (
    ANNOTATION_CREDENTIAL_VERSION,
    ANNOTATION_INJECTED,
    CONTAINER_NAME,
)
from openai_runtime_operator.registry import build_registry, build_settings
from openai_runtime_sidecar.contract import KEY_DIR

from ..support import apply_patch, free_port
from .inprocess import InProcessKopf
from .test_operator import NS, RUNTIMES, pod, runtime

FINGERPRINT = "sha256:1a2b3c4d5e6f"


def with_status(body: dict[str, Any]) -> dict[str, Any]:
    body["status"] = {"credential": {"fingerprint": FINGERPRINT, "rotations": 0}}
    return body


def sidecar_of(result: dict[str, Any]) -> dict[str, Any]:
    spec = result["spec"]
    found = [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"] == CONTAINER_NAME
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --- inject() -------------------------------------------------------------------------


def test_native_sidecar_is_first_init_container() -> None:
    app = pod("web", "alpha")
    app["spec"]["initContainers"] = [{"name": "migrate", "image": "migrate"}]
    original = copy.deepcopy(app)
    result = inject(app, with_status(runtime("alpha")))

    assert app == original  # pure
    names = [c["name"] for c in result["spec"]["initContainers"]]
    assert names == [CONTAINER_NAME, "migrate"]
    sidecar = sidecar_of(result)
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]
    assert sidecar["args"] == ["sidecar", "--config", "/etc/openai-runtime/config.yaml"]
    assert sidecar["image"] == "ghcr.io/atomr/openai-runtime-sidecar:0.1.0"
    assert sidecar["imagePullPolicy"] == "IfNotPresent"
    assert sidecar["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        # CPU too: namespaces with a LimitRange or a limits quota refuse pods without it.
        "limits": {"cpu": "1", "memory": "128Mi"},
    }
    for probe, path in [
        ("startupProbe", "/healthz"),  # a missing key must not hold the app back
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ]:
        assert sidecar[probe]["httpGet"] == {"path": path, "port": 9464}
    annotations = result["metadata"]["annotations"]
    assert annotations[ANNOTATION_INJECTED] == "alpha"
    assert annotations[ANNOTATION_CREDENTIAL_VERSION] == FINGERPRINT


def test_non_native_sidecar_is_a_regular_container() -> None:
    custom = runtime(
        "alpha",
        sidecar={
            "native": False,
            "image": "registry.local/oair:dev",
            "imagePullPolicy": "Always",
            "resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "1Gi"}},
        },
    )
    result = inject(pod("web", "alpha"), custom)
    assert "initContainers" not in result["spec"]
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", CONTAINER_NAME]
    sidecar = sidecar_of(result)
    assert "restartPolicy" not in sidecar
    assert sidecar["image"] == "registry.local/oair:dev"
    assert sidecar["imagePullPolicy"] == "Always"
    assert sidecar["resources"] == {"requests": {"cpu": "10m"}, "limits": {"memory": "1Gi"}}
    # No status yet: no credential-version annotation.
    assert ANNOTATION_CREDENTIAL_VERSION not in result["metadata"]["annotations"]
    # The sidecar does not get the app's env.
    assert "OPENAI_BASE_URL" not in env_of(sidecar)


def test_env_added_only_where_unset() -> None:
    app = pod("web", "alpha")
    app["spec"]["containers"] = [
        {"name": "a", "image": "a", "env": [{"name": "OPENAI_BASE_URL", "value": "http://x/v1"}]},
        {
            "name": "b",
            "image": "b",
            "env": [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s"}}}],
        },
        {"name": "c", "image": "c"},
    ]
    result = inject(app, runtime("alpha"))
    a, b, c = result["spec"]["containers"]
    assert env_of(a) == {"OPENAI_BASE_URL": "http://x/v1", "OPENAI_API_KEY": PLACEHOLDER_API_KEY}
    assert env_of(b) == {"OPENAI_API_KEY": None, "OPENAI_BASE_URL": BASE_URL}
    assert b["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "s"}}
    assert env_of(c) == {"OPENAI_BASE_URL": BASE_URL, "OPENAI_API_KEY": PLACEHOLDER_API_KEY}


def test_volumes_mounted_whole_and_read_only() -> None:
    app = pod("web", "alpha")
    app["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    result = inject(app, runtime("alpha", secret="my-key"))
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert set(volumes) == {"data", CONFIG_VOLUME, KEY_VOLUME}
    assert volumes[CONFIG_VOLUME]["configMap"] == {"name": "alpha-openai-runtime"}
    assert volumes[KEY_VOLUME]["secret"] == {"secretName": "my-key"}
    mounts = {m["name"]: m for m in sidecar_of(result)["volumeMounts"]}
    assert mounts[CONFIG_VOLUME] == {
        "name": CONFIG_VOLUME,
        "mountPath": "/etc/openai-runtime",
        "readOnly": True,
    }
    assert mounts[KEY_VOLUME] == {"name": KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": True}
    assert all("subPath" not in m and "subPathExpr" not in m for m in mounts.values())


def test_security_context_is_restrictive() -> None:
    context = sidecar_of(inject(pod("web", "alpha"), runtime("alpha")))["securityContext"]
    assert context["runAsNonRoot"] is True
    # No fixed UID: OpenShift's restricted-v2 assigns one from the namespace's range.
    assert "runAsUser" not in context and "runAsGroup" not in context
    # runAsNonRoot without runAsUser needs a numeric, non-root USER in the image.
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and all(u.split(":")[0].isdigit() and u.split(":")[0] != "0" for u in users)
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_idempotent() -> None:
    once = inject(pod("web", "alpha"), runtime("alpha"))
    assert inject(once, runtime("alpha")) == once
    # The container alone (e.g. a pod copied from an injected one) is enough.
    del once["metadata"]["annotations"][ANNOTATION_INJECTED]
    assert inject(once, runtime("alpha")) == once
    # The annotation alone, too.
    marked = pod("web", "alpha")
    marked["metadata"]["annotations"] = {ANNOTATION_INJECTED: "alpha"}
    assert inject(marked, runtime("alpha")) == marked


def test_host_network_and_invalid_runtime_refused() -> None:
    host = pod("web", "alpha")
    host["spec"]["hostNetwork"] = True
    with pytest.raises(InjectionRefused, match="hostNetwork"):
        inject(host, runtime("alpha"))
    with pytest.raises(InjectionRefused, match=r"alpha is invalid: spec\.retry\.maxAttempts"):
        inject(pod("web", "alpha"), runtime("alpha", retry={"maxAttempts": 0}))


# --- the webhook over HTTP ----------------------------------------------------------


def review(obj: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": obj["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


class Webhook:
    def __init__(self, url: str, *, ssl: Any = None, server_hostname: str | None = None) -> None:
        self.url = url
        self.ssl = ssl
        self.server_hostname = server_hostname

    async def review(self, obj: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.server_hostname is not None:
            extra["server_hostname"] = self.server_hostname
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url, json=review(obj), ssl=self.ssl if self.ssl is not None else True, **extra
            ) as response,
        ):
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == "req-1"
        return dict(answer["response"])


@contextlib.asynccontextmanager
async def serving(kmock: Any, server: kopf.WebhookServer, port: int) -> AsyncIterator[None]:
    """kopf with the admission handler and ``server`` (listening on ``port``) against kmock."""
    ctx = OperatorContext()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(kmock.url), insecure=True)

    settings = build_settings(standalone=True)
    settings.scanning.disabled = True
    settings.watching.server_timeout = 10
    settings.admission.server = server
    kopf_run = InProcessKopf()
    await kopf_run.start(build_registry(ctx, login, admission=True), settings)
    try:
        await kopf_run.wait_listening(port)
        yield
    finally:
        await kopf_run.close()


@pytest.fixture
async def webhook(declare: Any) -> AsyncIterator[Webhook]:
    """kopf with the admission handler and a plain-HTTP webhook server on loopback."""
    port = free_port()
    server = NamespacedWebhookServer(addr="127.0.0.1", port=port, insecure=True)
    async with serving(declare, server, port):
        yield Webhook(f"http://127.0.0.1:{port}/inject")


def controller_pod() -> dict[str, Any]:
    """A pod as a ReplicaSet creates it: generateName, and no namespace in the object."""
    body = pod("ignored", "alpha")
    del body["metadata"]["name"], body["metadata"]["namespace"]
    body["metadata"]["generateName"] = "web-5d9c-"
    return body


async def test_webhook_injects_with_json_patch(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = with_status(runtime("alpha"))
    original = controller_pod()
    answer = await webhook.review(original)

    assert answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(answer["patch"]))
    assert all(not op["path"].startswith("/metadata/namespace") for op in ops)
    result = apply_patch(original, ops)
    assert result == inject(original, with_status(runtime("alpha")))
    sidecar = sidecar_of(result)
    assert sidecar["restartPolicy"] == "Always"
    assert env_of(result["spec"]["containers"][0])["OPENAI_BASE_URL"] == BASE_URL
    assert result["metadata"]["annotations"] == {
        ANNOTATION_INJECTED: "alpha",
        ANNOTATION_CREDENTIAL_VERSION: FINGERPRINT,
    }
    assert {v["name"] for v in result["spec"]["volumes"]} == {CONFIG_VOLUME, KEY_VOLUME}


async def test_webhook_denies_missing_runtime(webhook: Webhook) -> None:
    answer = await webhook.review(controller_pod())
    assert answer["allowed"] is False
    assert "patch" not in answer
    assert answer["status"]["message"] == f"OpenAiRuntime alpha not found in namespace {NS}"
    assert answer["status"]["code"] == 403


async def test_webhook_denies_host_network(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    body = controller_pod()
    body["spec"]["hostNetwork"] = True
    answer = await webhook.review(body)
    assert answer["allowed"] is False
    assert "hostNetwork" in answer["status"]["message"]
    assert "patch" not in answer


async def test_webhook_leaves_injected_pod_alone(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    already = inject(pod("web", "alpha"), runtime("alpha"))
    answer = await webhook.review(already)
    assert answer["allowed"] is True
    assert "patch" not in answer


async def test_webhook_ignores_pods_without_the_label(webhook: Webhook) -> None:
    body = controller_pod()
    del body["metadata"]["labels"]
    answer = await webhook.review(body)
    assert answer["allowed"] is True
    assert "patch" not in answer


async def test_webhook_non_native_sidecar_is_a_container(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = runtime("alpha", sidecar={"native": False})
    original = controller_pod()
    answer = await webhook.review(original)
    assert answer["allowed"] is True
    result = apply_patch(original, json.loads(base64.b64decode(answer["patch"])))
    assert not result["spec"].get("initContainers")
    names = [c["name"] for c in result["spec"]["containers"]]
    assert names == ["app", CONTAINER_NAME]
    assert "restartPolicy" not in result["spec"]["containers"][1]


async def test_webhook_keeps_env_the_app_sets(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    original = controller_pod()
    own = [
        {"name": "OPENAI_BASE_URL", "value": "https://proxy.example/v1"},
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "k", "key": "k"}}},
    ]
    original["spec"]["containers"].append({"name": "own", "image": "app", "env": own})
    answer = await webhook.review(original)
    result = apply_patch(original, json.loads(base64.b64decode(answer["patch"])))
    app, mine = result["spec"]["containers"]
    assert env_of(app) == {"OPENAI_BASE_URL": BASE_URL, "OPENAI_API_KEY": PLACEHOLDER_API_KEY}
    assert mine["env"] == own


def test_env_from_sources_count_as_set() -> None:
    body = pod("web", "alpha")
    body["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "own-openai"}}]
    result = inject(body, runtime("alpha"), env_from={"app": {"OPENAI_API_KEY"}})
    assert env_of(result["spec"]["containers"][0]) == {"OPENAI_BASE_URL": BASE_URL}
    both = inject(body, runtime("alpha"), env_from={"app": {"OPENAI_API_KEY", "OPENAI_BASE_URL"}})
    assert "env" not in both["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.setdefault("volumes", []).append({"name": KEY_VOLUME, "emptyDir": {}}),
            f"already has a volume named {KEY_VOLUME}",
        ),
        (
            lambda s: (
                s["containers"][0].setdefault("ports", []).append({"containerPort": API_PORT})
            ),
            f"declares port {API_PORT}",
        ),
        (
            lambda s: s.setdefault("initContainers", []).append(
                {"name": "x", "image": "x", "ports": [{"containerPort": ADMIN_PORT}]}
            ),
            f"declares port {ADMIN_PORT}",
        ),
    ],
)
def test_clashing_volumes_and_ports_are_refused(edit: Any, message: str) -> None:
    body = pod("web", "alpha")
    edit(body["spec"])
    with pytest.raises(InjectionRefused, match=message):
        inject(body, runtime("alpha"))


async def test_webhook_respects_env_from_sources(declare: Any, webhook: Webhook) -> None:
    declare.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    declare.objects["v1/configmaps", NS, "openai-settings"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "openai-settings", "namespace": NS},
        "data": {"BASE_URL": "https://proxy.example/v1", "OTHER": "x"},
    }
    original = controller_pod()
    original["spec"]["containers"][0]["envFrom"] = [
        {"configMapRef": {"name": "openai-settings"}, "prefix": "OPENAI_"},
        {"secretRef": {"name": "not-there", "optional": True}},
    ]
    answer = await webhook.review(original)
    result = apply_patch(original, json.loads(base64.b64decode(answer["patch"])))
    # OPENAI_BASE_URL comes from the ConfigMap (prefix + key): env would override it.
    assert env_of(result["spec"]["containers"][0]) == {"OPENAI_API_KEY": PLACEHOLDER_API_KEY}
