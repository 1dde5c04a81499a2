"""The operator, in-process, against kmock's Kubernetes emulator.

kopf runs as a task on the test's event loop with a login handler pointing at
kmock; every change a test makes goes through kmock's HTTP API so watch
events fire. Outcomes are awaited by polling with a deadline, never slept on.
The raw keys must never reach any stored object or any request body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
import yaml

from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.models import (
    ANNOTATION_CREDENTIAL_VERSION,
    API_VERSION,
    KIND,
    LABEL_RUNTIME,
    OpenAiRuntimeSpec,
)
from openai_runtime_operator.reconciling import render_configmap
from openai_runtime_operator.registry import build_registry, build_settings
from openai_runtime_operator.resync import resync_once
from openai_runtime_operator.rotation import refresh_credential
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.runner.credentials import fingerprint

from ..support import NEW_KEY, OLD_KEY
from .inprocess import InProcessKopf

NS = "apps"
RUNTIMES = "infer.atomr.io/v1alpha1/openairuntimes"
RUNTIMES_URL = f"/apis/{API_VERSION}/namespaces/{NS}/openairuntimes"
SECRETS_URL = f"/api/v1/namespaces/{NS}/secrets"
PODS_URL = f"/api/v1/namespaces/{NS}/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}
OTHER_KEY = "sk-test-other-2222222222222222"
ALL_KEYS = (OLD_KEY, NEW_KEY, OTHER_KEY)
DEADLINE = 5.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def runtime(name: str, secret: str = "openai-key", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",  # kopf tests it in JSON patches; kmock keeps it
        },
        "spec": {
            "variant": {"direct": {}},
            "apiKeySecretRef": {"name": secret, "key": "api-key"},
            "models": {"allow": ["gpt-4o-mini"], "default": "gpt-4o-mini"},
            **spec,
        },
    }


def secret(name: str, key: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "data": {"api-key": b64(key)},
    }


def pod(name: str, runtime_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {LABEL_RUNTIME: runtime_name}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }


async def eventually(check: Callable[[], Any], what: str, within: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy (or fail after ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while loop.time() < deadline:
        try:
            last = check()
        except (KeyError, LookupError, TypeError):
            last = None
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Cluster:
    """Reads of kmock's stored state, in the shapes the tests assert on."""

    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        self.ctx = OperatorContext()

    async def start(self) -> None:
        raise NotImplementedError  # replaced by the fixture

    def requests(self, method: str, path_part: str) -> list[Any]:
        return [r for r in list(self.kmock) if r.method == method and path_part in str(r.url)]

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.kmock.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.get(RUNTIMES, name) or {}
        return dict(obj.get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in self.status(name).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return None

    def events(self, reason: str) -> list[dict[str, Any]]:
        """Events posted with ``reason``, in order."""
        return [
            dict(r.data)
            for r in self.requests("POST", "/events")
            if isinstance(r.data, dict) and r.data.get("reason") == reason
        ]

    def annotation(self, pod_name: str) -> str | None:
        obj = self.get("v1/pods", pod_name) or {}
        return (obj.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_CREDENTIAL_VERSION)


@pytest.fixture
def declare(kmock: Any) -> Any:
    verbs = ["list", "watch", "get", "create", "patch", "update", "delete"]
    for resource, kind in [
        ("v1/namespaces", "Namespace"),
        ("v1/secrets", "Secret"),
        ("v1/configmaps", "ConfigMap"),
        ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy"),
        ("v1/pods", "Pod"),
        ("v1/events", "Event"),
        (RUNTIMES, KIND),
    ]:
        kmock.resources[resource] = {
            "kind": kind,
            "namespaced": resource != "v1/namespaces",
            "verbs": verbs,
            "subresources": ["status"] if resource == RUNTIMES else [],
        }
    kmock.objects["v1/namespaces", None, NS] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS},
    }
    return kmock


