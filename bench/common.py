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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_PY = LITELLM_VENV / "bin" / "python"
CONCURRENCY = (1, 32, 128)
TTFT_CONCURRENCY = (1, 32)
MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
# What the load generators send (wrk.lua, streamgen.py); LiteLLM's master key,
# ignored by the others (the sidecar replaces it with its own key).
CLIENT_KEY = "sk-bench-7f3a9c2e5b1d4f6a8e0c3b5d7f9a1c3e"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "stream": True}
# base64 is what the OpenAI SDK asks for unless the app names another format.
EMBED_BODY = {
    "model": EMBED_MODEL,
    "input": "Say hello in five words.",
    "encoding_format": "base64",
}
RESPONSES_BODY = {"model": MODEL, "input": "Say hello in five words.", "max_output_tokens": 16}


@dataclass(frozen=True)
class Mode:
    """One kind of call the bench makes: where it is sent and what it sends."""

    key: str
    """Its name in results.json and on the command line (``--modes``)."""
    label: str
    """Short, for the printed table."""
    title: str
    """Its section of RESULTS.md."""
    path: str
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True


# Chat's two keys are the ones results.json had before there were other modes.
MODES = {
    mode.key: mode
    for mode in (
        Mode("json", "chat", "Chat, non-streaming", "/v1/chat/completions", BODY),
        Mode(
            "stream",
            "chat-sse",
            "Chat, streaming (SSE, 50 chunks)",
            "/v1/chat/completions",
            STREAM_BODY,
        ),
        Mode(
            "embeddings",
            "embed",
            "Embeddings (one 1536-dimension vector, base64)",
            "/v1/embeddings",
            EMBED_BODY,
        ),
        Mode("responses", "resp", "Responses API, non-streaming", "/v1/responses", RESPONSES_BODY),
        Mode(
            "responses-stream",
            "resp-sse",
            "Responses API, streaming (SSE, 50 text deltas)",
            "/v1/responses",
            {**RESPONSES_BODY, "stream": True},
        ),
    )
}


def mode_of(item: dict[str, Any]) -> str:
    """A measured cell's mode; results.json from before the modes only says ``stream``."""
    return str(item.get("mode") or ("stream" if item["stream"] else "json"))


TARGETS = {
    "direct": "Direct (no proxy, the floor)",
    "bare": "Bare aiohttp pass-through",
    "minimal": "Parse, price, pass through",
    "sidecar": "openai-runtime sidecar",
    "litellm": "LiteLLM proxy",
}


def say(*parts: object) -> None:
    print(*parts, flush=True)
