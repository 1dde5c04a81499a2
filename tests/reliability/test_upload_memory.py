"""A large upload streams through the sidecar: its memory does not grow with the file.

The sidecar runs as its own process (the console script), so its memory is
measured alone: the peak resident set (``VmHWM``) after a 200 MB multipart
upload, sent by the official SDK, against the resident set before it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import openai
import pytest

from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from tests.support import SecretVolume

from ..sidecar.test_lifecycle import SidecarProcess, write_config

SIZE = 200 * 1024 * 1024
BUDGET = 20 * 1024 * 1024


def memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
async def test_a_200_mb_upload_does_not_grow_the_sidecar(
    tmp_path: Path, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    big = tmp_path / "big.jsonl"
    digest = hashlib.sha256()
    with big.open("wb") as out:
        block = b'{"custom_id": "x"}\n' * 55000  # about 1 MB
        while out.tell() < SIZE:
            piece = block[: SIZE - out.tell()]
            out.write(piece)
            digest.update(piece)
    config = write_config(tmp_path, upstream, secret_dir.path, grace="5s")
    sidecar = await SidecarProcess.start(config)
    try:
        async with aiohttp.ClientSession() as http:
            await sidecar.wait_ready(http)
        async with openai.AsyncOpenAI(
            base_url=sidecar.api_url + "/v1", api_key="x", max_retries=0, timeout=90
        ) as client:
            warm = await client.files.create(file=("warm.jsonl", b"{}\n" * 1000), purpose="batch")
            assert warm.bytes == 3000
            pid = sidecar.proc.pid
            before = memory(pid, "VmRSS")
            with big.open("rb") as stream:
                created = await client.files.create(file=stream, purpose="batch")
            peak = memory(pid, "VmHWM")
    finally:
        await sidecar.close()
    assert created.bytes == SIZE
    [part] = [r for r in upstream.requests if r.endpoint == "files.create"][-1].uploads
    assert part.size == SIZE and part.sha256 == digest.hexdigest()
    growth = peak - before
    print(f"sidecar RSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB")
    assert growth < BUDGET, f"the sidecar grew by {growth / 2**20:.1f} MiB for a 200 MB upload"
