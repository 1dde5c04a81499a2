"""The budget gate as an app meets it: the official SDK through a real sidecar.

The operator judges the spend and writes ``budget`` into the sidecar's
config; here the test writes that config file as the ConfigMap volume would,
and the sidecar picks it up by its hot reload.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
import yaml

from openai_runtime_sidecar.admin import network_status_document, status_document
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import ManualClock

from .conftest import SidecarFactory
from .test_rotation import eventually

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def sdk(sidecar: Sidecar, retries: int = 3) -> openai.AsyncOpenAI:
    # Retries allowed: the refusal itself must tell the SDK not to use them.
    return openai.AsyncOpenAI(base_url=sidecar.api_url + "/v1", api_key="x", max_retries=retries)


async def test_a_used_up_budget_refuses_spending_calls_until_the_period_ends(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    clock = ManualClock()
    ends = clock.time() + 3600
    budget = {"limitUsd": 25, "period": "day", "blockedUntil": instant(ends)}
    sidecar = await make_sidecar(clock=clock, budget=budget)
    async with sdk(sidecar) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        error = info.value
        assert error.code == "budget_exceeded" and error.type == "insufficient_quota"
        assert "$25 per day" in error.message
        assert error.response.headers["retry-after"] == "3600"
        assert error.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.RateLimitError, match="budget"):
            await client.embeddings.create(model="text-embedding-3-small", input="hi")
        assert upstream.requests == []  # nothing spent, and the SDK did not retry

        # Reading costs nothing: listing models still works.
        models = await client.models.list()
        assert models.data and len(upstream.requests) == 1

        # The next period starts: the gate lifts itself before the operator writes again.
        clock.advance(3600)
        answer = await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert answer.choices[0].message.content


async def test_a_new_config_without_the_verdict_lifts_it_at_once(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    clock = ManualClock()
    budget = {"limitUsd": 5, "blockedUntil": instant(clock.time() + 86_400)}
    sidecar = await make_sidecar(clock=clock, budget=budget)
    async with sdk(sidecar, retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        # The operator saw a raised limit: the ConfigMap (here, the file) loses the verdict.
        path = sidecar.config_path
        assert path is not None
        document = yaml.safe_load(path.read_text())
        document["budget"] = {"limitUsd": 50}
        generation = sidecar.config_generation
        path.write_text(yaml.safe_dump(document))
        await eventually(lambda: sidecar.config_generation > generation, "config applied")
        answer = await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert answer.choices[0].message.content
        assert sidecar.runner.budget.settings.limit_usd == 50


async def test_a_pod_stops_at_its_share_in_tight_mode(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    budget = {"limitUsd": 5, "localLimitUsd": 0.000001, "recheck": "10s"}
    sidecar = await make_sidecar(budget=budget)
    async with sdk(sidecar) as client:
        first = await client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
        assert float(first.headers["x-openai-runtime-cost-usd"]) > 0.000001
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert info.value.code == "budget_exceeded" and "share" in info.value.message
        assert info.value.response.headers["retry-after"] == "10"
        assert len(upstream.requests) == 1
    local = sidecar.runner.budget
    assert local.spent_usd == pytest.approx(float(first.headers["x-openai-runtime-cost-usd"]))


async def test_status_shows_the_verdict_and_the_spend(make_sidecar: SidecarFactory) -> None:
    sidecar = await make_sidecar(budget={"limitUsd": 5, "localLimitUsd": 1})
    async with sdk(sidecar) as client:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    local = status_document(sidecar)["budget"]
    assert local["limitUsd"] == 5 and local["localLimitUsd"] == 1
    assert local["spentSinceUsd"] > 0
    spend = network_status_document(sidecar)["spend"]
    assert spend["instance"] == sidecar.instance
    assert spend["usd"] == pytest.approx(local["spentSinceUsd"])
