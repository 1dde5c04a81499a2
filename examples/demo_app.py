"""The demo app: the official OpenAI SDK, configured by nothing but the injection.

It runs in a pod labelled ``infer.atomr.io/runtime: openai`` (examples/demo-app.yaml).
The operator's admission webhook adds the sidecar and sets ``OPENAI_BASE_URL``
(``http://127.0.0.1:8787/v1``) and a placeholder ``OPENAI_API_KEY``; ``openai.OpenAI()``
reads both, so the app holds no URL and no key of its own.

Every few seconds it sends one chat completion and prints one line about it: whether
it succeeded, the HTTP status, the model, the token counts, the cost and the attempts
the sidecar reports in its ``x-openai-runtime-cost-usd`` and
``x-openai-runtime-attempts`` headers. Never the prompt or the reply::

    call=3 result=ok status=200 model=gpt-4o-mini prompt_tokens=14 completion_tokens=9
      total_tokens=23 cost_usd=0.0000051 attempts=1          (one line in the output)
    call=4 result=failed status=429 error=RateLimitError code=local_rate_limited
    call=1 result=unreachable error=APIConnectionError

``unreachable`` means nothing answered on the sidecar's port yet (a native sidecar
starts before the app, but the app does not count on it): the call is retried after
at most a second. SIGTERM or SIGINT let the call in flight finish, print a
``stopped ...`` summary and exit 0.

Settings (environment):

- ``DEMO_INTERVAL``: seconds between calls (default 5).
- ``DEMO_MAX_CALLS``: stop after that many calls and exit 0 only if every one
  succeeded (default 0: run until stopped).
- ``DEMO_MODEL``: the model asked for (default ``gpt-4o-mini``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import openai

COST_HEADER = "x-openai-runtime-cost-usd"
ATTEMPTS_HEADER = "x-openai-runtime-attempts"
PROMPT = "In one short sentence: why do platform teams rotate API keys?"
RETRY_DELAY = 1.0
"""Longest wait before retrying when the sidecar does not answer yet (seconds)."""
REQUIRED_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY")
TICK = 0.2
"""How often a pause between calls checks for SIGTERM (seconds)."""


class Stop:
    """Set by SIGTERM/SIGINT. A plain flag: signal handlers must not take locks."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a stop is requested meanwhile."""
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, TICK))


@dataclass(frozen=True, slots=True)
class Settings:
    interval: float = 5.0
    max_calls: int = 0
    model: str = "gpt-4o-mini"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        interval = float(environ.get("DEMO_INTERVAL", "5"))
        max_calls = int(environ.get("DEMO_MAX_CALLS", "0"))
        if interval < 0 or max_calls < 0:
            raise ValueError("DEMO_INTERVAL and DEMO_MAX_CALLS must not be negative")
        return cls(interval, max_calls, environ.get("DEMO_MODEL", "gpt-4o-mini"))


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # "ok", "failed" or "unreachable"
    line: str


def call_once(client: openai.OpenAI, model: str) -> Outcome:
    """One chat completion through the sidecar, summed up in one line (never its text)."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=64,
        )
        completion = raw.parse()
    except openai.APITimeoutError as exc:
        return Outcome("failed", f"result=failed error={type(exc).__name__}")
    except openai.APIConnectionError as exc:
        return Outcome("unreachable", f"result=unreachable error={type(exc).__name__}")
    except openai.APIStatusError as exc:
        return Outcome(
            "failed",
            f"result=failed status={exc.status_code} error={type(exc).__name__} "
            f"code={exc.code or '-'}",
        )
    except openai.OpenAIError as exc:
        return Outcome("failed", f"result=failed error={type(exc).__name__}")
    usage = completion.usage
    tokens = (
        f"prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens} "
        f"total_tokens={usage.total_tokens}"
        if usage is not None
        else "prompt_tokens=- completion_tokens=- total_tokens=-"
    )
    return Outcome(
        "ok",
        f"result=ok status={raw.status_code} model={completion.model} {tokens} "
        f"cost_usd={raw.headers.get(COST_HEADER, '-')} "
        f"attempts={raw.headers.get(ATTEMPTS_HEADER, '-')}",
    )


def run(client: openai.OpenAI, settings: Settings, stop: Stop) -> int:
    """Call until stopped or ``max_calls`` is reached; the process exit status."""
    counts = {"ok": 0, "failed": 0, "unreachable": 0}
    calls = 0
    while not stop.requested:
        calls += 1
        outcome = call_once(client, settings.model)
        counts[outcome.result] += 1
        print(f"call={calls} {outcome.line}", flush=True)
        if settings.max_calls and calls >= settings.max_calls:
            break
        delay = settings.interval
        if outcome.result == "unreachable":
            delay = min(delay, RETRY_DELAY)
        stop.pause(delay)
    print(
        f"stopped calls={calls} ok={counts['ok']} failed={counts['failed']} "
        f"unreachable={counts['unreachable']}",
        flush=True,
    )
    if settings.max_calls and counts["ok"] != calls:
        return 1
    return 0


def main() -> int:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        print(
            f"{' and '.join(missing)} not set: run this in a pod labelled "
            "infer.atomr.io/runtime=<runtime>, whose sidecar injection sets them",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2

    stop = Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # No base URL and no key here: the SDK reads the injected environment. The
    # sidecar retries upstream, so the SDK does not retry on top of it.
    with openai.OpenAI(max_retries=0, timeout=60.0) as client:
        return run(client, settings, stop)


if __name__ == "__main__":
    sys.exit(main())
