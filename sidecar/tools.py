"""Small command-line tools around the runner: one chat call, the price table.

``openai-runtime chat`` is the quickest way to check a runtime config against
its upstream without a cluster; ``openai-runtime pricing`` shows what the
runner will charge per model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from .configfile import ConfigError, describe_validation_error, load_document
from .runner import CredentialStore, OpenAiConfig, OpenAiRunner, PricingTable, RunnerError
from .runner.modeling import ValidationError

__all__ = ["chat_main", "pricing_main"]


async def _chat(config: OpenAiConfig, model: str, message: str, stream: bool) -> int:
    store = CredentialStore(config.api_key)
    store.load()
    runner = OpenAiRunner(config, store)
    body = {"model": model, "messages": [{"role": "user", "content": message}]}
    try:
        if stream:
            handle = await runner.stream(body)
            async for data in handle:
                sys.stdout.write(data.decode("utf-8", "replace"))
            info = handle.outcome
        else:
            result = await runner.chat(body)
            json.dump(result.payload, sys.stdout, indent=2)
            sys.stdout.write("\n")
            info = result.outcome
    except RunnerError as err:
        print(f"error: {err.kind} (HTTP {err.http_status()}): {err.message}", file=sys.stderr)
        return 1
    finally:
        await runner.aclose()
    assert info is not None  # an ended stream, or a finished call, has its outcome
    usage = info.usage
    cost = info.cost
    tokens = f"{usage.prompt_tokens}+{usage.completion_tokens}" if usage else "?"
    print(
        f"model={info.response_model} attempts={info.attempts} tokens={tokens} "
        f"cost_usd={cost.usd if cost else 0:.6f} request_id={info.request_id}",
        file=sys.stderr,
    )
    return 0


def chat_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="openai-runtime chat")
    parser.add_argument("--config", required=True, help="runner config (JSON or YAML)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--stream", action="store_true", help="stream the reply (SSE)")
    parser.add_argument("message", help="the user message to send")
    args = parser.parse_args(argv)
    try:
        config = OpenAiConfig.model_validate(load_document(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(describe_validation_error(exc, args.config), file=sys.stderr)
        return 2
    try:
        return asyncio.run(_chat(config, args.model, args.message, args.stream))
    except RunnerError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1


def pricing_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="openai-runtime pricing")
    parser.add_argument("--model", help="price one call of this model instead of listing")
    parser.add_argument("--prompt", type=int, default=0, help="prompt tokens")
    parser.add_argument("--cached", type=int, default=0, help="cached prompt tokens")
    parser.add_argument("--completion", type=int, default=0, help="completion tokens")
    args = parser.parse_args(argv)
    table = PricingTable.published()
    if args.model:
        cost = table.cost(
            model=args.model,
            prompt_tokens=args.prompt,
            cached_tokens=args.cached,
            completion_tokens=args.completion,
        )
        if not cost.priced:
            print(f"error: no price for model {args.model!r}", file=sys.stderr)
            return 1
        print(f"{cost.model}: {cost.usd:.6f} USD")
        return 0
    # The date says how old each list price is (when it was read from its
    # source), so a stale one can be spotted and checked again.
    print(
        f"{'model':24} {'input':>8} {'cached':>8} {'output':>8}  {'as of':10}   (USD per 1M tokens)"
    )
    for entry in table.entries():
        price, listed = entry.price, entry.listed
        cached = price.cached_input_per_mtok_usd
        line = (
            f"{entry.model:24} {price.input_per_mtok_usd:8.3f} "
            f"{'-' if cached is None else f'{cached:.3f}':>8} {price.output_per_mtok_usd:8.3f}  "
            f"{'override' if listed is None else listed.as_of.isoformat():10}"
        )
        if listed is not None and listed.long_context is not None:
            surcharge = listed.long_context
            line += (
                f"   prompts over {surcharge.above_prompt_tokens:,} tokens: "
                f"input x{surcharge.input_multiplier:g}, output x{surcharge.output_multiplier:g}"
            )
        print(line)
    return 0
