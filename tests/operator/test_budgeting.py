"""Budgets end to end on kmock: real sidecars' spend, the runtime's status, the verdict.

Three pods of runtime ``alpha`` are three real sidecars whose admin
listeners share one port on 127.0.0.1, .2 and .3 (the pods' IPs); apps call
them through the official SDK. The operator's budget poll runs as its loop
would, on a clock the test moves; the ConfigMap it writes reaches a sidecar
the way kubelet delivers it, as the file the sidecar hot-reloads (only the
pod-local parts, listeners, key file and upstream, are the test's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import openai
import pytest
import yaml

from openai_runtime_operator.budgeting import (
    ANNOTATION_CONFIG_VERSION,
    budget_forever,
    poll_runtime,
)
from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.convergence import ConvergenceSettings
from openai_runtime_operator.reconciling import configmap_name
from openai_runtime_operator.resync import resync_one
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.contract import CONFIG_KEY
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import ManualClock

from ..sidecar.test_rotation import eventually as settled
from ..support import SecretVolume, free_port
from .test_convergence import running
from .test_operator import MERGE, NS, RUNTIMES, RUNTIMES_URL, Cluster, eventually, runtime

NOV = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
IPS = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Pods:
    """The runtime's pods: a real sidecar each, restartable, on a shared admin port."""

    def __init__(self, upstream: FakeUpstream, volume: SecretVolume, tmp: Path) -> None:
        self.port = free_port()
        self.upstream, self.volume, self.tmp = upstream, volume, tmp
        self.clock = ManualClock(wall=NOV.timestamp(), auto_advance=True)
        self.sidecars: dict[str, Sidecar] = {}
        self.costs: list[float] = []

    def document(self, name: str, rendered: dict[str, Any] | None = None) -> dict[str, Any]:
        pod_local = {
            "variant": {"direct": {"endpoint": self.upstream.url + "/v1"}},
            "apiKey": {"file": str(self.volume.path)},
            "listen": {"api": "127.0.0.1:0", "admin": f"{IPS[name]}:{self.port}"},
            "watch": {"interval": "20ms", "shutdownGrace": "1s"},
        }
        return {**(rendered or {"runtime": {"namespace": NS, "name": "alpha"}}), **pod_local}

    async def start(self, name: str) -> Sidecar:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(self.document(name)))
        config = SidecarConfig.model_validate(self.document(name))
        sidecar = Sidecar(config, config_path=path, clock=self.clock)
        await sidecar.start()
        self.sidecars[name] = sidecar
        return sidecar

    async def restart(self, name: str) -> Sidecar:
        await self.sidecars.pop(name).stop()
        return await self.start(name)

    async def call(self, name: str) -> openai.RateLimitError | None:
        """One chat call through pod ``name``'s sidecar; its cost is noted."""
        url = self.sidecars[name].api_url + "/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=2) as client:
            try:
                raw = await client.chat.completions.with_raw_response.create(**CHAT)
            except openai.RateLimitError as refused:
                return refused
        self.costs.append(float(raw.headers["x-openai-runtime-cost-usd"]))
        return None

    async def deliver(self, name: str, configmap: dict[str, Any]) -> None:
        """What kubelet does with a changed ConfigMap: the file changes, the sidecar reloads."""
        sidecar = self.sidecars[name]
        rendered = yaml.safe_load(configmap["data"][CONFIG_KEY])
        generation = sidecar.config_generation
        assert sidecar.config_path is not None
        sidecar.config_path.write_text(json.dumps(self.document(name, rendered)))
        await settled(lambda: sidecar.config_generation > generation, "config applied")

    async def stop(self) -> None:
        for sidecar in self.sidecars.values():
            await sidecar.stop()


@pytest.fixture
async def pods(
    upstream: FakeUpstream, secret_dir: SecretVolume, tmp_path: Path
) -> AsyncIterator[Pods]:
    group = Pods(upstream, secret_dir, tmp_path)
    try:
        for name in IPS:
            await group.start(name)
        yield group
    finally:
        await group.stop()


