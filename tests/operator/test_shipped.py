"""The operator started the way it ships, against the kmock emulator.

Every test here runs the ``openai-runtime`` console script in child processes
with the arguments of ``deploy/base/deployment.yaml`` (or the README's
workstation recipe) and the objects of ``deploy/base`` in the emulator: two
peered replicas of which exactly one acts and the other takes over, the
standalone recipe with only the runtime CRD, a missing peering CRD reported
as an ERROR, listeners that cannot bind ending the process, kubeconfig logins
through exec credential plugins, and the webhook's CA bundle healing.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_runtime_operator.models import API_VERSION, KIND
from openai_runtime_operator.peering import PEERING_MANIFEST

from ..support import OLD_KEY
from .shipped import (
    BASE,
    ROOT,
    Replica,
    applied,
    eventually,
    free_port,
    manifest,
    readme_workstation_command,
    replica_of,
    shipped_args,
    write_kubeconfig,
)

pytestmark = pytest.mark.timeout(120)

APPS = "apps"
RUNTIMES = "infer.atomr.io/v1alpha1/openairuntimes"
OPERATOR_NS = manifest("Deployment")["metadata"]["namespace"]
MERGE = {"Content-Type": "application/merge-patch+json"}
VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]
START = 30.0
"""Seconds for a child process to import, log in and bind (a shared, noisy machine)."""


def declare(kmock: Any, *, peering: bool = True) -> None:
    """The resources a cluster with ``deploy/base`` applied serves."""
    resources: list[tuple[str, str, bool, list[str]]] = [
        ("v1/namespaces", "Namespace", False, []),
        ("v1/secrets", "Secret", True, []),
        ("v1/configmaps", "ConfigMap", True, []),
        ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, []),
        ("v1/pods", "Pod", True, []),
        ("v1/events", "Event", True, []),
        (RUNTIMES, KIND, True, ["status"]),
        (
            "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            False,
            [],
        ),
        (
            "apiextensions.k8s.io/v1/customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            [],
        ),
    ]
    if peering:
        resources += [
            ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, []),
            ("kopf.dev/v1/kopfpeerings", "KopfPeering", True, []),
        ]
    for resource, kind, namespaced, sub in resources:
        kmock.resources[resource] = {
            "kind": kind,
            "namespaced": namespaced,
            "verbs": VERBS,
            "subresources": sub,
        }
    for ns in (APPS, OPERATOR_NS, "default"):
        kmock.objects["v1/namespaces", None, ns] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns},
        }
    crd = manifest("CustomResourceDefinition", "openairuntimes.infer.atomr.io")
    kmock.objects[
        "apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]
    ] = crd


def add_shipped_objects(kmock: Any, *, webhook_configuration: bool = True) -> None:
    peering = manifest("ClusterKopfPeering")
    kmock.objects["kopf.dev/v1/clusterkopfpeerings", None, peering["metadata"]["name"]] = peering
    if webhook_configuration:
        mwc = manifest("MutatingWebhookConfiguration")
        kmock.objects[
            "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            None,
            mwc["metadata"]["name"],
        ] = mwc


def key_secret(namespace: str = APPS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "openai-key", "namespace": namespace},
        "data": {"api-key": base64.b64encode(OLD_KEY.encode()).decode()},
    }


def runtime(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": APPS, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "variant": {"direct": {}},
            "apiKeySecretRef": {"name": "openai-key", "key": "api-key"},
            "models": {"default": "gpt-4o-mini"},
        },
    }


def ready_condition(kmock: Any, namespace: str, name: str) -> bool:
    try:
        obj = kmock.objects[RUNTIMES, namespace, name]
    except KeyError:
        return False
    conditions = (dict(obj.raw).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def writes_to(kmock: Any, namespace: str, replicas: list[Replica]) -> dict[str | None, int]:
    """Per replica, how many writes it sent to ``namespace`` (runtimes, ConfigMaps, Events)."""
    counts: dict[str | None, int] = {r.name: 0 for r in replicas}
    for request in list(kmock):
        if request.method in ("POST", "PATCH", "PUT", "DELETE") and (
            f"/namespaces/{namespace}/" in str(request.url)
        ):
            who = replica_of(request, replicas)
            counts[who] = counts.get(who, 0) + 1
    return counts


def requests_to(kmock: Any, namespace: str, replica: Replica, replicas: list[Replica]) -> int:
    return sum(
        1
        for r in list(kmock)
        if f"/namespaces/{namespace}/" in str(r.url) and replica_of(r, replicas) == replica.name
    )


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    """Started replicas are stopped (SIGTERM) at the end, whatever the test did."""
    started: list[Replica] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(r.stop() for r in started))


def shipped_replica(name: str, kmock: Any, tmp_path: Path, *extra: str) -> tuple[Replica, int]:
    """A replica on the manifest's args; its metrics (and /readyz) port."""
    ports = {"healthz": free_port(), "metrics": free_port(), "webhook": free_port()}
    args = [*shipped_args(ports), *extra]
    return Replica(name, tmp_path, str(kmock.url), args), ports["metrics"]


