"""A real sidecar on loopback (port 0) in front of the fake upstream, with in-memory telemetry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import ManualClock
from openai_runtime_sidecar.telemetry import Telemetry
from tests.support import SecretVolume

# The fake upstream alone, with SDK clients pointed straight at it (its own tests).
from .fakeclients import azure, direct, fake, session  # noqa: F401

SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def sidecar_spec(upstream: FakeUpstream, key_file: Path, variant: str = "direct") -> dict[str, Any]:
    if variant == "direct":
        chosen: dict[str, Any] = {"direct": {"endpoint": upstream.url + "/v1"}}
    else:
        chosen = {"azure": {"endpoint": upstream.url, "deployment": "gpt-4o-prod"}}
    return {
        "runtime": {"namespace": "team-a", "name": "chat"},
        "variant": chosen,
        "apiKey": {"file": str(key_file)},
        "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "watch": {"interval": "20ms", "shutdownGrace": "5s"},
    }


@pytest.fixture
async def make_sidecar(
    upstream: FakeUpstream,
    secret_dir: SecretVolume,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricReader,
) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def factory(
        variant: str = "direct", /, *, clock: ManualClock | None = None, **overrides: Any
    ) -> Sidecar:
        spec = sidecar_spec(upstream, secret_dir.path, variant)
        spec.update(overrides)
        path = tmp_path / f"sidecar-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(spec))
        config = SidecarConfig.model_validate(spec)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        telemetry = Telemetry(
            runtime=str(config.runtime),
            variant=config.variant.selected.name,
            server_address="127.0.0.1",
            tracer_provider=provider,
            metric_readers=[metrics],
            environ={},
        )
        sidecar = Sidecar(
            config,
            config_path=path,
            telemetry=telemetry,
            clock=clock or ManualClock(auto_advance=True),
        )
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield factory
    for sidecar in started:
        await sidecar.stop()


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> Sidecar:
    return await make_sidecar()


@pytest.fixture
async def client(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="not-the-real-key", max_retries=0
    ) as sdk:
        yield sdk
