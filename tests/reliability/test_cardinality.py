"""Model names apps invent cannot grow the metrics or the spend map without bound.

With no allow-list, a careless or hostile app sends a new model name per call.
Names the runtime knows (its allow-list, its price table) keep their own
series and spend entry; everything else is counted as ``other``.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    assert set(status["spend"]) <= {"other", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"}
    assert status["spend"]["other"]["requests"] == INVENTED