async def test_manifest_args_are_what_the_tests_run() -> None:
    """The harness moves ports only: the rest of the args is the manifest's, verbatim."""
    args = shipped_args({"healthz": 1111, "metrics": 2222, "webhook": 3333})
    container_args = [
        str(a) for a in manifest("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    assert args[0] == "operator" and "--standalone" not in args
    assert [a.replace("1111", "8080").replace("3333", "9443") for a in args[:-1]] == container_args
    assert args[-1] == "--metrics-port=2222"


async def test_two_replicas_one_acts_the_other_takes_over(
    kmock: Any, tmp_path: Path, replicas: list[Replica]
) -> None:
    """Peered replicas with random priorities: exactly one acts, the other takes over.

    Appended to the manifest's args: a short ``--peering-lifetime`` so that the
    take-over after a SIGKILL (which leaves no goodbye in the peering object)
    happens within the test, and a short ``--resync-interval`` so that a
    resync on the paused replica would show.
    """
    declare(kmock)
    add_shipped_objects(kmock)
    kmock.objects["v1/secrets", APPS, "openai-key"] = key_secret()
    extra = ("--peering-lifetime=4", "--resync-interval=1")
    (a, a_port), (b, b_port) = (
        shipped_replica("replica-a", kmock, tmp_path, *extra),
        shipped_replica("replica-b", kmock, tmp_path, *extra),
    )
    replicas += [a, b]
    await asyncio.gather(a.start(), b.start())
    for replica, port in ((a, a_port), (b, b_port)):
        await eventually(
            lambda r=replica, p=port: _status_is(r, p, "/readyz", 200),
            f"{replica.name} ready",
            START,
            replicas,
        )
    acting, paused = await eventually(
        lambda: settled(kmock, replicas), "the peering to settle", START, replicas
    )
    assert not any("Pausing all operators" in r.output() for r in replicas)

    await kmock.post(f"/apis/{API_VERSION}/namespaces/{APPS}/openairuntimes", json=runtime("one"))
    await eventually(lambda: ready_condition(kmock, APPS, "one"), "runtime one Ready", 15, replicas)
    configmap = kmock.objects["v1/configmaps", APPS, "one-openai-runtime"]
    assert configmap is not None
    # deploy/ leaves the sidecars' NetworkPolicy on; POD_NAMESPACE names the operator's.
    policy = kmock.objects["networking.k8s.io/v1/networkpolicies", APPS, "one-openai-runtime-admin"]
    peers = [
        p["namespaceSelector"]["matchLabels"]
        for r in policy.raw["spec"]["ingress"]
        for p in r.get("from", [])
    ]
    assert peers == [
        {"kubernetes.io/metadata.name": OPERATOR_NS},
        {"kubernetes.io/metadata.name": "monitoring"},
    ]
    # Several resync passes of the acting replica later, the paused one has still
    # not touched the namespace: no handler and no resync ran there.
    await eventually(
        lambda: _reads(kmock, acting, replicas, "/openairuntimes/one") >= 4,
        "three resync passes",
        15,
        replicas,
    )
    counts = writes_to(kmock, APPS, replicas)
    assert counts[acting.name] > 0 and counts[paused.name] == 0, counts
    assert requests_to(kmock, APPS, paused, replicas) == 0

    await acting.stop(signal.SIGKILL)
    await kmock.post(f"/apis/{API_VERSION}/namespaces/{APPS}/openairuntimes", json=runtime("two"))
    await eventually(lambda: ready_condition(kmock, APPS, "two"), "runtime two Ready", 30, replicas)
    assert "Resuming operations" in paused.output()
    two_writes = [
        replica_of(r, replicas)
        for r in list(kmock)
        if r.method == "PATCH" and "/openairuntimes/two/status" in str(r.url)
    ]
    assert two_writes and set(two_writes) == {paused.name}


def priority_of(replica: Replica) -> int:
    """The priority the replica chose (its start-up log line says it)."""
    record = next(r for r in replica.log_records() if "priority" in r)
    return int(record["priority"])


def settled(kmock: Any, replicas: list[Replica]) -> tuple[Replica, Replica] | None:
    """(acting, paused) once kopf's peering has settled, else None.

    Every replica starts paused until it has seen the peering object. The one
    of higher priority resumes ("Resuming operations"). The other either
    resumed too (it saw the object before the first one joined) and then
    paused ("Pausing operations"), or it first listed the object after the
    first one had joined, and never resumed at all.
    """
    name = manifest("ClusterKopfPeering")["metadata"]["name"]
    peering = dict(kmock.objects["kopf.dev/v1/clusterkopfpeerings", None, name].raw)
    if not {r.name for r in replicas} <= set(peering.get("status") or {}):
        return None
    high, low = sorted(replicas, key=priority_of, reverse=True)
    if "Resuming operations" not in high.output():
        return None
    if "Pausing operations" in low.output():
        return high, low
    if "Resuming operations" in low.output():
        return None  # it acts for now, and will pause on the next peering event
    log = list(kmock)
    joined = next(
        i
        for i, r in enumerate(log)
        if r.method == "PATCH"
        and "clusterkopfpeerings" in str(r.url)
        and replica_of(r, replicas) == high.name
    )
    listed = next(
        (
            i
            for i, r in enumerate(log)
            if r.method == "GET"
            and str(r.url.path).endswith("/clusterkopfpeerings")
            and not r.params.get("watch")
            and replica_of(r, replicas) == low.name
        ),
        None,
    )
    return (high, low) if listed is not None and listed > joined else None


def _reads(kmock: Any, replica: Replica, replicas: list[Replica], path: str) -> int:
    """GETs of one object: the first reconcile reads it once, each resync pass once more."""
    return sum(
        1
        for r in list(kmock)
        if r.method == "GET"
        and str(r.url.path).endswith(path)
        and replica_of(r, replicas) == replica.name
    )


async def _status_is(replica: Replica, port: int, path: str, status: int) -> bool:
    assert replica.process is not None and replica.process.returncode is None, replica.output()
    got, _ = await replica.get(port, path)
    return got == status


async def test_readme_workstation_recipe_needs_only_the_runtime_crd(
    kmock: Any, tmp_path: Path, replicas: list[Replica]
) -> None:
    """``kubectl apply -f <crd>``, the example Secret and runtime, then the README's command."""
    declare(kmock, peering=False)
    command = readme_workstation_command()
    assert "--standalone" in command
    # kubectl applies the examples (no namespace of their own) to the context's: default.
    namespace = command[command.index("-n") + 1] if "-n" in command else "default"
    for example in ("secret.yaml", "runtime-direct.yaml"):
        for obj in yaml.safe_load_all((ROOT / "examples" / example).read_text()):
            if not obj:
                continue
            stored = applied(obj)
            stored["metadata"]["namespace"] = namespace
            resource = "v1/secrets" if stored["kind"] == "Secret" else RUNTIMES
            kmock.objects[resource, namespace, stored["metadata"]["name"]] = stored
    name = yaml.safe_load((ROOT / "examples" / "runtime-direct.yaml").read_text())["metadata"][
        "name"
    ]
    # The machine is shared: the metrics listener gets a free port.
    replica = Replica(
        "workstation", tmp_path, str(kmock.url), [*command, f"--metrics-port={free_port()}"]
    )
    replicas.append(replica)
    await replica.start()
    await eventually(
        lambda: ready_condition(kmock, namespace, name), "the example Ready", START, replicas
    )
    # No peering at all: nothing paused, nothing missing, no error.
    assert "Pausing" not in replica.output()
    assert not [rec for rec in replica.log_records() if rec.get("level") == "ERROR"]
    assert not [r for r in list(kmock) if "kopf.dev" in str(r.url)]


async def test_missing_peering_crd_is_an_error_saying_what_to_apply(
    kmock: Any, tmp_path: Path, replicas: list[Replica]
) -> None:
    declare(kmock, peering=False)
    replica, _ = shipped_replica("replica-a", kmock, tmp_path)
    replicas.append(replica)
    kmock.objects[
        "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", None, "openai-runtime"
    ] = manifest("MutatingWebhookConfiguration")
    await replica.start()
    record = await eventually(
        lambda: next(
            (
                rec
                for rec in replica.log_records()
                if rec.get("level") == "ERROR" and PEERING_MANIFEST in str(rec.get("msg"))
            ),
            None,
        ),
        "an ERROR naming the peering manifest",
        START,
        replicas,
    )
    assert "clusterkopfpeerings" in record["msg"]
    assert (BASE.parent.parent / PEERING_MANIFEST).is_file()


@pytest.mark.parametrize("listener", ["metrics", "healthz", "webhook"])
async def test_a_port_that_cannot_be_bound_ends_the_process(
    kmock: Any, tmp_path: Path, replicas: list[Replica], listener: str
) -> None:
    declare(kmock)
    add_shipped_objects(kmock)
    replica, _ = shipped_replica("replica-a", kmock, tmp_path)
    flag = {"metrics": "--metrics-port", "healthz": "--liveness", "webhook": "--webhook-port"}
    port = next(
        int(a.rsplit(":", 1)[1].split("/")[0])
        if a.startswith("--liveness")
        else int(a.split("=")[1])
        for a in replica.args
        if a.startswith(flag[listener])
    )
    replicas.append(replica)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", port))
        busy.listen()
        await replica.start()
        code = await replica.wait(START)
    assert code != 0
    errors = [rec for rec in replica.log_records() if rec.get("level") == "ERROR"]
    assert errors and flag[listener] in errors[-1]["msg"], replica.output()


async def test_kubeconfig_with_an_exec_credential_plugin(
    kmock: Any, tmp_path: Path, replicas: list[Replica]
) -> None:
    """The login kubectl would do: the plugin runs and its token reaches the API server."""
    declare(kmock, peering=False)
    kmock.objects["v1/secrets", APPS, "openai-key"] = key_secret()
    kmock.objects[RUNTIMES, APPS, "one"] = runtime("one")
    plugin = tmp_path / "credential-plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',"
        " 'kind': 'ExecCredential', 'status': {'token': 'token-from-plugin'}}))\n"
    )
    replica = Replica(
        "workstation",
        tmp_path,
        str(kmock.url),
        ["operator", "--standalone", f"--metrics-port={free_port()}"],
    )
    write_kubeconfig(
        replica.kubeconfig,
        str(kmock.url),
        exec_cmd={
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        },
    )
    replicas.append(replica)
    await replica.start()
    await eventually(lambda: ready_condition(kmock, APPS, "one"), "Ready", START, replicas)
    tokens = {
        next((v for k, v in (r.headers or {}).items() if k.lower() == "authorization"), None)
        for r in list(kmock)
    }
    assert tokens == {"Bearer token-from-plugin"}


async def test_ca_bundle_heals_when_reverted_or_created_late(
    kmock: Any, tmp_path: Path, replicas: list[Replica]
) -> None:
    declare(kmock)
    add_shipped_objects(kmock, webhook_configuration=False)
    replica, port = shipped_replica("replica-a", kmock, tmp_path, "--webhook-ca-interval=0.2")
    replicas.append(replica)
    await replica.start()
    await eventually(lambda: _status_is(replica, port, "/readyz", 200), "ready", START, replicas)
    mwc = manifest("MutatingWebhookConfiguration")
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    await kmock.post(path, json=mwc)  # created after the operator
    name = mwc["metadata"]["name"]

    def bundle() -> str | None:
        obj = dict(kmock.objects[path.removeprefix("/apis/"), None, name].raw)
        return obj["webhooks"][0].get("clientConfig", {}).get("caBundle")

    published = await eventually(bundle, "the CA bundle published", 10, replicas)
    reverted = [
        {**w, "clientConfig": {k: v for k, v in w["clientConfig"].items() if k != "caBundle"}}
        for w in dict(kmock.objects[path.removeprefix("/apis/"), None, name].raw)["webhooks"]
    ]
    await kmock.patch(f"{path}/{name}", json={"webhooks": reverted}, headers=MERGE)
    assert bundle() is None  # as a GitOps tool would leave it
    assert await eventually(bundle, "the CA bundle re-published", 10, replicas) == published
