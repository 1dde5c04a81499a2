"""Backends on the cluster side: the spec, the sidecar config it renders, the pod it injects.

``spec.backends`` lists the upstreams in order; the first is the sidecar's
primary, the rest its fallbacks. The runtime's ConfigMap names each
fallback's key file; the webhook mounts each fallback's Secret where that
file is. The two are tested together here, as a pod would have them, so
neither can move without the other.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import openai
import pytest

from openai_runtime_operator.budgeting import poll_runtime
from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.convergence import ConvergenceSettings
from openai_runtime_operator.injecting import KEY_VOLUME, InjectionRefused, inject
from openai_runtime_operator.models import ANNOTATION_FALLBACK_VERSION, OpenAiRuntimeSpec
from openai_runtime_operator.reconciling import render_configmap
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.contract import CONFIG_KEY, FALLBACK_KEY_DIR
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import ManualClock
from openai_runtime_sidecar.runner.credentials import fingerprint
from openai_runtime_sidecar.runner.modeling import ValidationError

from ..support import NEW_KEY, OLD_KEY, SecretVolume, free_port
from .test_convergence import running
from .test_injecting import sidecar_of
from .test_operator import (
    MERGE,
    NS,
    OTHER_KEY,
    RUNTIMES,
    RUNTIMES_URL,
    SECRETS_URL,
    Cluster,
    b64,
    eventually,
    pod,
    ready,
    runtime,
    secret,
)

FALLBACKS = [
    {
        "name": "azure-eu",
        "variant": {"azure": {"resource": "contoso-eu", "deployment": "gpt-4o-mini-eu"}},
        "apiKeySecretRef": {"name": "azure-eu-key", "key": "token"},
        "models": {"gpt-4o-mini": "gpt-4o-mini-eu"},
    },
    {
        "name": "other",
        "variant": {"direct": {"endpoint": "https://llm.example/v1"}},
        "apiKeySecretRef": {"name": "other-key"},
        "pricing": {"m": {"inputPerMTokUsd": 1, "outputPerMTokUsd": 2}},
    },
]


def with_backends(
    name: str, fallbacks: list[dict[str, Any]], *, first: str = "primary", **spec: Any
) -> dict[str, Any]:
    """Runtime ``name`` in the backends form: its one upstream named ``first``, then these."""
    body = runtime(name, **spec)
    spec = body["spec"]
    primary = {"name": first, "variant": spec.pop("variant")}
    primary["apiKeySecretRef"] = spec.pop("apiKeySecretRef")
    spec["backends"] = [primary, *fallbacks]
    return body


def rendered(body: dict[str, Any]) -> SidecarConfig:
    spec = OpenAiRuntimeSpec.model_validate(body["spec"])
    configmap = render_configmap(body, NS, body["metadata"]["name"], spec)
    return SidecarConfig.model_validate(json.loads(configmap["data"][CONFIG_KEY]))


def test_each_fallback_key_file_is_where_its_secret_is_mounted() -> None:
    body = with_backends("alpha", FALLBACKS, first="main")
    config = rendered(body)
    assert config.name == "main" and config.weights() == [1, 0, 0]
    assert config.api_key.file is not None and config.api_key.file.endswith("/api-key")
    assert [f.name for f in config.fallbacks] == ["azure-eu", "other"]
    assert config.fallbacks[0].models == {"gpt-4o-mini": "gpt-4o-mini-eu"}
    assert config.fallbacks[1].pricing["m"].output_per_mtok_usd == 2

    injected = inject(pod("web", "alpha"), body)
    volumes = {v["name"]: v for v in injected["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar_of(injected)["volumeMounts"]}
    for fallback, named in zip(config.fallbacks, ("azure-eu-key", "other-key"), strict=True):
        key_file = fallback.api_key.file
        assert key_file is not None
        directory, _, _ = key_file.rpartition("/")
        assert directory == f"{FALLBACK_KEY_DIR}/{fallback.name}"
        mount = mounts[directory]
        assert mount["readOnly"] is True and "subPath" not in mount  # rotations reach it
        # Optional: a missing standby Secret must not keep the app from starting.
        assert volumes[mount["name"]]["secret"] == {"secretName": named, "optional": True}
    assert key_file.endswith("/api-key") and config.fallbacks[0].api_key.file.endswith("/token")


def test_a_runtime_without_fallbacks_mounts_one_key() -> None:
    injected = inject(pod("web", "alpha"), runtime("alpha"))
    names = {v["name"] for v in injected["spec"]["volumes"]}
    assert not {n for n in names if n.startswith(f"{KEY_VOLUME}-fallback")}
    assert rendered(runtime("alpha")).fallbacks == []


def test_each_backend_keeps_its_own_models_prices_weight_and_limits() -> None:
    first = {
        "name": "main",
        "variant": {"direct": {}},
        "apiKeySecretRef": {"name": "openai-key"},
        "weight": 3,
        "models": {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"},
        "pricing": {"m": {"inputPerMTokUsd": 5, "outputPerMTokUsd": 6}},
        "rateLimits": {"requestsPerMinute": 10000, "tokensPerMinute": 2000000},
    }
    body = runtime("alpha", rateLimits={"requestsPerMinute": 60})
    del body["spec"]["variant"], body["spec"]["apiKeySecretRef"]
    second = {**FALLBACKS[1], "weight": 1, "rateLimits": {"maxConcurrency": 4}}
    body["spec"]["backends"] = [first, second, {**FALLBACKS[0]}]
    config = rendered(body)
    # Each account's own tier; unset, the runtime's spec.rateLimits.
    assert config.rate_limits.requests_per_minute == 10000
    limits = [f.rate_limits for f in config.fallbacks]
    assert limits[0] is not None and limits[0].max_concurrency == 4
    assert limits[1] is None
    assert config.weights() == [3, 1, 0]
    assert config.upstream_models == {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
    assert config.upstream_pricing["m"].input_per_mtok_usd == 5
    assert config.pricing == {}  # so the fallback does not inherit main's prices
    assert config.fallbacks[0].pricing["m"].input_per_mtok_usd == 1


@pytest.mark.parametrize(
    ("fallbacks", "fragment"),
    [
        ([FALLBACKS[0], FALLBACKS[0]], "unique"),
        ([{**FALLBACKS[1], "name": "primary"}], "unique"),
        ([{**FALLBACKS[1], "name": "Not_A_Label"}], "pattern"),
        ([FALLBACKS[1]] * 5, "at most 5"),
    ],
)
def test_bad_backends_are_refused_naming_the_field(
    fallbacks: list[dict[str, Any]], fragment: str
) -> None:
    body = with_backends("alpha", fallbacks)
    with pytest.raises(ValidationError, match=fragment) as info:
        OpenAiRuntimeSpec.model_validate(body["spec"])
    assert info.value.errors()[0]["loc"][0] == "backends"
    with pytest.raises(InjectionRefused, match=r"spec\.backends"):
        inject(pod("web", "alpha"), body)


def test_the_one_upstream_form_is_a_one_backend_list() -> None:
    spec = OpenAiRuntimeSpec.model_validate(runtime("alpha")["spec"])
    assert spec.primary.name == "primary" and spec.fallbacks == []
    listed = OpenAiRuntimeSpec.model_validate(with_backends("alpha", [])["spec"])
    assert listed.primary == spec.primary
    assert rendered(with_backends("alpha", [])) == rendered(runtime("alpha"))
    both = runtime("alpha", backends=with_backends("alpha", [])["spec"]["backends"])
    with pytest.raises(ValidationError, match="not both"):
        OpenAiRuntimeSpec.model_validate(both["spec"])


def test_a_pod_volume_named_like_a_fallback_key_is_refused() -> None:
    app = pod("web", "alpha")
    app["spec"]["volumes"] = [{"name": f"{KEY_VOLUME}-fallback-0", "emptyDir": {}}]
    with pytest.raises(InjectionRefused, match="fallback-0"):
        inject(app, with_backends("alpha", FALLBACKS))


async def test_a_rotated_fallback_secret_nudges_the_pods_once(operator: Cluster) -> None:
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects["v1/secrets", NS, "other-key"] = secret("other-key", OTHER_KEY)
    fallbacks = [{**FALLBACKS[1], "apiKeySecretRef": {"name": "other-key"}}]
    kmock.objects[RUNTIMES, NS, "alpha"] = with_backends("alpha", fallbacks)
    kmock.objects[RUNTIMES, NS, "beta"] = runtime("beta")
    for name, owner in [("a1", "alpha"), ("b1", "beta")]:
        kmock.objects["v1/pods", NS, name] = pod(name, owner)

    def fallback_version(pod_name: str) -> str | None:
        found = operator.get("v1/pods", pod_name) or {}
        annotations = found.get("metadata", {}).get("annotations") or {}
        return annotations.get(ANNOTATION_FALLBACK_VERSION)

    await operator.start()
    await eventually(ready(operator, "alpha"), "alpha Ready")
    # The first look annotates the pods quietly: nothing rotated yet.
    first = await eventually(lambda: fallback_version("a1"), "a1 annotated")
    assert operator.events("FallbackCredentialRotated") == []

    await kmock.patch(
        f"{SECRETS_URL}/other-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(lambda: fallback_version("a1") != first, "a1 nudged")
    [event] = await eventually(lambda: operator.events("FallbackCredentialRotated"), "Event")
    assert f"other={fingerprint(NEW_KEY)}" in event["message"]
    assert fallback_version("b1") is None  # beta uses no fallback
    assert operator.status("alpha")["credential"]["rotations"] == 0  # the primary key stands
    assert operator.events("CredentialRotated") == []

    # A label edit replays the Secret unchanged: no nudge, no Event; a change does both.
    rotated = fallback_version("a1")
    await kmock.patch(
        f"{SECRETS_URL}/other-key", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE
    )
    await kmock.patch(
        f"{SECRETS_URL}/other-key", json={"data": {"api-key": b64(OLD_KEY)}}, headers=MERGE
    )
    await eventually(lambda: fallback_version("a1") not in (first, rotated), "a1 nudged again")
    events = await eventually(
        lambda: (
            len(operator.events("FallbackCredentialRotated")) == 2
            and operator.events("FallbackCredentialRotated")
        ),
        "a second Event",
    )
    assert f"other={fingerprint(OLD_KEY)}" in events[1]["message"]


@pytest.fixture
async def failover_pods(
    declare: Any, upstream: FakeUpstream, secret_dir: SecretVolume, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, list[Sidecar], FakeUpstream, ManualClock]]:
    """kmock with runtime ``alpha`` (one fallback) and two pods: real sidecars whose
    primary is ``upstream`` and whose fallback is a second fake upstream."""
    b = FakeUpstream(keys={OLD_KEY})
    await b.start()
    clock = ManualClock(auto_advance=True)
    port = free_port()
    sidecars = []
    for index, ip in enumerate(("127.0.0.1", "127.0.0.2")):
        config = SidecarConfig.model_validate(
            {
                "runtime": {"namespace": NS, "name": "alpha"},
                "variant": {"direct": {"endpoint": upstream.url + "/v1"}},
                "apiKey": {"file": str(secret_dir.path)},
                "listen": {"api": "127.0.0.1:0", "admin": f"{ip}:{port}"},
                "circuitBreaker": {"failureThreshold": 1, "openDuration": "30s"},
                "fallbacks": [
                    {
                        "name": "b",
                        "variant": {"direct": {"endpoint": b.url + "/v1"}},
                        "apiKey": {"file": str(secret_dir.path)},
                    }
                ],
            }
        )
        sidecar = Sidecar(config, clock=clock)
        await sidecar.start()
        sidecars.append(sidecar)
        declare.objects["v1/pods", NS, f"p{index}"] = running(f"p{index}", "alpha", ip)
    fallbacks = [{"name": "b", "variant": {"direct": {}}, "apiKeySecretRef": {"name": "k"}}]
    declare.objects[RUNTIMES, NS, "alpha"] = with_backends("alpha", fallbacks)
    cluster = Cluster(declare)
    cluster.ctx = OperatorContext(convergence=ConvergenceSettings(port=port, timeout=2.0))
    cluster.ctx.set_connection(kopf.ConnectionInfo(server=str(declare.url), insecure=True))
    try:
        yield cluster, sidecars, b, clock
    finally:
        await cluster.ctx.close()
        for sidecar in sidecars:
            await sidecar.stop()
        await b.stop()


async def test_backend_health_reaches_the_status_with_events_when_it_turns(
    failover_pods: tuple[Cluster, list[Sidecar], FakeUpstream, ManualClock],
    upstream: FakeUpstream,
) -> None:
    cluster, sidecars, b, clock = failover_pods
    await poll_runtime(cluster.ctx, NS, "alpha")
    assert cluster.status("alpha")["backends"] == [
        {"name": "primary", "pods": 2, "healthy": 2},
        {"name": "b", "pods": 2, "healthy": 2},
    ]
    assert cluster.events("BackendUnhealthy") == []

    # The primary goes down: pod p0's first call fails over to b and opens its breaker.
    port = int(upstream.url.rsplit(":", 1)[1])
    await upstream.stop()
    url = sidecars[0].api_url + "/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content and len(b.requests) == 1
        await poll_runtime(cluster.ctx, NS, "alpha")
        assert cluster.status("alpha")["backends"][0] == {
            "name": "primary",
            "pods": 2,
            "healthy": 1,
        }
        [event] = cluster.events("BackendUnhealthy")
        assert "primary" in event["message"] and "1 of 2 pods" in event["message"]
        await poll_runtime(cluster.ctx, NS, "alpha")  # still sick: no second Event
        assert len(cluster.events("BackendUnhealthy")) == 1

        # Back up; after the open duration a call probes it and closes the circuit.
        await upstream.start(port=port)
        clock.advance(30)
        await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    await poll_runtime(cluster.ctx, NS, "alpha")
    assert cluster.status("alpha")["backends"][0]["healthy"] == 2
    [recovered] = cluster.events("BackendRecovered")
    assert "primary" in recovered["message"]


async def test_a_backend_whose_account_is_spent_is_reported_paused_until_its_reset(
    failover_pods: tuple[Cluster, list[Sidecar], FakeUpstream, ManualClock],
) -> None:
    cluster, sidecars, _, clock = failover_pods
    await poll_runtime(cluster.ctx, NS, "alpha")
    url = sidecars[1].api_url + "/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as sdk:
        # The primary answers, and its headers say its tokens are spent for a minute.
        await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-remaining-tokens": "0"},
        )
    await poll_runtime(cluster.ctx, NS, "alpha")
    assert cluster.status("alpha")["backends"][0] == {"name": "primary", "pods": 2, "healthy": 1}
    [event] = cluster.events("BackendUnhealthy")
    assert "primary" in event["message"] and "pause" in event["message"]
    clock.advance(61)
    await poll_runtime(cluster.ctx, NS, "alpha")
    assert cluster.status("alpha")["backends"][0]["healthy"] == 2
    [recovered] = cluster.events("BackendRecovered")
    assert "traffic returns" in recovered["message"]


async def test_one_look_reads_the_runtime_twice_and_patches_its_status_once(
    failover_pods: tuple[Cluster, list[Sidecar], FakeUpstream, ManualClock],
) -> None:
    # A budget and several backends: health and spend share one locked read and one patch.
    cluster, _, _, _ = failover_pods
    body = cluster.get(RUNTIMES, "alpha")
    assert body is not None
    body["spec"]["budget"] = {"limitUsd": 10}
    cluster.kmock.objects[RUNTIMES, NS, "alpha"] = body
    url = f"{RUNTIMES_URL}/alpha"

    def gets() -> int:
        return len([r for r in cluster.requests("GET", url) if str(r.url.path) == url])

    before, patched = gets(), len(cluster.requests("PATCH", f"{url}/status"))
    poll = await poll_runtime(cluster.ctx, NS, "alpha")
    assert poll is not None and poll.spend.usd == 0
    assert gets() - before == 2
    [patch] = cluster.requests("PATCH", f"{url}/status")[patched:]
    assert {"spend", "backends", "conditions"} <= set(patch.data["status"])
    status = cluster.status("alpha")
    assert [b["name"] for b in status["backends"]] == ["primary", "b"]
    assert status["spend"]["usd"] == 0
