"""Latency of the pod-injecting admission webhook, over HTTPS, as the API server sees it.

Run from the repository root: ``.venv/bin/python bench/webhook_latency.py``
(``--requests``, ``--concurrency``, ``--output``). Not a test: it prints
p50/p90/p99/max latency and requests per second for each concurrency and
writes them as JSON (default ``bench/webhook_latency.json``).

What runs, all in this process on one event loop: kmock's Kubernetes emulator
(kmock works outside pytest: ``KubernetesEmulator`` and ``Server`` are async
context managers) holding one ``OpenAiRuntime``; the operator's self-signed
bootstrap (:func:`ensure_certificate` stores the certificate in a Secret,
:func:`publish_ca_bundle` trusts it in the MutatingWebhookConfiguration,
:func:`server_from_certificate` serves it, on loopback here); kopf with the
operator's registry and its ``inject`` mutating handler. The client trusts
the published CA bundle only and checks the Service's DNS name, as the API
server does, over keep-alive connections. Each review is a ReplicaSet's pod
(no name, no namespace in the object); the handler reads the runtime from the
emulator on every review, so the figures include that API round trip. The
client shares the loop and the CPU with the server: a lower bound on what a
real API server would measure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import logging
import os
import platform
import socket
import ssl
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf

from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.kubeapi import KubeApi
from openai_runtime_operator.models import API_VERSION, KIND, LABEL_RUNTIME
from openai_runtime_operator.registry import build_registry, build_settings
from openai_runtime_operator.webhooking import (
    MWC_PATH,
    SelfSignedSettings,
    ensure_certificate,
    publish_ca_bundle,
    server_from_certificate,
    service_hostnames,
)

# kopf in-process exactly as the operator tests run it (the repository's tests
# package; the standard library's `operator` still wins over the folder).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from tests.operator.inprocess import InProcessKopf

NS = "apps"
OPERATOR_NS = "openai-runtime"
RUNTIMES = f"{API_VERSION}/openairuntimes"
MWCS = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keep_request_log_short() -> None:
    """kmock matches each request against every request it logged before: forget served ones.

    Without this its cost per request grows with the log (about 55 GETs/s
    with an empty log, 12/s after 600 on 2 cores) and would be measured here.
    """
    handle = kmock.KubernetesEmulator._handle

    async def forgetting(self: Any, request: Any) -> Any:
        try:
            return await handle(self, request)
        finally:
            with contextlib.suppress(ValueError):
                self._requests.remove(request)  # private to kmock: its request log

    kmock.KubernetesEmulator._handle = forgetting  # type: ignore[method-assign]


def declare(emulator: Any) -> None:
    verbs = ["list", "watch", "get", "create", "patch", "update", "delete"]
    for resource, kind, namespaced in [
        ("v1/namespaces", "Namespace", False),
        ("v1/secrets", "Secret", True),
        ("v1/configmaps", "ConfigMap", True),
        ("v1/pods", "Pod", True),
        ("v1/events", "Event", True),
        (RUNTIMES, KIND, True),
        (MWCS, "MutatingWebhookConfiguration", False),
    ]:
        emulator.resources[resource] = {"kind": kind, "namespaced": namespaced, "verbs": verbs}
    for ns in (NS, OPERATOR_NS):
        emulator.objects["v1/namespaces", None, ns] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns},
        }
    emulator.objects[RUNTIMES, NS, "alpha"] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "alpha", "namespace": NS, "uid": "uid-alpha", "generation": 1},
        "spec": {
            "variant": {"direct": {}},
            "apiKeySecretRef": {"name": "openai-key", "key": "api-key"},
            "models": {"allow": ["gpt-4o-mini"], "default": "gpt-4o-mini"},
        },
        "status": {"credential": {"fingerprint": "sha256:1a2b3c4d5e6f", "rotations": 0}},
    }
    emulator.objects[MWCS, None, "openai-runtime"] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "openai-runtime"},
        "webhooks": [{"name": "inject.infer.atomr.io", "clientConfig": {"caBundle": ""}}],
    }


def review() -> dict[str, Any]:
    """An AdmissionReview of a ReplicaSet's pod that opts in to runtime ``alpha``."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-5d9c-", "labels": {LABEL_RUNTIME: "alpha"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": "",
            "namespace": NS,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


@contextlib.asynccontextmanager
async def operator(emulator: Any, port: int) -> AsyncIterator[bytes]:
    """kopf with the webhook on the self-signed bootstrap; yields the published CA bundle."""
    info = kopf.ConnectionInfo(server=str(emulator.url), insecure=True)
    api = KubeApi(info)
    try:
        now = datetime.datetime.now(datetime.UTC)
        cert, _ = await ensure_certificate(api, SelfSignedSettings(OPERATOR_NS), now=now)
        await publish_ca_bundle(api, "openai-runtime", cert.cert_pem)
        mwc = await api.get(f"{MWC_PATH}/openai-runtime")
    finally:
        await api.close()
    bundle = base64.b64decode((mwc or {})["webhooks"][0]["clientConfig"]["caBundle"])

    settings = build_settings(standalone=True)
    settings.scanning.disabled = True
    settings.admission.server = server_from_certificate(cert, port=port, addr="127.0.0.1")
    kopf_run = InProcessKopf()
    await kopf_run.start(
        build_registry(OperatorContext(), lambda **_: info, admission=True), settings
    )
    try:
        await kopf_run.wait_listening(port, within=10)
        yield bundle
    finally:
        await kopf_run.close()


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


async def burst(url: str, bundle: bytes, total: int, concurrency: int) -> dict[str, Any]:
    """``total`` reviews, ``concurrency`` at a time; latencies in milliseconds."""
    context = ssl.create_default_context(cadata=bundle.decode("ascii"))
    hostname = service_hostnames("openai-runtime-webhook", OPERATOR_NS)[0]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal failures
            body = review()
            started = time.perf_counter()
            async with session.post(url, json=body, server_hostname=hostname) as response:
                answer = await response.json()
            elapsed = time.perf_counter() - started
            result = answer.get("response") or {}
            if response.status != 200 or not result.get("allowed") or "patch" not in result:
                failures += 1
            latencies.append(elapsed * 1000)

        await one()  # warm-up: TLS handshake, first lookups (not counted)
        latencies.clear()

        async def client() -> None:
            while not queue.empty():
                queue.get_nowait()
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(ordered),
        "failures": failures,
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p90_ms": round(percentile(ordered, 0.90), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "requests_per_s": round(len(ordered) / wall, 1),
    }


async def run(total: int, concurrencies: list[int]) -> list[dict[str, Any]]:
    keep_request_log_short()
    results = []
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        declare(emulator)
        port = free_port()
        async with operator(emulator, port) as bundle:
            url = f"https://127.0.0.1:{port}/inject"
            for concurrency in concurrencies:
                results.append(await burst(url, bundle, total, concurrency))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="reviews per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", type=Path, default=HERE / "webhook_latency.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run(args.requests, args.concurrency))
    print(
        f"{'concurrency':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8}"
    )
    for r in results:
        print(
            f"{r['concurrency']:>11} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['requests_per_s']:>8.1f}"
            + (f"  ({r['failures']} failed)" if r["failures"] else "")
        )
    document = {
        "benchmark": "admission webhook /inject over HTTPS (self-signed bootstrap)",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.output.name}")
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