@pytest.fixture
async def cluster(declare: Any, pods: Pods) -> AsyncIterator[Cluster]:
    """kmock with runtime ``alpha`` (a monthly budget) and its three Running pods."""
    kmock = declare
    cluster = Cluster(kmock)
    now = [NOV]
    ctx = OperatorContext(
        convergence=ConvergenceSettings(port=pods.port, timeout=2.0),
        now=lambda: now[0],
    )
    ctx.set_connection(kopf.ConnectionInfo(server=str(kmock.url), insecure=True))
    cluster.ctx = ctx
    cluster.clock = now  # type: ignore[attr-defined]
    budget = {"limitUsd": 1000, "warnAtPercent": [50]}
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha", budget=budget)
    for name, ip in IPS.items():
        kmock.objects["v1/pods", NS, name] = running(name, "alpha", ip)
    try:
        yield cluster
    finally:
        await ctx.close()


def spend(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.status("alpha")["spend"])


def configmap(cluster: Cluster) -> dict[str, Any]:
    found = cluster.get("v1/configmaps", configmap_name("alpha"))
    assert found is not None
    return found


def budget_section(cluster: Cluster) -> dict[str, Any]:
    return dict(json.loads(configmap(cluster)["data"][CONFIG_KEY])["budget"])


async def test_spend_is_summed_exactly_across_pods_and_a_restart(
    cluster: Cluster, pods: Pods
) -> None:
    ctx = cluster.ctx
    await pods.call("a")  # before the budget's first look: not counted
    first = await poll_runtime(ctx, NS, "alpha")
    assert first is not None and first.spend.usd == 0
    assert set(spend(cluster)["pods"]) == set(IPS)
    pods.costs.clear()

    for name in ("a", "a", "b", "c"):
        assert await pods.call(name) is None
    await poll_runtime(ctx, NS, "alpha")
    assert spend(cluster)["usd"] == pytest.approx(sum(pods.costs), abs=1e-9)

    # Pod a's container restarts: its new sidecar's counter starts again at zero.
    before = pods.sidecars["a"].instance
    await pods.call("a")
    await poll_runtime(ctx, NS, "alpha")
    restarted = await pods.restart("a")
    assert restarted.instance != before
    await pods.call("a")
    await pods.call("b")
    await poll_runtime(ctx, NS, "alpha")
    status = spend(cluster)
    assert status["usd"] == pytest.approx(sum(pods.costs), abs=1e-9)
    assert sum(status["byModel"].values()) == pytest.approx(sum(pods.costs), abs=1e-9)
    assert status["pods"]["a"]["instance"] == restarted.instance

    # A pod that is gone is forgotten; the others' spend stays counted.
    del cluster.kmock.objects["v1/pods", NS, "c"]
    await poll_runtime(ctx, NS, "alpha")
    assert set(spend(cluster)["pods"]) == {"a", "b"}
    assert spend(cluster)["usd"] == pytest.approx(sum(pods.costs), abs=1e-9)


