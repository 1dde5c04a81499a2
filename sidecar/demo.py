"""``make demo``: the runner end to end on this machine, no cluster, no key needed.

Starts the fake upstream on loopback, keeps the API key in a Secret-style
volume, makes a non-streamed and a streamed call, and rotates the key the way
kubelet does while the stream is running: the stream finishes with the old
key, the next call uses the new one, nothing fails. With ``OPENAI_API_KEY``
set it makes the same two calls against the real API instead (no rotation).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence

from .fakeupstream import FakeUpstream
from .runner import CallInfo, CredentialStore, OpenAiConfig, OpenAiRunner, RunnerError, SecretRef
from .secretvolume import SecretVolume

__all__ = ["main"]

MESSAGES = [{"role": "user", "content": "Explain in one line why keys should rotate."}]


def _line(label: str, info: CallInfo) -> str:
    usage = info.usage
    cost = info.cost
    tokens = f"{usage.prompt_tokens} in / {usage.completion_tokens} out" if usage else "?"
    return (
        f"  {label:<22} model={info.response_model} tokens={tokens} "
        f"cost=${cost.usd if cost else 0:.8f} key={info.credential_fingerprint} "
        f"attempts={info.attempts}"
    )


async def _real(model: str) -> int:
    config = OpenAiConfig.defaults_for_openai(SecretRef(env="OPENAI_API_KEY"))
    store = CredentialStore(config.api_key)
    store.load()
    runner = OpenAiRunner(config, store)
    try:
        result = await runner.chat({"model": model, "messages": MESSAGES})
        print(result.payload["choices"][0]["message"]["content"])
        print(_line("non-streamed", result.info))
        stream = await runner.stream({"model": model, "messages": MESSAGES})
        async for _ in stream:
            pass
        print(_line("streamed", stream.info))
    except RunnerError as err:
        print(f"call failed: {err.kind}: {err.message}", file=sys.stderr)
        return 1
    finally:
        await runner.aclose()
    return 0


async def _local(model: str) -> int:
    old_key, new_key = "sk-demo-old-key", "sk-demo-new-key"
    upstream = FakeUpstream(keys={old_key, new_key}, chunks=8, chunk_delay=0.05)
    url = await upstream.start()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="openai-runtime-demo-") as tmp:
        volume = SecretVolume(tmp)
        volume.write(old_key)
        config = OpenAiConfig.model_validate(
            {"variant": {"direct": {"endpoint": url + "/v1"}}, "apiKey": {"file": str(volume.path)}}
        )
        store = CredentialStore(config.api_key)
        store.load()
        runner = OpenAiRunner(config, store)
        print(f"fake upstream on {url}; key file {volume.path}")
        try:
            result = await runner.chat({"model": model, "messages": MESSAGES})
            print("reply:", result.payload["choices"][0]["message"]["content"])
            print(_line("non-streamed", result.info))

            stream = await runner.stream({"model": model, "messages": MESSAGES})
            before = store.require().fingerprint
            chunks = 0
            async for _ in stream:
                chunks += 1
                if chunks == 1:
                    volume.write(new_key)  # kubelet's atomic ..data swap
                    outcome = store.reload()
                    after = outcome.snapshot.fingerprint if outcome.snapshot else "?"
                    print(f"  rotated key mid-stream: {before} -> {after}")
                    fresh = await runner.chat({"model": model, "messages": MESSAGES})
                    print(_line("call after rotation", fresh.info))
            print(_line("stream (began before)", stream.info))
        except RunnerError as err:
            failures += 1
            print(f"call failed: {err.kind}: {err.message}", file=sys.stderr)
        finally:
            await runner.aclose()
            await upstream.stop()
    seen = [r.key_fingerprint for r in upstream.requests]
    print(f"upstream saw keys in order: {seen}")
    print(f"failed requests: {failures}")
    return 1 if failures else 0


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="openai-runtime demo")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args(list(argv))
    if os.environ.get("OPENAI_API_KEY"):
        return asyncio.run(_real(args.model))
    return asyncio.run(_local(args.model))
