"""Tests for the local rate limiter (openai_runtime_sidecar.runner.ratelimit).

Time only moves through ManualClock.advance; ``idle()`` lets queued tasks run
(start their clock sleeps, notice a wake-up) without any real waiting.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.clock import ManualClock
from openai_runtime_sidecar.runner.config import RateLimitSettings
from openai_runtime_sidecar.runner.errors import LocalRateLimited
from openai_runtime_sidecar.runner.headers import RateLimitHeaders, parse_rate_limit_headers
from openai_runtime_sidecar.runner.ratelimit import RateLimiter, RatePermit


def make(
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    wait: float = 2.0,
    learn: bool = True,
) -> tuple[RateLimiter, ManualClock]:
    clock = ManualClock()
    limits = RateLimitSettings(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_concurrency=concurrency,
        max_queue_wait=wait,
        learn_from_headers=learn,
    )
    return RateLimiter(limits, clock), clock


async def idle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def queue(limiter: RateLimiter, tokens: int = 0) -> asyncio.Task[RatePermit]:
    return asyncio.create_task(limiter.acquire(tokens))


def admitted(task: asyncio.Task[RatePermit]) -> RatePermit:
    """The permit of a task that must already be done (awaiting could hang the test)."""
    assert task.done()
    return task.result()


async def take(limiter: RateLimiter, tokens: int = 0) -> RatePermit:
    """Acquire, insisting that the limiter answers (admits or refuses) without time passing."""
    task = queue(limiter, tokens)
    await idle()
    return admitted(task)


async def test_admits_within_budgets() -> None:
    limiter, _ = make(rpm=60, tpm=6000, concurrency=4)
    permit = await take(limiter, 100)
    assert permit.tokens == 100
    snap = limiter.snapshot()
    assert snap["requests_available"] == pytest.approx(59)
    assert snap["tokens_available"] == pytest.approx(5900)
    assert snap["in_flight"] == 1
    permit.settle(None)
    assert limiter.snapshot()["in_flight"] == 0


async def test_rpm_exhaustion_waits_for_the_refill() -> None:
    limiter, clock = make(rpm=60, wait=5.0)  # one request per second
    for _ in range(60):
        await take(limiter)
    waiter = queue(limiter)
    await idle()
    assert not waiter.done()
    clock.advance(0.5)
    await idle()
    assert not waiter.done()
    clock.advance(0.5)
    await idle()
    assert waiter.done()
    assert clock.sleeps == [pytest.approx(1.0)]
    assert limiter.snapshot()["queued"] == 0


async def test_rejects_up_front_when_max_queue_wait_cannot_suffice() -> None:
    limiter, clock = make(rpm=60, wait=2.0)
    for _ in range(60):
        await take(limiter)
    first, second = queue(limiter), queue(limiter)
    await idle()
    # A third caller needs three refills (3 s) but may only wait 2 s.
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter)
    assert caught.value.limit == "requests"
    assert caught.value.retry_after == pytest.approx(3.0)
    assert caught.value.http_status() == 429
    clock.advance(2)
    await idle()
    assert first.done()
    assert second.done()


async def test_zero_queue_wait_rejects_at_once() -> None:
    limiter, _ = make(rpm=60, wait=0)
    await take(limiter)
    limiter.snapshot()  # reading does not change anything
    for _ in range(59):
        await take(limiter)
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter)
    assert caught.value.retry_after == pytest.approx(1.0)


async def test_tpm_precharge_and_settle_corrections() -> None:
    limiter, _ = make(tpm=6000)
    permit = await take(limiter, 1000)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(5000)
    permit.settle(400)  # over-estimated: 600 come back
    assert limiter.snapshot()["tokens_available"] == pytest.approx(5600)
    permit.settle(10)  # second settle is a no-op
    assert limiter.snapshot()["tokens_available"] == pytest.approx(5600)

    permit = await take(limiter, 1000)
    permit.settle(1500)  # under-estimated: 500 more are charged
    assert limiter.snapshot()["tokens_available"] == pytest.approx(4100)

    permit = await take(limiter, 1000)
    permit.settle(None)  # usage unknown: the estimate stands
    assert limiter.snapshot()["tokens_available"] == pytest.approx(3100)

    permit = await take(limiter, 1000)
    permit.release()
    permit.settle(0)  # already released: no refund
    assert limiter.snapshot()["tokens_available"] == pytest.approx(2100)
    assert limiter.snapshot()["in_flight"] == 0


async def test_extra_usage_puts_the_bucket_in_debt() -> None:
    limiter, clock = make(tpm=6000, wait=30)  # 100 tokens per second
    permit = await take(limiter, 6000)
    permit.settle(7000)
    assert limiter.snapshot()["tokens_available"] == pytest.approx(-1000)
    waiter = queue(limiter, 500)
    await idle()
    clock.advance(14.9)
    await idle()
    assert not waiter.done()
    clock.advance(0.1)
    await idle()
    assert waiter.done()


async def test_refund_wakes_a_token_waiter_without_time_passing() -> None:
    limiter, clock = make(tpm=6000, wait=20)
    permit = await take(limiter, 6000)
    waiter = queue(limiter, 1000)
    await idle()
    assert not waiter.done()
    permit.settle(1000)
    await idle()
    assert waiter.done()
    assert clock.monotonic() == 0


async def test_an_estimate_above_the_bucket_is_refused_at_once() -> None:
    limiter, clock = make(tpm=6000, wait=60)
    # Even with a full bucket and a minute to wait: it could never fit.
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter, 6001)
    assert caught.value.limit == "tokens"
    assert "rateLimits.tokensPerMinute = 6000" in caught.value.message
    assert "6001 tokens" in caught.value.message and "never fit" in caught.value.message
    assert caught.value.retry_after == pytest.approx(60.0)
    assert clock.sleeps == []
    assert limiter.snapshot()["queued"] == 0
    permit = await take(limiter, 6000)  # exactly the capacity still fits
    assert permit.tokens == 6000 and permit.estimated_tokens == 6000


async def test_a_waiter_is_admitted_by_a_refund_before_max_queue_wait() -> None:
    # 100 tokens a second; 5 s of refill (500) cannot cover 4000, a refund can.
    limiter, clock = make(tpm=6000, wait=5)
    holder = await take(limiter, 5000)
    waiter = queue(limiter, 4000)
    await idle()
    assert not waiter.done()
    assert limiter.snapshot()["queued"] == 1
    clock.advance(2)
    await idle()
    assert not waiter.done()
    holder.settle(300)  # real usage: 4700 of the pre-charge come back
    await idle()
    permit = admitted(waiter)
    assert permit.tokens == 4000
    assert clock.monotonic() == 2
    # 1000 left + 200 refilled + 4700 refunded - 4000 charged
    assert limiter.snapshot()["tokens_available"] == pytest.approx(1900)


async def test_a_refund_waiter_is_refused_at_the_deadline_if_none_comes() -> None:
    limiter, clock = make(tpm=6000, wait=5)
    holder = await take(limiter, 5000)
    waiter = queue(limiter, 4000)
    await idle()
    clock.advance(4.9)
    await idle()
    assert not waiter.done()
    clock.advance(0.1)
    await idle()
    exc = waiter.exception()
    assert isinstance(exc, LocalRateLimited)
    assert exc.limit == "tokens"
    assert "rateLimits.tokensPerMinute = 6000" in exc.message
    assert "5.000s in the queue" in exc.message
    assert "rateLimits.maxQueueWait = 5s" in exc.message
    # 1500 tokens available by now: 2500 more take 25 s of refill.
    assert exc.retry_after == pytest.approx(25.0)
    assert limiter.snapshot()["queued"] == 0
    holder.settle(None)


async def test_refused_up_front_when_even_every_refund_could_not_suffice() -> None:
    limiter, clock = make(tpm=6000, wait=5)
    small = await take(limiter, 1000)  # on loan: at most 1000 can come back
    settled = await take(limiter, 4000)
    settled.settle(None)  # usage unknown: this charge stays
    # 1000 available + 500 refill + 1000 refundable < 3000.
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter, 3000)
    assert caught.value.limit == "tokens"
    assert caught.value.retry_after == pytest.approx(20.0)
    # 2000 could make it if the small call refunds everything: it waits.
    waiter = queue(limiter, 2000)
    await idle()
    assert not waiter.done()
    small.settle(0)
    await idle()
    assert admitted(waiter).tokens == 2000
    assert clock.monotonic() == 0


async def test_a_release_without_refund_ends_the_hope_at_once() -> None:
    limiter, clock = make(tpm=6000, wait=5)
    holder = await take(limiter, 5000)
    waiter = queue(limiter, 4000)
    await idle()
    holder.release()  # failed call: the estimate stays charged, nothing to wait for
    await idle()
    exc = waiter.exception()
    assert isinstance(exc, LocalRateLimited) and exc.limit == "tokens"
    assert exc.retry_after == pytest.approx(30.0)
    assert clock.monotonic() == 0


async def test_refunds_keep_fifo_order() -> None:
    limiter, clock = make(tpm=6000, wait=5)
    holder = await take(limiter, 6000)
    big = queue(limiter, 3000)
    await idle()
    small = queue(limiter, 1000)
    await idle()
    holder.settle(3500)  # 2500 back: enough for the small call, not for the big one
    await idle()
    assert not big.done() and not small.done()  # the small one does not overtake
    assert limiter.snapshot()["queued"] == 2
    clock.advance(5)  # the refill completes the big call's 3000; its turn, then the deadline
    await idle()
    assert admitted(big).tokens == 3000
    exc = small.exception()
    assert isinstance(exc, LocalRateLimited) and exc.limit == "tokens"


@pytest.mark.parametrize(
    ("rpm", "tpm", "concurrency", "field"),
    [
        (1, None, None, "rateLimits.requestsPerMinute = 1"),
        (None, 60, None, "rateLimits.tokensPerMinute = 60"),
        (None, None, 1, "rateLimits.maxConcurrency = 1"),
    ],
)
async def test_each_refusal_names_its_budget_and_field(
    rpm: int | None, tpm: int | None, concurrency: int | None, field: str
) -> None:
    limiter, clock = make(rpm=rpm, tpm=tpm, concurrency=concurrency, wait=1)
    holder = await take(limiter, 60)
    holder.release()  # slot free again, tokens and requests stay spent
    if concurrency is not None:
        await take(limiter, 60)
    waiter = queue(limiter, 60)
    await idle()
    clock.advance(1)
    await idle()
    exc = waiter.exception()
    assert isinstance(exc, LocalRateLimited)
    assert field in exc.message
    assert "rateLimits.maxQueueWait = 1s" in exc.message
    assert exc.http_status() == 429
    assert exc.openai_body()["error"]["message"] == exc.message


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        (
            RateLimitHeaders(remaining_requests=0, reset_requests=60.0),
            "upstream's x-ratelimit-remaining-requests = 0",
        ),
        (
            RateLimitHeaders(remaining_tokens=10, reset_tokens=60.0),
            "upstream's x-ratelimit-remaining-tokens = 10",
        ),
    ],
)
async def test_a_provider_hold_names_the_upstream_header(
    headers: RateLimitHeaders, field: str
) -> None:
    limiter, _ = make(wait=1)
    limiter.observe_headers(headers)
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter, 100)
    assert field in caught.value.message
    assert caught.value.retry_after == pytest.approx(60.0)


async def test_fifo_a_small_call_does_not_overtake_a_big_one() -> None:
    limiter, clock = make(tpm=6000, wait=60)
    await take(limiter, 5000)
    big = queue(limiter, 3000)  # needs 2000 more: 20 s
    await idle()
    small = queue(limiter, 500)  # would fit now, but waits its turn: 25 s
    await idle()
    assert not small.done()
    clock.advance(20)
    await idle()
    assert big.done()
    assert not small.done()
    clock.advance(5)
    await idle()
    assert small.done()


async def test_concurrency_waiters_are_woken_in_fifo_order() -> None:
    limiter, _ = make(concurrency=1, wait=10)
    holder = await take(limiter)
    order: list[str] = []

    async def call(name: str) -> RatePermit:
        permit = await limiter.acquire(0)
        order.append(name)
        return permit

    first = asyncio.create_task(call("first"))
    await idle()
    second = asyncio.create_task(call("second"))
    await idle()
    assert limiter.snapshot()["queued"] == 2
    holder.release()
    await idle()
    assert order == ["first"]
    assert not second.done()
    admitted(first).settle(None)
    await idle()
    assert order == ["first", "second"]
    assert limiter.snapshot()["in_flight"] == 1
    assert limiter.snapshot()["queued"] == 0


async def test_concurrency_wait_times_out() -> None:
    limiter, clock = make(concurrency=1, wait=2)
    await take(limiter)
    waiter = queue(limiter)
    behind = queue(limiter)
    await idle()
    clock.advance(1.9)
    await idle()
    assert not waiter.done()
    clock.advance(0.1)
    await idle()
    for task in (waiter, behind):
        exc = task.exception()
        assert isinstance(exc, LocalRateLimited)
        assert exc.limit == "concurrency"
        assert exc.retry_after == pytest.approx(1.0)
    assert limiter.snapshot()["queued"] == 0
    assert limiter.snapshot()["in_flight"] == 1


async def test_cancelled_waiter_leaves_no_trace() -> None:
    limiter, _ = make(concurrency=1, wait=10)
    holder = await take(limiter)
    cancelled, survivor = queue(limiter), queue(limiter)
    await idle()
    cancelled.cancel()
    await idle()
    assert cancelled.cancelled()
    assert limiter.snapshot()["queued"] == 1
    holder.release()
    await idle()
    permit = admitted(survivor)
    assert limiter.snapshot()["in_flight"] == 1
    permit.release()
    assert limiter.snapshot()["in_flight"] == 0
    # The freed slot really is free.
    again = queue(limiter)
    await idle()
    admitted(again).release()


async def test_cancelled_head_waiting_for_refill_frees_its_place() -> None:
    limiter, clock = make(rpm=60, wait=5)
    for _ in range(60):
        await take(limiter)
    head, behind = queue(limiter), queue(limiter)
    await idle()
    head.cancel()
    await idle()
    assert clock.pending_sleepers == 1  # only the survivor's timer is left
    clock.advance(1)
    await idle()
    assert behind.done()  # took the refill the cancelled head would have had
    assert limiter.snapshot()["requests_available"] == pytest.approx(0)


async def test_provider_out_of_requests_holds_until_reset() -> None:
    limiter, clock = make(rpm=1000, wait=400)
    headers = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    )
    limiter.observe_headers(headers)
    snap = limiter.snapshot()
    assert snap["provider_remaining_requests"] == 0
    assert snap["provider_reset_requests"] == pytest.approx(360)
    assert snap["blocked_until"] == pytest.approx(clock.time() + 360)
    waiter = queue(limiter)
    await idle()
    clock.advance(359.9)
    await idle()
    assert not waiter.done()
    clock.advance(0.1)
    await idle()
    assert waiter.done()
    assert limiter.snapshot()["blocked_until"] is None


async def test_provider_block_longer_than_queue_wait_rejects_at_once() -> None:
    limiter, _ = make(wait=2)
    limiter.observe_headers(RateLimitHeaders(remaining_requests=0, reset_requests=360.0))
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter)
    assert caught.value.limit == "requests"
    assert caught.value.retry_after == pytest.approx(360)


async def test_provider_tokens_below_the_estimate_hold_that_caller() -> None:
    limiter, clock = make(tpm=100_000, wait=2)
    limiter.observe_headers(RateLimitHeaders(remaining_tokens=500, reset_tokens=10.0))
    await take(limiter, 400)  # fits, and spends the shared budget locally
    with pytest.raises(LocalRateLimited) as caught:
        await take(limiter, 200)
    assert caught.value.limit == "tokens"
    assert caught.value.retry_after == pytest.approx(10)
    await take(limiter, 100)  # a smaller call still fits
    clock.advance(10)
    await take(limiter, 5000)  # the provider's budget has reset


@pytest.mark.parametrize(
    "headers",
    [
        RateLimitHeaders(),
        parse_rate_limit_headers(
            {"x-ratelimit-remaining-requests": "none", "x-ratelimit-reset-requests": "soon"}
        ),
        RateLimitHeaders(remaining_requests=0),  # no reset: for how long?
        RateLimitHeaders(remaining_requests=0, reset_requests=math.nan),
        RateLimitHeaders(remaining_requests=-1, reset_requests=5.0),
        RateLimitHeaders(remaining_tokens=0, reset_tokens=-3.0),
    ],
)
async def test_garbage_headers_change_nothing(headers: RateLimitHeaders) -> None:
    limiter, _ = make(wait=0)
    before = limiter.snapshot()
    limiter.observe_headers(headers)
    assert limiter.snapshot() == before
    await take(limiter, 100)


async def test_headers_ignored_unless_learning() -> None:
    limiter, _ = make(wait=0, learn=False)
    limiter.observe_headers(RateLimitHeaders(remaining_requests=0, reset_requests=60.0))
    assert limiter.snapshot()["blocked_until"] is None
    await take(limiter)


async def test_none_budgets_are_unlimited() -> None:
    limiter, _ = make(wait=0)
    permits = [await take(limiter, 10**9) for _ in range(2000)]
    snap = limiter.snapshot()
    assert snap["requests_available"] is None
    assert snap["tokens_available"] is None
    assert snap["max_concurrency"] is None
    assert snap["in_flight"] == 2000
    for permit in permits:
        permit.settle(5)
    assert limiter.snapshot()["in_flight"] == 0


async def test_snapshot_contents() -> None:
    limiter, clock = make(rpm=120, tpm=6000, concurrency=2, wait=30)
    assert limiter.snapshot() == {
        "requests_available": 120.0,
        "tokens_available": 6000.0,
        "in_flight": 0,
        "max_concurrency": 2,
        "queued": 0,
        "provider_remaining_requests": None,
        "provider_remaining_tokens": None,
        "provider_reset_requests": None,
        "provider_reset_tokens": None,
        "blocked_until": None,
    }
    with await take(limiter, 1000):
        await take(limiter, 1000)
        waiter = queue(limiter, 1000)
        await idle()
        limiter.observe_headers(
            RateLimitHeaders(
                remaining_requests=50, remaining_tokens=800, reset_requests=1.0, reset_tokens=4.0
            )
        )
        snap: dict[str, Any] = dict(limiter.snapshot())
        assert snap["in_flight"] == 2
        assert snap["queued"] == 1
        assert snap["requests_available"] == pytest.approx(118)
        assert snap["tokens_available"] == pytest.approx(4000)
        assert snap["provider_remaining_requests"] == 50
        assert snap["provider_remaining_tokens"] == 800
        assert snap["provider_reset_tokens"] == pytest.approx(4.0)
        # The queued caller wants 1000 tokens, more than the provider's 800.
        assert snap["blocked_until"] == pytest.approx(clock.time() + 4.0)
    await idle()
    clock.advance(4)
    await idle()
    assert waiter.done()
    assert limiter.snapshot()["provider_remaining_tokens"] is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=20, allow_nan=False),
            st.integers(min_value=0, max_value=15),
            st.integers(min_value=0, max_value=2500),
        ),
        max_size=40,
    )
)
def test_no_window_admits_more_than_the_buckets_allow(
    steps: list[tuple[float, int, int]],
) -> None:
    rpm, tpm = 10, 3000
    admitted: list[tuple[float, int]] = []
    hints: list[float | None] = []

    async def run() -> None:
        limiter, clock = make(rpm=rpm, tpm=tpm, wait=0)
        for dt, calls, tokens in steps:
            clock.advance(dt)
            for _ in range(calls):
                try:
                    permit = await limiter.acquire(tokens)
                except LocalRateLimited as exc:
                    hints.append(exc.retry_after)
                    continue
                admitted.append((clock.monotonic(), permit.tokens))
                permit.settle(None)

    asyncio.run(run())
    assert all(hint is not None and hint > 0 for hint in hints)
    for start, _ in admitted:
        for span in (0.0, 1.0, 30.0, 60.0):
            window = [t for when, t in admitted if start <= when <= start + span]
            assert len(window) <= rpm + rpm / 60 * span + 1e-6
            assert sum(window) <= tpm + tpm / 60 * span + 1e-6


async def test_try_acquire_admits_only_what_fits_now_and_never_queues() -> None:
    limiter, _ = make(concurrency=1, tpm=100)
    permit = limiter.try_acquire(10)
    assert permit is not None
    assert limiter.try_acquire(10) is None  # the one slot is taken: no wait, no queue
    assert limiter.snapshot()["queued"] == 0
    permit.release()
    assert limiter.try_acquire(101) is None  # never fits
    held = limiter.try_acquire(85)  # the released 10 stay charged: 90 left
    assert held is not None
    held.release()
    assert limiter.try_acquire(10) is None  # 5 left


async def test_try_acquire_respects_a_spent_provider_budget() -> None:
    limiter, clock = make()
    limiter.observe_headers(RateLimitHeaders(remaining_requests=0, reset_requests=20.0))
    assert limiter.try_acquire(1) is None
    clock.advance(20.0)
    assert limiter.try_acquire(1) is not None


async def test_a_permit_moves_to_another_limiter_only_if_it_has_room() -> None:
    here, _ = make(concurrency=1, tpm=1000)
    there, _ = make(concurrency=1, tpm=1000)
    permit = await here.acquire(100)
    blocker = there.try_acquire(1)
    assert blocker is not None
    assert not permit.move_to(there)  # full: the call stays where it was
    assert permit.held_by(here) and here.snapshot()["in_flight"] == 1
    blocker.release()
    assert permit.move_to(there)
    assert permit.held_by(there)
    assert here.snapshot()["in_flight"] == 0 and there.snapshot()["in_flight"] == 1
    assert here.snapshot()["tokens_available"] == pytest.approx(900)  # the attempt reached it
    permit.settle(40)
    assert there.snapshot()["in_flight"] == 0
    assert there.snapshot()["tokens_available"] == pytest.approx(1000 - 1 - 40)
    assert permit.move_to(here)  # settled: nothing left to carry
    assert here.snapshot()["in_flight"] == 0


async def test_a_rest_is_a_preference_that_runs_out_and_never_blocks() -> None:
    limiter, clock = make(concurrency=1)
    assert not limiter.resting
    limiter.rest(20.0)
    limiter.rest(5.0)  # a shorter pause does not cut the longer one short
    assert limiter.resting
    permit = limiter.try_acquire(1)  # admission is unchanged
    assert permit is not None
    permit.release()
    clock.advance(20.0)
    assert not limiter.resting
