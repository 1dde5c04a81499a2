"""Finding 5: a breaker covers what fails together, and an open one fails the SDK fast.

Before, two 500s for one model opened a single circuit for every model, and
the SDK slept out ``retry-after: 30`` before trying again. Now a model (on
Azure, a deployment) has its own circuit, the host's transport has one more
that only connections never made can open, and the refusal says
``x-should-retry: false``. Everything goes through a real sidecar with the
official SDK as the app.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from openai_runtime_sidecar.runner import ManualClock

from .harness import Rig, assert_openai_error, running

FAILING = {"x-fake-scenario": "server-error"}
THRESHOLD = 2
BREAKER = {"failureThreshold": THRESHOLD, "openDuration": "30s"}
MESSAGES = [{"role": "user", "content": "hello"}]


def sdk(url: str) -> openai.AsyncOpenAI:
    # The SDK's default retries: a refusal that invited one would show as a slow call.
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")


async def open_circuit(rig: Rig, **body: Any) -> None:
    """Upstream fails ``THRESHOLD`` calls in a row: their circuit opens."""
    for _ in range(THRESHOLD):
        assert (await rig.chat("x", headers=FAILING, **body)).status == 500


async def test_a_failing_model_opens_its_own_circuit_only(tmp_path: Path) -> None:
    async with (
        running(
            tmp_path, clock=ManualClock(), retry={"maxAttempts": 1}, circuitBreaker=BREAKER
        ) as rig,
        sdk(rig.url) as client,
    ):
        await open_circuit(rig, model="gpt-4o")
        sent = len(rig.upstream.requests)

        with pytest.raises(openai.InternalServerError) as caught:
            async with asyncio.timeout(10):  # a regression sleeps 30 s per SDK retry
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 503 and caught.value.code == "circuit_open"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "'gpt-4o'" in caught.value.message
        assert len(rig.upstream.requests) == sent, "one answer, no SDK retry, nothing upstream"

        other = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert other.choices[0].message.content
        embedded = await client.embeddings.create(model="text-embedding-3-small", input="x")
        assert embedded.data

        circuit = (await rig.status())["circuit"]
        assert circuit["host"]["state"] == "closed"
        assert set(circuit["scopes"]) == {"gpt-4o"}
        assert circuit["scopes"]["gpt-4o"]["state"] == "open"
        metrics = rig.sidecar.telemetry.prometheus_text()
        assert 'scope="gpt-4o",state="open"} 2' in metrics
        assert 'scope="host",state="closed"} 0' in metrics


async def test_an_azure_deployment_opens_its_own_circuit_only(tmp_path: Path) -> None:
    azure = {"deployment": "gpt-4o-prod", "deployments": ["gpt-4o-mini-prod"]}
    async with (
        running(
            tmp_path,
            clock=ManualClock(),
            retry={"maxAttempts": 1},
            circuitBreaker=BREAKER,
            azure=azure,
        ) as rig,
        openai.AsyncAzureOpenAI(
            azure_endpoint=rig.url, api_key="unused", api_version="2024-10-21"
        ) as client,
    ):
        # The app names no deployment on /v1: the configured one serves, and fails.
        await open_circuit(rig)
        with pytest.raises(openai.InternalServerError) as caught:
            async with asyncio.timeout(10):
                # The SDK puts the model in the URL: /openai/deployments/gpt-4o-prod/...
                await client.chat.completions.create(model="gpt-4o-prod", messages=MESSAGES)
        assert caught.value.code == "circuit_open"
        assert caught.value.response.headers["x-should-retry"] == "false"

        served = await client.chat.completions.create(model="gpt-4o-mini-prod", messages=MESSAGES)
        assert served.model == "gpt-4o-mini-2024-07-18"
        circuit = (await rig.status())["circuit"]
        assert set(circuit["scopes"]) == {"gpt-4o-prod"}
        assert circuit["scopes"]["gpt-4o-prod"]["state"] == "open"


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_an_unreachable_host_opens_the_host_circuit_for_every_model(
    tmp_path: Path,
) -> None:
    with refusing_port() as port:
        async with (
            running(
                tmp_path,
                clock=ManualClock(),
                retry={"maxAttempts": 1},
                circuitBreaker=BREAKER,
                variant={"direct": {"endpoint": f"http://127.0.0.1:{port}/v1"}},
            ) as rig,
            sdk(rig.url) as client,
        ):
            for model in ("gpt-4o", "gpt-4o-mini"):
                refused = await rig.chat("x", model=model)
                assert refused.status == 502
                assert_openai_error(refused.json, "upstream_transport_error")
            for model in ("gpt-4o", "o3", "text-embedding-3-small"):
                with pytest.raises(openai.InternalServerError) as caught:
                    async with asyncio.timeout(10):
                        await client.chat.completions.create(model=model, messages=MESSAGES)
                assert caught.value.code == "circuit_open"
                assert "upstream host" in caught.value.message
                assert caught.value.response.headers["x-should-retry"] == "false"
            circuit = (await rig.status())["circuit"]
            assert circuit["host"]["state"] == "open"
            assert circuit["scopes"] == {}, "a connection never made says nothing of a model"
