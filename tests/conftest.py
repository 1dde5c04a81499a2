"""Fixtures shared by the whole suite: a real fake upstream on loopback, key files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openai_runtime_sidecar.fakes.upstream import FakeUpstream

from .support import NEW_KEY, OLD_KEY, SecretVolume


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(keys={OLD_KEY, NEW_KEY})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def secret_dir(tmp_path: Path) -> SecretVolume:
    volume = SecretVolume(tmp_path / "secret")
    volume.write(OLD_KEY)
    return volume
