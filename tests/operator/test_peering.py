"""Which replica acts (kopf's rule on the peering status), and what readiness waits for."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import aiohttp
import kopf

from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.kubeapi import KubeApi
from openai_runtime_operator.peering import (
    PeeringSettings,
    acting,
    check_peering,
    is_acting,
    random_priority,
)

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict[str, Any]:
    seen = NOW - datetime.timedelta(seconds=seen_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_highest_live_priority_acts() -> None:
    status = {"me": peer(10, 1), "other": peer(5, 1)}
    assert acting(status, "me", 10, NOW)
    assert not acting(status, "other", 5, NOW)


def test_equal_priorities_pause_both_as_kopf_does() -> None:
    status = {"me": peer(7, 1), "other": peer(7, 1)}
    assert not acting(status, "me", 7, NOW) and not acting(status, "other", 7, NOW)


def test_a_dead_peer_does_not_count() -> None:
    status = {"me": peer(1, 1), "gone": peer(99, 61, lifetime=60)}
    assert acting(status, "me", 1, NOW)
    status["gone"] = peer(99, 59, lifetime=60)
    assert not acting(status, "me", 1, NOW)


def test_garbage_entries_are_ignored() -> None:
    status = {"me": peer(1, 1), "x": "nonsense", "y": {"priority": "high"}, "z": {"lastseen": 3}}
    assert acting(status, "me", 1, NOW)


def test_random_priorities_differ() -> None:
    assert len({random_priority() for _ in range(50)}) == 50


def declare_peering(kmock: Any) -> None:
    kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = {
        "kind": "ClusterKopfPeering",
        "namespaced": False,
        "verbs": ["get", "list", "watch", "patch"],
    }
    kmock.resources["kopf.dev/v1/kopfpeerings"] = {
        "kind": "KopfPeering",
        "namespaced": True,
        "verbs": ["get", "list", "watch", "patch"],
    }


async def test_is_acting_reads_the_peering_object(kmock: Any) -> None:
    declare_peering(kmock)
    me = PeeringSettings(name="openai-runtime", identity="me", priority=10)
    api = KubeApi(kopf.ConnectionInfo(server=str(kmock.url), insecure=True))
    try:
        assert "does not exist" in str(await check_peering(api, me))
        now = datetime.datetime.now(datetime.UTC)
        kmock.objects["kopf.dev/v1/clusterkopfpeerings", None, "openai-runtime"] = {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "openai-runtime"},
            "status": {
                "me": {"priority": 10, "lifetime": 60, "lastseen": now.isoformat()},
                "high": {"priority": 20, "lifetime": 60, "lastseen": now.isoformat()},
            },
        }
        assert await check_peering(api, me) is None
        assert not await is_acting(api, me)
        higher = PeeringSettings(name="openai-runtime", identity="high", priority=20)
        assert await is_acting(api, higher)
        standalone = PeeringSettings(name="x", identity="me", priority=0, standalone=True)
        assert await is_acting(api, standalone) and await check_peering(api, standalone) is None
        namespaced = PeeringSettings(
            name="openai-runtime", identity="me", priority=10, namespaces=("team-a",)
        )
        assert "team-a" in str(await check_peering(api, namespaced))
    finally:
        await api.close()


async def test_check_peering_without_the_crd(kmock: Any) -> None:
    me = PeeringSettings(name="openai-runtime", identity="me", priority=10)
    api = KubeApi(kopf.ConnectionInfo(server=str(kmock.url), insecure=True))
    try:
        problem = await check_peering(api, me)
        assert problem is not None and "clusterkopfpeerings.kopf.dev" in problem
        assert "kubectl apply -f" in problem and "--standalone" in problem
    finally:
        await api.close()


async def test_readyz_waits_for_login_and_the_webhook() -> None:
    ctx = OperatorContext(metrics_address=("127.0.0.1", 0))
    ctx.webhook_listening = asyncio.Event()
    await ctx.start_metrics()
    url = f"http://127.0.0.1:{ctx.metrics_port}/readyz"
    try:
        async with aiohttp.ClientSession() as session:

            async def status() -> tuple[int, dict[str, Any]]:
                async with session.get(url) as response:
                    return response.status, await response.json()

            assert await status() == (
                503,
                {"status": "not ready", "checks": {"loggedIn": False, "webhookListening": False}},
            )
            ctx.connection = kopf.ConnectionInfo(server="http://127.0.0.1:1", insecure=True)
            assert (await status())[0] == 503
            ctx.webhook_listening.set()
            assert (await status())[0] == 200
            async with session.get(f"http://127.0.0.1:{ctx.metrics_port}/healthz") as health:
                assert health.status == 200
    finally:
        ctx.connection = None
        await ctx.close()
