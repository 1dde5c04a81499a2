"""``make demo``: an app, the sidecar and a key rotation on this machine, no cluster needed.

It starts the fake upstream on loopback, keeps the API key in a directory
written the way kubelet writes Secret volumes, starts a real sidecar in front
of it, and plays the app: the official OpenAI SDK pointed at the sidecar
(``base_url=.../v1``, a placeholder key). It makes a non-streamed and a
streamed call and, while the stream runs, rotates the key the kubelet way:
the stream finishes with the old key, the next call uses the new one, no
request fails. With ``OPENAI_API_KEY`` set the sidecar talks to the real API
instead (and nothing is rotated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..app import Sidecar
from ..config import SidecarConfig
from .secretvolume import SecretVolume
from .upstream import FakeUpstream

__all__ = ["main"]

MESSAGES: list[Any] = [
    {"role": "user", "content": "Explain in one line why API keys should rotate."}
]


def _cost(raw: Any) -> str:
    return str(raw.headers.get("x-openai-runtime-cost-usd", "?"))


async def _wait_for_fingerprint(sidecar: Sidecar, old: str) -> str:
    """The sidecar's watcher notices the swap on its own; show when it has."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        current = sidecar.credentials.current
        if current is not None and current.fingerprint != old:
            return current.fingerprint
        await asyncio.sleep(0.02)
    return old


async def _play_app(sidecar: Sidecar, model: str, volume: SecretVolume | None) -> int:
    import openai  # the app's SDK, unchanged; only the demo needs it

    failures = 0
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="placeholder-the-sidecar-adds-the-key"
    ) as app:
        try:
            raw = await app.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES
            )
            reply = raw.parse()
            usage = reply.usage
            print(f"reply:         {reply.choices[0].message.content}")
            print(
                f"non-streamed:  model={reply.model} tokens="
                f"{usage.prompt_tokens if usage else '?'} in / "
                f"{usage.completion_tokens if usage else '?'} out  cost=${_cost(raw)}"
            )
        except openai.APIError as exc:
            failures += 1
            print(f"non-streamed call failed: {exc}", file=sys.stderr)

        before = sidecar.credentials.require().fingerprint
        after = before
        try:
            stream = await app.chat.completions.create(
                model=model,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage_line = "", ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta is not None:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage is not None:
                    usage_line = (
                        f"{chunk.usage.prompt_tokens} in / {chunk.usage.completion_tokens} out"
                    )
                if volume is not None and after == before:
                    volume.write("sk-demo-new-key")  # kubelet's atomic ..data swap
                    after = await _wait_for_fingerprint(sidecar, before)
                    print(f"rotated:       key {before} -> {after} while the stream was running")
            print(f"streamed:      {text!r} tokens={usage_line}")
        except openai.APIError as exc:
            failures += 1
            print(f"streamed call failed: {exc}", file=sys.stderr)

        if volume is not None:
            try:
                raw = await app.chat.completions.with_raw_response.create(
                    model=model, messages=MESSAGES
                )
                print(f"after rotation: cost=${_cost(raw)} (served with the new key)")
            except openai.APIError as exc:
                failures += 1
                print(f"call after rotation failed: {exc}", file=sys.stderr)
    return failures


async def _run(model: str, real: bool) -> int:
    upstream: FakeUpstream | None = None
    volume: SecretVolume | None = None
    with tempfile.TemporaryDirectory(prefix="openai-runtime-demo-") as tmp:
        spec: dict[str, Any] = {
            "runtime": {"namespace": "demo", "name": "local"},
            "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "watch": {"interval": "100ms", "shutdownGrace": "5s"},
        }
        if real:
            spec["variant"] = {"direct": {}}
            spec["apiKey"] = {"env": "OPENAI_API_KEY"}
        else:
            upstream = FakeUpstream(
                keys={"sk-demo-old-key", "sk-demo-new-key"}, chunks=8, chunk_delay=0.05
            )
            await upstream.start()
            volume = SecretVolume(Path(tmp) / "secret")
            volume.write("sk-demo-old-key")
            spec["variant"] = {"direct": {"endpoint": upstream.url + "/v1"}}
            spec["apiKey"] = {"file": str(volume.path)}
        sidecar = Sidecar(SidecarConfig.model_validate(spec))
        await sidecar.start()
        where = (
            "api.openai.com" if real else f"the fake upstream at {upstream.url if upstream else ''}"
        )
        print(f"sidecar:       {sidecar.api_url}/v1 -> {where}")
        try:
            failures = await _play_app(sidecar, model, volume)
            if upstream is not None:
                seen = [r.key_fingerprint for r in upstream.requests]
                print(f"upstream saw:  {seen}")
            spend = {m: t.as_dict()["usd"] for m, t in sidecar.spend.items()}
            print(f"spend so far:  {json.dumps(spend)} USD")
            print(f"failed requests: {failures}")
            print(
                f"metrics:       {sidecar.admin_url}/metrics   status: {sidecar.admin_url}/status"
                "   (while running; in a pod: port 9464)"
            )
        finally:
            await sidecar.stop()
            if upstream is not None:
                await upstream.stop()
    return 1 if failures else 0


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="openai-runtime demo")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args(list(argv))
    # The demo prints its own story; the sidecar's JSON request log would interleave.
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(_run(args.model, real=bool(os.environ.get("OPENAI_API_KEY"))))
