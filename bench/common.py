"""What every part of the bench shares: paths, the request bodies, the target names.

Where it sits in the flow::

    run.py (CLI driver) --> targets.py (processes, /proc) --> loadgen.py (wrk, streamgen)
                        --> report.py (tables, RESULTS.md, PASS/MISS)
        all of them --> common.py (this: constants, TARGETS, say())

``TARGETS`` maps each target to its label; the driver adds to it (``--compare-ref``,
labels saved in results.json) and the report reads it, so it is one shared dict.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_PY = LITELLM_VENV / "bin" / "python"
CONCURRENCY = (1, 32, 128)
TTFT_CONCURRENCY = (1, 32)
MODEL = "gpt-4o-mini"
# What the load generators send (wrk.lua, streamgen.py); LiteLLM's master key,
# ignored by the others (the sidecar replaces it with its own key).
CLIENT_KEY = "sk-bench-7f3a9c2e5b1d4f6a8e0c3b5d7f9a1c3e"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "stream": True}

TARGETS = {
    "direct": "Direct (no proxy, the floor)",
    "bare": "Bare aiohttp pass-through",
    "sidecar": "openai-runtime sidecar",
    "litellm": "LiteLLM proxy",
}


def say(*parts: object) -> None:
    print(*parts, flush=True)