@pytest.fixture
async def operator(declare: Any) -> AsyncIterator[Cluster]:
    """Start kopf (after the test's initial objects are in place) and stop it afterwards."""
    kmock = declare
    ctx = OperatorContext()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(kmock.url), insecure=True)

    settings = build_settings(standalone=True)
    settings.scanning.disabled = True
    settings.watching.server_timeout = 10
    settings.posting.level = 0
    kopf_run = InProcessKopf()
    cluster = Cluster(kmock)

    async def start() -> None:
        await kopf_run.start(build_registry(ctx, login), settings)

    cluster.start = start  # type: ignore[method-assign]
    cluster.ctx = ctx
    try:
        yield cluster
    finally:
        await kopf_run.close()
        assert_no_key_leaked(kmock)


def assert_no_key_leaked(kmock: Any) -> None:
    """No raw key anywhere; its base64 only inside Secrets and the requests that wrote them."""
    for key, obj in list(kmock.objects.items()):
        if obj.deleted:
            continue
        text = json.dumps(obj.raw)
        for raw in ALL_KEYS:
            assert raw not in text, key
            if key[0].plural != "secrets":
                assert b64(raw) not in text, key
    for request in list(kmock):
        text = request.body.decode("utf-8", "replace") + str(request.url)
        for raw in ALL_KEYS:
            assert raw not in text, request.url
            if "/secrets" not in str(request.url):
                assert b64(raw) not in text, request.url


