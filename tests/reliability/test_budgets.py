"""Local budgets over real sockets: refunds admit waiters, refusals name their field.

The runner's clock is a :class:`ManualClock` that moves only when the test
says so: a waiter that gets in did so because a refund woke it, never because
time ran. Calls are held in flight with the fake upstream's ``x-fake-hold``
gates; what has no event of its own (the limiter's queue) is polled under a
deadline (:func:`until`).

With ``tokensPerMinute: 1000`` (about 16.7 tokens a second) and
``maxQueueWait: 5s`` the refill within the wait is about 83 tokens, so a call
that needs hundreds more only gets in through a refund.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from openai_runtime_sidecar.runner import ManualClock

from .harness import Rig, assert_openai_error, running, until

LIMITS = {
    "requestsPerMinute": None,
    "tokensPerMinute": 1000,
    "maxConcurrency": None,
    "maxQueueWait": "5s",
}


def queued(rig: Rig) -> int:
    return int(rig.sidecar.runner.limiter.snapshot()["queued"])


def tokens_available(rig: Rig) -> float:
    available = rig.sidecar.runner.limiter.snapshot()["tokens_available"]
    assert available is not None
    return available


async def test_a_waiter_gets_the_budget_a_held_call_refunds(tmp_path: Path) -> None:
    async with running(tmp_path, clock=ManualClock(), rateLimits=LIMITS) as rig:
        # max_tokens 900: the estimate pre-charges nearly the whole bucket.
        held = asyncio.create_task(rig.chat("held", headers={"x-fake-hold": "h"}, max_tokens=900))
        await rig.upstream.wait_held("h")
        assert tokens_available(rig) < 100
        waiter = asyncio.create_task(rig.chat("waiter", max_tokens=500))
        await until(lambda: queued(rig) == 1, "the second call queues for tokens")
        assert not waiter.done()
        assert len(rig.upstream.requests) == 1  # it has not reached upstream
        rig.upstream.release("h")
        first = await held
        assert first.status == 200
        # The first call used a few tokens, not 900: the refund lets the waiter in.
        second = await waiter
        assert second.status == 200, second.raw
        assert second.json["choices"][0]["message"]["content"] == "Echo: waiter"
        assert rig.clock.monotonic() == 0  # no time passed: the refund did it
        assert queued(rig) == 0
        assert len(rig.upstream.requests) == 2


async def test_a_waiter_without_a_refund_gets_a_429_naming_the_field(tmp_path: Path) -> None:
    async with running(tmp_path, clock=ManualClock(), rateLimits=LIMITS) as rig:
        held = asyncio.create_task(rig.chat("held", headers={"x-fake-hold": "h"}, max_tokens=900))
        await rig.upstream.wait_held("h")
        sleepers = rig.clock.pending_sleepers
        waiter = asyncio.create_task(rig.chat("waiter", max_tokens=500))
        # Queued, and its timer set: advancing the clock earlier would not reach it.
        await until(
            lambda: queued(rig) == 1 and rig.clock.pending_sleepers > sleepers,
            "the second call queues for tokens with its deadline set",
        )
        rig.clock.advance(5)  # maxQueueWait is up, the held call still holds its estimate
        refused = await waiter
        assert refused.status == 429
        assert_openai_error(refused.json, "local_rate_limited")
        message = refused.json["error"]["message"]
        assert "rateLimits.tokensPerMinute = 1000" in message, message
        assert "rateLimits.maxQueueWait = 5s" in message, message
        assert int(refused.headers["retry-after"]) >= 1
        # A local 429 still invites the SDK to retry: waiting can help.
        assert "x-should-retry" not in refused.headers
        rig.upstream.release("h")
        assert (await held).status == 200
        assert len(rig.upstream.requests) == 1


async def test_a_call_bigger_than_the_bucket_is_refused_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, clock=ManualClock(), rateLimits=LIMITS) as rig:
        refused = await rig.chat("huge", max_tokens=5000)
        assert refused.status == 429
        assert_openai_error(refused.json, "local_rate_limited")
        message = refused.json["error"]["message"]
        assert "rateLimits.tokensPerMinute = 1000" in message, message
        assert "never fit" in message, message
        assert refused.headers["retry-after"] == "60"
        # Waiting cannot help a call that never fits: the SDK must not retry it.
        assert refused.headers["x-should-retry"] == "false"
        assert rig.upstream.requests == []
        assert tokens_available(rig) == 1000  # nothing was charged
        assert (await rig.chat("small", max_tokens=100)).status == 200
