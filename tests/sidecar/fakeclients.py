"""The fake upstream on its own, and the SDK clients pointed straight at it.

Shared by the tests of :mod:`openai_runtime_sidecar.fakes.upstream` and its
routes (no sidecar in between): two accepted keys, and clients of each dialect.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from openai_runtime_sidecar.fakes.upstream import FakeUpstream

__all__ = ["API_VERSION", "KEY", "OTHER_KEY", "azure", "direct", "fake", "fingerprint", "session"]

KEY = "sk-test-fake-aaaaaaaaaaaaaaaa"
OTHER_KEY = "sk-test-fake-bbbbbbbbbbbbbbbb"
API_VERSION = "2024-10-21"


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(keys={KEY, OTHER_KEY}, chunks=4)
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def direct(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def azure(fake: FakeUpstream) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake.url, api_key=KEY, api_version=API_VERSION, max_retries=0
    ) as client:
        yield client