async def test_the_limit_flips_the_configmap_and_the_next_period_lifts_it(
    cluster: Cluster, pods: Pods
) -> None:
    ctx, kmock = cluster.ctx, cluster.kmock
    await poll_runtime(ctx, NS, "alpha")
    for name in ("a", "b", "c"):
        await pods.call(name)
    spent = sum(pods.costs)
    # The limit such that this spend is past 50 % and then past 100 %.
    patch = {"spec": {"budget": {"limitUsd": spent * 1.5, "warnAtPercent": [50]}}}
    await kmock.patch(f"{RUNTIMES_URL}/alpha", json=patch, headers=MERGE)
    warned = await poll_runtime(ctx, NS, "alpha")
    assert warned is not None and warned.verdict.crossed == (50,)
    assert cluster.condition("alpha", "BudgetWarning")["reason"] == "ThresholdReached"
    assert [e["reason"] for e in cluster.events("BudgetWarning")] == ["BudgetWarning"]
    assert "blockedUntil" not in budget_section(cluster)

    await pods.call("a")
    await pods.call("b")
    assert sum(pods.costs) >= spent * 1.5
    exceeded = await poll_runtime(ctx, NS, "alpha")
    assert exceeded is not None and exceeded.exceeded and exceeded.configmap == "patched"
    assert budget_section(cluster)["blockedUntil"] == "2026-12-01T00:00:00Z"
    assert cluster.condition("alpha", "BudgetWarning")["reason"] == "LimitReached"
    assert len(cluster.events("BudgetExceeded")) == 1
    assert spend(cluster)["exceededAt"] == "2026-11-30T12:00:00Z"
    metrics = ctx.telemetry.prometheus_text()
    labels = f'namespace="{NS}",runtime="{NS}/alpha"'
    assert f"openai_runtime_operator_budget_spend_usd{{{labels}}} {sum(pods.costs)!r}" in metrics
    assert f"openai_runtime_operator_budget_limit_usd{{{labels}}} {spent * 1.5!r}" in metrics
    # Every pod was nudged, so kubelet refreshes the mounted ConfigMap at once.
    for name in IPS:
        pod_meta = cluster.get("v1/pods", name)
        assert pod_meta is not None
        assert pod_meta["metadata"]["annotations"][ANNOTATION_CONFIG_VERSION]

    # A real sidecar that got the ConfigMap refuses, as an app sees it.
    await pods.deliver("a", configmap(cluster))
    refused = await pods.call("a")
    assert refused is not None and refused.code == "budget_exceeded"
    assert int(refused.response.headers["retry-after"]) == pytest.approx(12 * 3600, abs=60)
    # A poll with nothing new (a refusal costs nothing) writes nothing, says nothing twice.
    writes = len(cluster.requests("PATCH", "/openairuntimes/alpha/status"))
    cluster.clock[0] = NOV.replace(minute=5)  # type: ignore[attr-defined]
    again = await poll_runtime(ctx, NS, "alpha")
    assert again is not None and again.configmap == "unchanged" and not again.exceeded
    assert len(cluster.events("BudgetExceeded")) == 1
    patches = cluster.requests("PATCH", "/openairuntimes/alpha/status")
    assert len(patches) == writes, patches[-1].data

    # December: a new period. Spend starts at zero, the verdict goes, pods serve again.
    cluster.clock[0] = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)  # type: ignore[attr-defined]
    reset = await poll_runtime(ctx, NS, "alpha")
    assert reset is not None and reset.reset and reset.spend.usd == 0
    assert "blockedUntil" not in budget_section(cluster)
    assert [e["reason"] for e in cluster.events("BudgetReset")] == ["BudgetReset"]
    assert cluster.condition("alpha", "BudgetWarning")["status"] == "False"
    await pods.deliver("a", configmap(cluster))
    assert await pods.call("a") is None


async def test_a_raised_limit_lifts_the_refusal_on_reconcile(cluster: Cluster, pods: Pods) -> None:
    ctx, kmock = cluster.ctx, cluster.kmock
    await poll_runtime(ctx, NS, "alpha")
    await pods.call("a")
    patch = {"spec": {"budget": {"limitUsd": sum(pods.costs) / 2}}}
    await kmock.patch(f"{RUNTIMES_URL}/alpha", json=patch, headers=MERGE)
    await poll_runtime(ctx, NS, "alpha")
    assert "blockedUntil" in budget_section(cluster)

    # The limit is raised: reconciliation (here the resync's) renders no verdict at once.
    await kmock.patch(
        f"{RUNTIMES_URL}/alpha", json={"spec": {"budget": {"limitUsd": 1000}}}, headers=MERGE
    )
    raw = cluster.get(RUNTIMES, "alpha")
    assert raw is not None
    await resync_one(ctx, raw)
    assert "blockedUntil" not in budget_section(cluster)
    assert budget_section(cluster)["limitUsd"] == 1000
    # And a runtime without a budget keeps neither spend nor warning in its status.
    await kmock.patch(f"{RUNTIMES_URL}/alpha", json={"spec": {"budget": None}}, headers=MERGE)
    raw = cluster.get(RUNTIMES, "alpha")
    assert raw is not None
    await resync_one(ctx, raw)
    assert "spend" not in cluster.status("alpha")
    assert cluster.condition("alpha", "BudgetWarning") is None
    assert await poll_runtime(ctx, NS, "alpha") is None


