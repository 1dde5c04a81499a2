"""Latency distributions side by side, from bench/results.json, as bench/latency.png.

Runs in the bench's own environment (matplotlib is not a project dependency):
``.venv-litellm/bin/python bench/plot.py bench/results.json``. One panel per
mode (a row each: chat, chat streamed, embeddings, Responses API, streamed) and
concurrency (a column each); each line is a target's latency by percentile
(wrk's percentiles, log scale), so the floor, the bare proxy, the sidecar and
LiteLLM read side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Run isolated (python -I: the script's folder is not on sys.path), so
# common.MODES cannot be imported; the titles are repeated here.
TITLES = {
    "json": "chat",
    "stream": "chat, streamed (50 SSE chunks)",
    "embeddings": "embeddings (1536 floats, base64)",
    "responses": "Responses API",
    "responses-stream": "Responses API, streamed (50 deltas)",
}
LABELS = {
    "direct": "direct (floor)",
    "bare": "bare pass-through",
    "sidecar": "openai-runtime sidecar",
    "litellm": "LiteLLM",
    "sidecar-ref": "sidecar before (--compare-ref)",
}
COLOURS = {
    "direct": "#555555",
    "bare": "#1f77b4",
    "sidecar": "#2ca02c",
    "litellm": "#d62728",
    "sidecar-ref": "#ff7f0e",
}


def _mode(item: dict[str, Any]) -> str:
    # results.json from before the modes has only "stream" (common.mode_of).
    return str(item.get("mode") or ("stream" if item["stream"] else "json"))


def main(path: Path) -> None:
    results = json.loads(path.read_text())
    concurrency = (1, 32, 128)
    modes = results.get("modes", ["json", "stream"])
    fig, axes = plt.subplots(
        len(modes), 3, figsize=(15, 4.25 * len(modes)), sharey=False, squeeze=False
    )
    for row, mode in enumerate(modes):
        for col, c in enumerate(concurrency):
            ax = axes[row][col]
            for name, data in results["targets"].items():
                cells = [
                    x
                    for x in data["cells"]
                    if _mode(x) == mode and x["concurrency"] == c and x["requests"] > 0
                ]
                if not cells:
                    continue
                points = sorted((float(p), ms) for p, ms in cells[0]["percentiles_ms"].items())
                xs = [p for p, _ in points]
                ys = [max(ms, 0.001) for _, ms in points]
                label = f"{LABELS.get(name, name)} ({cells[0]['rps']:.0f} req/s)"
                style = "--" if name == "sidecar-ref" else "-"
                ax.plot(
                    xs, ys, style, marker="o", markersize=3, label=label, color=COLOURS.get(name)
                )
            ax.set_yscale("log")
            ax.set_title(f"{TITLES.get(mode, mode)}, c={c}")
            ax.set_xlabel("percentile")
            ax.set_ylabel("latency (ms, log)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Latency by percentile, same upstream, same run (lower is better)")
    # Room at the top for the title, the same in inches however many rows there are.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path.parent / "latency.png", dpi=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