async def test_runtime_gets_configmap_and_ready_status(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    await operator.start()

    ready = await eventually(
        lambda: (
            (c := operator.condition("alpha", "Ready"))
            and c["status"] == "True"
            and c["observedGeneration"] == 1
            and c
        ),
        "Ready=True",
    )
    cm = await eventually(lambda: operator.get("v1/configmaps", "alpha-openai-runtime"), "CM")
    config = SidecarConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert (config.runtime.namespace, config.runtime.name) == (NS, "alpha")
    assert config.api_key.file == "/var/run/secrets/openai-runtime/api-key"
    assert config.models.allow == ["gpt-4o-mini"]
    [owner] = cm["metadata"]["ownerReferences"]
    assert owner["kind"] == KIND and owner["name"] == "alpha" and owner["uid"] == "uid-alpha"
    assert owner["controller"] is True
    # Not blocking: blocking needs `update` on openairuntimes/finalizers under
    # OwnerReferencesPermissionEnforcement, which the operator is not granted.
    assert owner["blockOwnerDeletion"] is False

    status = operator.status("alpha")
    assert status["observedGeneration"] == 1
    assert status["variant"] == "direct" and status["model"] == "gpt-4o-mini"
    assert status["credential"] == {"fingerprint": fingerprint(OLD_KEY), "rotations": 0}
    resolved = operator.condition("alpha", "CredentialResolved")
    assert resolved is not None and resolved["status"] == "True"
    assert ready["reason"] == "Reconciled"


def ready(operator: Cluster, name: str, status: str = "True") -> Callable[[], Any]:
    def check() -> Any:
        cond = operator.condition(name, "Ready")
        return cond is not None and cond["status"] == status and cond.get("observedGeneration")

    return check


async def test_invalid_spec_is_reported_not_retried(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "bad"] = runtime("bad", retry={"maxAttempts": 0})
    await operator.start()

    await eventually(ready(operator, "bad", "False"), "Ready=False")
    cond = operator.condition("bad", "Ready")
    assert cond is not None and cond["reason"] == "InvalidSpec"
    assert "spec.retry.maxAttempts" in cond["message"]
    [event] = await eventually(lambda: operator.events("InvalidSpec"), "InvalidSpec Event")
    assert event["type"] == "Warning" and "spec.retry.maxAttempts" in event["message"]
    assert operator.get("v1/configmaps", "bad-openai-runtime") is None

    # Fixing the spec (through the API, so a watch event fires) makes it Ready.
    await kmock.patch(
        f"{RUNTIMES_URL}/bad",
        json={"metadata": {"generation": 2}, "spec": {"retry": {"maxAttempts": 2}}},
        headers=MERGE,
    )
    await eventually(
        lambda: (
            (c := operator.condition("bad", "Ready"))
            and c["status"] == "True"
            and c["observedGeneration"] == 2
        ),
        "Ready=True after the fix",
    )
    cm = await eventually(lambda: operator.get("v1/configmaps", "bad-openai-runtime"), "CM")
    fixed = SidecarConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert fixed.retry.max_attempts == 2


async def test_missing_secret_then_created_recovers(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    await operator.start()

    await eventually(ready(operator, "alpha", "False"), "Ready=False")
    resolved = operator.condition("alpha", "CredentialResolved")
    assert resolved is not None and resolved["status"] == "False"
    assert resolved["reason"] == "SecretNotFound" and "openai-key" in resolved["message"]
    assert "credential" not in operator.status("alpha")
    await eventually(lambda: operator.events("SecretNotFound"), "SecretNotFound Event")
    assert operator.get("v1/configmaps", "alpha-openai-runtime") is not None

    await kmock.post(SECRETS_URL, json=secret("openai-key", OLD_KEY))
    await eventually(
        lambda: (c := operator.condition("alpha", "CredentialResolved")) and c["status"] == "True",
        "CredentialResolved=True",
    )
    await eventually(ready(operator, "alpha"), "Ready=True")
    status = operator.status("alpha")
    assert status["credential"] == {"fingerprint": fingerprint(OLD_KEY), "rotations": 0}


async def test_missing_key_then_added_recovers(operator: Cluster) -> None:
    kmock = operator.kmock
    wrong = secret("openai-key", OLD_KEY)
    wrong["data"] = {"other": b64(OLD_KEY)}
    kmock.objects["v1/secrets", NS, "openai-key"] = wrong
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    await operator.start()

    await eventually(
        lambda: (
            (c := operator.condition("alpha", "CredentialResolved"))
            and c["reason"] == "KeyNotFound"
        ),
        "KeyNotFound",
    )
    await eventually(lambda: operator.events("KeyNotFound"), "KeyNotFound Event")
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(
        lambda: (
            operator.status("alpha").get("credential", {}).get("fingerprint")
            == fingerprint(NEW_KEY)
        ),
        "fingerprint of the added key",
    )
    await eventually(ready(operator, "alpha"), "Ready=True")
    assert operator.status("alpha")["credential"]["rotations"] == 0


async def test_rotation_updates_status_event_and_only_own_pods(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects["v1/secrets", NS, "other-key"] = secret("other-key", OTHER_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects[RUNTIMES, NS, "beta"] = runtime("beta", secret="other-key")
    for name, owner in [("a1", "alpha"), ("a2", "alpha"), ("b1", "beta")]:
        kmock.objects["v1/pods", NS, name] = pod(name, owner)
    kmock.objects["v1/pods", NS, "plain"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain", "namespace": NS},
    }
    await operator.start()
    await eventually(ready(operator, "alpha"), "alpha Ready")
    await eventually(ready(operator, "beta"), "beta Ready")
    first = operator.condition("alpha", "CredentialResolved")
    assert first is not None

    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    credential = await eventually(
        lambda: (c := operator.status("alpha").get("credential")) and c["rotations"] == 1 and c,
        "rotation recorded",
    )
    assert credential["fingerprint"] == fingerprint(NEW_KEY)
    assert credential["rotatedAt"]
    [event] = await eventually(lambda: operator.events("CredentialRotated"), "Event")
    assert event["type"] == "Normal" and fingerprint(NEW_KEY) in event["message"]
    # Posted by the operator's own client, in the shape kubectl describe shows.
    assert event["involvedObject"] == {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": "alpha",
        "namespace": NS,
        "uid": "uid-alpha",
        "resourceVersion": "1",
    }
    assert event["metadata"]["namespace"] == NS
    assert re.fullmatch(r"alpha\.[0-9a-f]{16}", event["metadata"]["name"])
    assert event["source"] == {"component": "openai-runtime-operator"}
    assert event["reportingComponent"] == "openai-runtime-operator"
    assert event["reportingInstance"] and event["action"] == "CredentialRotated"
    assert event["firstTimestamp"] == event["lastTimestamp"] and event["eventTime"]
    for name in ("a1", "a2"):
        await eventually(lambda n=name: operator.annotation(n) == fingerprint(NEW_KEY), name)
    assert operator.annotation("b1") is None and operator.annotation("plain") is None
    # The condition did not flip, so its transition time stands.
    again = operator.condition("alpha", "CredentialResolved")
    assert again is not None and again["lastTransitionTime"] == first["lastTransitionTime"]
    assert operator.status("beta")["credential"]["rotations"] == 0


async def test_label_only_edit_changes_nothing(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects["v1/pods", NS, "a1"] = pod("a1", "alpha")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    before = operator.status("alpha")
    status_patches = len(operator.requests("PATCH", "/alpha/status"))

    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"metadata": {"labels": {"team": "x"}}}, headers=MERGE
    )
    # Events of one object are handled in order: once a later rotation shows,
    # the label edit has been handled too.
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(
        lambda: operator.status("alpha").get("credential", {}).get("rotations") == 1, "rotation"
    )
    after = operator.status("alpha")
    assert after["credential"]["rotations"] == 1  # not 2: the label edit was no rotation
    assert after["conditions"] == before["conditions"]
    assert len(operator.requests("PATCH", "/alpha/status")) == status_patches + 1
    await eventually(lambda: operator.events("CredentialRotated"), "the rotation's Event")
    assert len(operator.events("CredentialRotated")) == 1
    # Read-only on Secrets: the only writes to them are this test's own.
    assert len(operator.requests("PATCH", "/secrets")) == 2
    assert not operator.requests("PUT", "/secrets")


async def test_runtimes_sharing_a_secret_both_follow(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    for name in ("alpha", "beta"):
        kmock.objects[RUNTIMES, NS, name] = runtime(name)
        kmock.objects["v1/pods", NS, f"{name}-pod"] = pod(f"{name}-pod", name)
    await operator.start()
    for name in ("alpha", "beta"):
        await eventually(ready(operator, name), f"{name} Ready")

    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    for name in ("alpha", "beta"):
        await eventually(
            lambda n=name: (
                operator.status(n).get("credential", {}).get("fingerprint") == fingerprint(NEW_KEY)
            ),
            f"{name} rotated",
        )
        await eventually(
            lambda n=name: operator.annotation(f"{n}-pod") == fingerprint(NEW_KEY), f"{name} pod"
        )
        assert operator.status(name)["credential"]["rotations"] == 1
    events = await eventually(
        lambda: len(found := operator.events("CredentialRotated")) == 2 and found, "two Events"
    )
    assert {e["involvedObject"]["name"] for e in events} == {"alpha", "beta"}
    # Each Event is an object of its own (no name reused).
    stored = [
        obj for k, obj in list(kmock.objects.items()) if k[0].plural == "events" and not obj.deleted
    ]
    assert len({obj.raw["metadata"]["name"] for obj in stored}) == len(stored) >= 2

    # The Secret goes away: the last fingerprint stays, the condition says why.
    await kmock.delete(f"{SECRETS_URL}/openai-key")
    for name in ("alpha", "beta"):
        await eventually(
            lambda n=name: (
                (c := operator.condition(n, "CredentialResolved"))
                and c["reason"] == "SecretNotFound"
            ),
            f"{name} SecretNotFound",
        )
        assert operator.status(name)["credential"]["fingerprint"] == fingerprint(NEW_KEY)


async def test_resync_is_idempotent_and_repairs_drift(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    cm = await eventually(lambda: operator.get("v1/configmaps", "alpha-openai-runtime"), "CM")
    # The first resync reports convergence (no pods yet); nothing else changes.
    before = operator.status("alpha")
    assert await resync_once(operator.ctx, [NS]) == 1
    status = operator.status("alpha")
    assert status == {**before, "convergence": {"pods": 0, "current": 0}}
    status_patches = len(operator.requests("PATCH", "/alpha/status"))

    assert await resync_once(operator.ctx, [NS]) == 1
    assert operator.status("alpha") == status
    assert len(operator.requests("PATCH", "/alpha/status")) == status_patches
    assert not operator.requests("PATCH", "/configmaps/")

    await kmock.patch(
        f"/api/v1/namespaces/{NS}/configmaps/alpha-openai-runtime",
        json={"data": {"config.yaml": "tampered: true\n"}},
        headers=MERGE,
    )
    assert await resync_once(operator.ctx, []) == 1
    repaired = operator.get("v1/configmaps", "alpha-openai-runtime")
    assert repaired is not None and repaired["data"] == cm["data"]
    assert operator.status("alpha") == status


async def test_deleting_a_runtime_with_pods_warns(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects["v1/pods", NS, "a1"] = pod("a1", "alpha")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    assert "finalizers" not in (operator.get(RUNTIMES, "alpha") or {}).get("metadata", {})

    await kmock.delete(f"{RUNTIMES_URL}/alpha")
    [event] = await eventually(lambda: operator.events("RuntimeDeletedWithPods"), "Event")
    assert event["type"] == "Warning" and "1 pod(s)" in event["message"]
    assert operator.get(RUNTIMES, "alpha") is None


def status_patches(operator: Cluster, name: str) -> list[dict[str, Any]]:
    """The bodies of the PATCHes to a runtime's status, in order."""
    return [dict(r.data) for r in operator.requests("PATCH", f"{RUNTIMES_URL}/{name}/status")]


async def test_removed_default_model_leaves_the_status(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    assert operator.status("alpha")["model"] == "gpt-4o-mini"

    await kmock.patch(
        f"{RUNTIMES_URL}/alpha",
        json={"metadata": {"generation": 2}, "spec": {"models": {"default": None}}},
        headers=MERGE,
    )
    status = await eventually(
        lambda: (s := operator.status("alpha")).get("observedGeneration") == 2 and s,
        "generation 2 reconciled",
    )
    assert "model" not in status and status["variant"] == "direct"
    assert any(
        "model" in body["status"] and body["status"]["model"] is None
        for body in status_patches(operator, "alpha")
    )
    ready_now = operator.condition("alpha", "Ready")
    assert ready_now is not None and ready_now["status"] == "True"
    assert ready_now["observedGeneration"] == 2


async def test_stale_status_is_nulled_and_replays_write_nothing(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    stale = runtime("alpha")
    stale["status"] = {"legacy": {"phase": "Running"}, "variant": "azure", "model": "old"}
    kmock.objects[RUNTIMES, NS, "alpha"] = stale
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    status = operator.status("alpha")
    assert "legacy" not in status
    assert (status["variant"], status["model"]) == ("direct", "gpt-4o-mini")
    [nulling] = [b for b in status_patches(operator, "alpha") if "legacy" in b["status"]]
    assert nulling["status"]["legacy"] is None

    # The first resync reports convergence; from then on, observing the same
    # runtime and Secret again (the Secret watch replayed, the resync) sends
    # no status PATCH at all, though both read the runtime afresh.
    assert await resync_once(operator.ctx, [NS]) == 1
    patches = len(status_patches(operator, "alpha"))
    reads = len(operator.requests("GET", f"{RUNTIMES_URL}/alpha"))
    logger = logging.getLogger(__name__)
    assert not await refresh_credential(operator.ctx, NS, "alpha", "openai-key", logger)
    assert await resync_once(operator.ctx, [NS]) == 1
    assert len(operator.requests("GET", f"{RUNTIMES_URL}/alpha")) >= reads + 2
    assert len(status_patches(operator, "alpha")) == patches


async def test_a_blocking_owner_reference_is_made_non_blocking(operator: Cluster) -> None:
    """A ConfigMap written by an older operator (blockOwnerDeletion: true) is corrected,
    even when its data is already current."""
    kmock = operator.kmock
    body = runtime("alpha")
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = body
    old = render_configmap(body, NS, "alpha", OpenAiRuntimeSpec.model_validate(body["spec"]))
    old["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = True
    kmock.objects["v1/configmaps", NS, "alpha-openai-runtime"] = old
    await operator.start()

    def blocking() -> Any:
        cm = operator.get("v1/configmaps", "alpha-openai-runtime") or {}
        refs = cm.get("metadata", {}).get("ownerReferences") or []
        return refs and [r["blockOwnerDeletion"] for r in refs] == [False]

    await eventually(blocking, "a single non-blocking owner reference")