async def spend_until_refused(
    cluster: Cluster, pods: Pods, *, every: int, calls: int = 60
) -> tuple[float, float]:
    """Three pods spend at a steady rate while the operator looks every ``every`` rounds.

    A round is one call per pod; after each look the ConfigMap reaches every
    pod (the nudge makes kubelet deliver it at once). Returns the limit and
    the spend when the last pod was refused.
    """
    ctx = cluster.ctx
    await poll_runtime(ctx, NS, "alpha")
    for name in IPS:
        await pods.deliver(name, configmap(cluster))
    refused: set[str] = set()
    for round_ in range(calls):
        for name in IPS:
            if name not in refused and await pods.call(name) is not None:
                refused.add(name)
        if refused == set(IPS):
            break
        if (round_ + 1) % every == 0:
            poll = await poll_runtime(ctx, NS, "alpha")
            assert poll is not None
            if poll.configmap != "unchanged":
                for name in IPS:
                    await pods.deliver(name, configmap(cluster))
    raw = cluster.get(RUNTIMES, "alpha")
    assert raw is not None and refused == set(IPS)
    return float(raw["spec"]["budget"]["limitUsd"]), sum(pods.costs)


@pytest.mark.parametrize("tight", [False, True], ids=["operator-only", "local-share"])
async def test_overshoot_is_bounded_by_what_is_spent_between_two_looks(
    cluster: Cluster, pods: Pods, tight: bool
) -> None:
    """Past the limit: at most one interval's spend; with local shares, one call per pod."""
    await pods.call("a")
    price = pods.costs.pop()  # every call here costs the same
    every = 5  # rounds between the operator's looks: 15 calls
    limit = price * 20.5
    budget = {"limitUsd": limit, "localShare": tight}
    await cluster.kmock.patch(
        f"{RUNTIMES_URL}/alpha", json={"spec": {"budget": budget}}, headers=MERGE
    )
    limit, spent = await spend_until_refused(cluster, pods, every=every)
    overshoot = spent - limit
    print(f"overshoot {'with' if tight else 'without'} local shares: {overshoot / price:.1f} calls")
    if tight:
        # A pod stops once its share is spent: the last call of each pod may pass it.
        assert overshoot <= len(IPS) * price
    else:
        assert overshoot <= every * len(IPS) * price
        assert spent > limit  # the looks alone let some through


async def test_the_loop_polls_the_runtimes_reconciliation_saw_with_a_budget(
    cluster: Cluster, pods: Pods
) -> None:
    ctx, kmock = cluster.ctx, cluster.kmock
    raw = cluster.get(RUNTIMES, "alpha")
    assert raw is not None
    await resync_one(ctx, raw)
    assert ctx.polled == {(NS, "alpha")}
    listed = len(cluster.requests("GET", RUNTIMES_URL))
    loop = asyncio.create_task(budget_forever(ctx, 0.001))
    try:
        await eventually(lambda: "spend" in cluster.status("alpha"), "the loop's first look")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    # It polled by name: no list of every runtime per pass.
    lists = [r for r in cluster.requests("GET", RUNTIMES_URL) if str(r.url.path) == RUNTIMES_URL]
    assert len(cluster.requests("GET", RUNTIMES_URL)) > listed and not lists

    await kmock.patch(f"{RUNTIMES_URL}/alpha", json={"spec": {"budget": None}}, headers=MERGE)
    raw = cluster.get(RUNTIMES, "alpha")
    assert raw is not None
    await resync_one(ctx, raw)
    assert ctx.polled == set()
    ctx.forget(NS, "alpha")
