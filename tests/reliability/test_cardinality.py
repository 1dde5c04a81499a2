"""Model names apps invent cannot grow the metrics or the spend map without bound.

With no allow-list, a careless or hostile app sends a new model name per call.
Names the runtime knows (its allow-list, its price table) keep their own
series and spend entry; everything else is counted as ``other``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

from openai_runtime_sidecar.admin import Scrapes

from .harness import running

INVENTED = 300


async def test_invented_model_names_fold_into_other(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        for n in range(INVENTED):
            await rig.chat(f"call {n}", model=f"made-up-model-{n}")
        known = await rig.chat("a known one", model="gpt-4o-mini")
        assert known.status == 200
        async with rig.http.get(rig.sidecar.admin_url + "/metrics") as response:
            text = await response.text()
        status = await rig.status()
    labels = set(re.findall(r'model="([^"]*)"', text))
    assert not any(label.startswith("made-up-model") for label in labels)
    assert "other" in labels and "gpt-4o-mini" in " ".join(labels)
    assert len(labels) < 10, labels
    models = status["spend"]["models"]
    assert set(models) <= {"other", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"}
    assert models["other"]["requests"] == INVENTED


async def test_dated_snapshots_and_spellings_are_bounded_too(tmp_path: Path) -> None:
    """Every date resolves to a price: past the bound they fold into their price entry."""
    async with running(tmp_path) as rig:
        for n in range(INVENTED):
            model = f"gpt-4o-{2030 + n // 300}-{1 + n // 28 % 12:02d}-{1 + n % 28:02d}"
            assert (await rig.chat(f"call {n}", model=model.upper() if n % 2 else model)).status
        async with rig.http.get(rig.sidecar.admin_url + "/metrics") as response:
            text = await response.text()
        status = await rig.status()
    labels = set(re.findall(r'model="([^"]*)"', text))
    # 32 exact names, their price entry, and what upstream echoed.
    assert len(labels) <= 40, sorted(labels)
    assert "gpt-4o" in labels
    assert len(status["spend"]["models"]) <= 40


async def test_the_api_answers_while_metrics_are_rendered(tmp_path: Path) -> None:
    """A render held mid-way (as a huge one would run) does not hold up a call."""
    async with running(tmp_path) as rig:
        telemetry = rig.sidecar.telemetry
        render = telemetry.prometheus_text
        entered, release = threading.Event(), threading.Event()
        renders = []

        def held() -> str:
            renders.append(threading.current_thread())
            entered.set()
            release.wait(timeout=30)
            return render()

        telemetry.prometheus_text = held  # type: ignore[method-assign]
        url = rig.sidecar.admin_url + "/metrics"

        async def scrape() -> str:
            async with rig.http.get(url) as response:
                assert response.status == 200
                return await response.text()

        scraping = asyncio.create_task(scrape())
        try:
            await asyncio.to_thread(entered.wait, 10)
            answer = await asyncio.wait_for(rig.chat("during a scrape"), 10)
            assert answer.status == 200, "served while the render is still held"
            assert not scraping.done()
        finally:
            release.set()
        body = await scraping
    assert renders[0] is not threading.main_thread()
    assert "openai_runtime_requests_total" in body


async def test_overlapping_scrapes_share_one_render() -> None:
    entered, release = threading.Event(), threading.Event()
    renders = []

    def render() -> str:
        renders.append(1)
        entered.set()
        release.wait(timeout=30)
        return "# metrics\n"

    scrapes = Scrapes(render)
    first = asyncio.create_task(scrapes.body())
    await asyncio.to_thread(entered.wait, 10)
    others = [asyncio.create_task(scrapes.body()) for _ in range(20)]
    await asyncio.sleep(0)
    others[0].cancel()  # a scraper that hangs up cancels nothing for the others
    release.set()
    bodies = await asyncio.gather(first, *others[1:])
    assert renders == [1] and set(bodies) == {b"# metrics\n"}
    assert await scrapes.body() == b"# metrics\n" and renders == [1, 1], "then a fresh one"
