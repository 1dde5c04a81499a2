"""How long a /metrics scrape takes, and how long it holds up the API, at the label bound.

An app chooses the ``model`` it sends; the sidecar keeps a name as a metric
label only when the runtime knows it, and at most ``max_priced`` names the
price table vouches for (dated snapshots, case variants), the rest counting
as ``other``. This fills that bound the worst way (every label used by chat,
streamed chat and embeddings, each failing once too), then prints side by side:

- the size of ``/metrics`` and the time to collect and render it;
- the longest stall of the event loop while one scrape is served, with the
  rendering on the loop (as before) and in a worker thread (as shipped);
- a chat call's latency on its own and while scrapes are being served.

Run: ``python bench/scrape.py`` (in-process sidecar and fake upstream, loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openai_runtime_sidecar.app import Sidecar  # noqa: E402
from openai_runtime_sidecar.config import SidecarConfig  # noqa: E402
from openai_runtime_sidecar.fakes.upstream import FakeUpstream  # noqa: E402

KEY = "sk-bench-scrape-0000000000000000"
FAMILIES = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3", "o4-mini", "gpt-5", "o1")


def names(count: int) -> list[str]:
    """``count`` distinct names the price table resolves (dated snapshots)."""
    out = []
    day = 0
    while len(out) < count:
        family = FAMILIES[day % len(FAMILIES)]
        out.append(f"{family}-2030-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}")
        day += 1
    return out


async def stall_during(work: Callable[[], Awaitable[Any]]) -> float:
    """The longest gap (ms) between ticks of a 1 ms ticker while ``work`` runs."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.005)
    try:
        await work()
    finally:
        done.set()
        await ticker
    return worst * 1000


async def run(labels: int, rounds: int) -> None:
    upstream = FakeUpstream(keys={KEY})
    await upstream.start()
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "api-key"
        key_file.write_text(KEY)
        config = SidecarConfig.model_validate(
            {
                "runtime": {"namespace": "bench", "name": "scrape"},
                "variant": {"direct": {"endpoint": upstream.url + "/v1"}},
                "apiKey": {"file": str(key_file)},
                "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                "retry": {"maxAttempts": 1},
                "circuitBreaker": {"failureThreshold": 1_000_000},
                "rateLimits": {
                    "requestsPerMinute": None,
                    "tokensPerMinute": None,
                    "maxConcurrency": None,
                },
            }
        )
        sidecar = Sidecar(config, config_path=None)
        await sidecar.start()
        try:
            await measure(sidecar, labels, rounds)
        finally:
            await sidecar.stop()
            await upstream.stop()


async def fill(http: aiohttp.ClientSession, api: str, models: list[str]) -> None:
    async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        async with http.post(api + path, json=body, headers=headers) as response:
            await response.read()

    failing = {"x-fake-scenario": "server-error"}
    calls = []
    for model in models:
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        for headers in ({}, failing):
            calls.append(one("/v1/chat/completions", chat, headers))
            calls.append(one("/v1/chat/completions", {**chat, "stream": True}, headers))
            calls.append(one("/v1/embeddings", {"model": model, "input": "hi"}, headers))
    for start in range(0, len(calls), 64):
        await asyncio.gather(*calls[start : start + 64])


async def measure(sidecar: Sidecar, labels: int, rounds: int) -> None:
    api, admin = sidecar.api_url, sidecar.admin_url
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        await fill(http, api, names(labels) + [f"Invented-{n}" for n in range(labels)])
        text = sidecar.telemetry.prometheus_text()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        renders = []
        for _ in range(rounds):
            started = time.perf_counter()
            sidecar.telemetry.prometheus_text()
            renders.append((time.perf_counter() - started) * 1000)

        async def scrape() -> None:
            async with http.get(admin + "/metrics") as response:
                await response.read()

        async def inline() -> None:
            sidecar.telemetry.prometheus_text()

        on_loop = [await stall_during(inline) for _ in range(rounds)]
        threaded = [await stall_during(scrape) for _ in range(rounds)]

        async def call() -> float:
            started = time.perf_counter()
            async with http.post(api + "/v1/chat/completions", json=chat) as response:
                await response.read()
            return (time.perf_counter() - started) * 1000

        alone = [await call() for _ in range(rounds * 4)]
        during = []
        for _ in range(rounds):
            scraping = asyncio.create_task(scrape())
            await asyncio.sleep(0)
            during.append(await call())
            await scraping

    print(f"labels filled: {labels} priced names + {labels} invented ones (-> other)")
    print(f"/metrics: {len(text) / 1024:.0f} KiB, {series} series")
    print(f"collect + render:              median {statistics.median(renders):7.1f} ms")
    print(f"longest loop stall, on loop:   median {statistics.median(on_loop):7.1f} ms")
    print(f"longest loop stall, threaded:  median {statistics.median(threaded):7.1f} ms")
    print(f"chat call alone:               median {statistics.median(alone):7.2f} ms")
    print(f"chat call during a scrape:     median {statistics.median(during):7.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--labels", type=int, default=300, help="distinct priced names sent")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(run(args.labels, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
