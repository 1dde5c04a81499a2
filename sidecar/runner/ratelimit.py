"""Local admission control: requests, tokens and concurrency per minute.

Where it sits in the request flow::

    validate -> [rate limiter] -> circuit breaker -> attempt loop -> upstream

Each call takes one request from the RPM budget, its estimated tokens from
the TPM budget and one concurrency slot before it may reach upstream. The
minute budgets are token buckets (capacity = the per-minute value, refilled
continuously at a sixtieth of it per second). A call that does not fit waits
in a FIFO queue, at most ``max_queue_wait`` seconds, then gets
:class:`~.errors.LocalRateLimited` with a ``retry_after`` estimate. When the
usage is known the TPM charge is corrected (:meth:`RatePermit.settle`).

Estimates are pessimistic (the whole ``max_tokens`` is pre-charged), so much
of a spent TPM bucket is usually on loan to calls still in flight. A caller
short of tokens therefore waits while such pre-charges could come back in
time, and each refund wakes the head of the queue; it is refused before its
deadline only when neither refills nor every outstanding pre-charge could
cover it, and at once when its estimate alone exceeds ``tokensPerMinute``.
Every refusal names the budget and the config field (or upstream header)
that set it.

With ``learn_from_headers`` the limiter also listens to the provider's
``x-ratelimit-remaining-*``: when the organisation's shared budget is spent
(other pods use the same key) it holds admissions until the provider's reset
time instead of letting upstream answer 429.

Refills are waited for with the injected :class:`~.clock.Clock` and freed
slots with futures, so :class:`~.clock.ManualClock` drives it all in tests.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import TypedDict

from .clock import Clock
from .config import RateLimitSettings
from .errors import LocalRateLimited
from .headers import RateLimitHeaders

__all__ = ["RateLimitSnapshot", "RateLimiter", "RatePermit"]

# Float refills land a hair short of whole numbers; without slack a waiter
# woken exactly on time would go back to sleep for a nanosecond.
_EPSILON = 1e-9
# Slots free up whenever calls end, which nothing predicts; this is only a
# polite hint for clients rejected on concurrency.
_CONCURRENCY_RETRY_AFTER = 1.0
# An estimate above tokensPerMinute never fits; only a config change can
# help, so the hint is a whole bucket's refill rather than "soon".
_NEVER_FITS_RETRY_AFTER = 60.0

# What refused a call: the budget the error's ``limit`` reports, and what the
# operator can look at or change (the 429's message names it).
_BUDGETS: dict[str, tuple[str, str]] = {
    "requests": ("requests", "rateLimits.requestsPerMinute"),
    "tokens": ("tokens", "rateLimits.tokensPerMinute"),
    "concurrency": ("concurrency", "rateLimits.maxConcurrency"),
    "provider_requests": ("requests", "upstream's x-ratelimit-remaining-requests"),
    "provider_tokens": ("tokens", "upstream's x-ratelimit-remaining-tokens"),
}


class RateLimitSnapshot(TypedDict):
    """Headroom for ``/status`` and metrics; budgets that are off read None."""

    requests_available: float | None
    tokens_available: float | None
    in_flight: int
    max_concurrency: int | None
    queued: int
    provider_remaining_requests: int | None
    provider_remaining_tokens: int | None
    provider_reset_requests: float | None
    """Seconds until the provider's request budget resets, while known."""
    provider_reset_tokens: float | None
    blocked_until: float | None
    """Wall-clock epoch seconds until which the provider's headers hold admissions."""


class _Bucket:
    """A token bucket; the level may go negative when usage exceeded the charge."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._stamp = now

    def peek(self, now: float) -> float:
        """The level at ``now``, without writing it back (safe from another thread)."""
        level, stamp = self.level, self._stamp
        return min(self.capacity, level + max(0.0, now - stamp) * self.rate)

    def available(self, now: float) -> float:
        if now > self._stamp:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
            self._stamp = now
        return self.level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available, counting refills only."""
        deficit = amount - self.available(now)
        return 0.0 if deficit <= _EPSILON else deficit / self.rate

    def add(self, amount: float, now: float) -> None:
        self.level = min(self.capacity, self.available(now) + amount)


class _Provider:
    """What the provider last said about one shared budget, spent down locally."""

    def __init__(self) -> None:
        self.remaining: int | None = None
        self.reset_at = 0.0

    def wait_for(self, amount: int, now: float) -> float:
        if self.remaining is None or now >= self.reset_at or amount <= self.remaining:
            return 0.0
        return self.reset_at - now

    def observe(self, remaining: int | None, reset: float | None, now: float) -> None:
        # A count without a reset time cannot say how long to hold: ignore it.
        if not isinstance(remaining, int) or remaining < 0 or not isinstance(reset, int | float):
            return
        if math.isfinite(reset) and reset >= 0:
            self.remaining, self.reset_at = remaining, now + reset

    def spend(self, amount: int) -> None:
        # Our own admissions count against the shared budget until the provider
        # reports again; otherwise "3 left" would admit every queued call.
        if self.remaining is not None:
            self.remaining = max(0, self.remaining - amount)

    def known(self, now: float) -> bool:
        return self.remaining is not None and now < self.reset_at


@dataclass(slots=True, eq=False)
class _Waiter:
    tokens: int
    wake: asyncio.Future[None] | None = None


class RateLimiter:
    """Admits calls against RPM, TPM and concurrency budgets, first come first served."""

    def __init__(self, settings: RateLimitSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        now = clock.monotonic()
        rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
        self._requests = _Bucket(rpm, now) if rpm is not None else None
        self._tokens = _Bucket(tpm, now) if tpm is not None else None
        self._in_flight = 0
        self._on_loan = 0
        """TPM pre-charges of unsettled permits: the most settle() could refund."""
        self._queue: deque[_Waiter] = deque()
        self._provider_requests = _Provider()
        self._provider_tokens = _Provider()
        self._rest_until = -math.inf

    def rest(self, seconds: float) -> None:
        """Upstream asked for a pause (a retry-after): calls that can go elsewhere should.

        Only a preference (:attr:`resting`): admission itself is unchanged,
        so a call with nowhere else to go still gets here and its retry
        policy honours the pause.
        """
        self._rest_until = max(self._rest_until, self._clock.monotonic() + seconds)

    @property
    def resting(self) -> bool:
        """Whether the last retry-after of this limiter's upstream still runs."""
        return self._clock.monotonic() < self._rest_until

    async def acquire(self, estimated_tokens: int) -> RatePermit:
        """Wait for room for one call, or raise :class:`LocalRateLimited`.

        An estimate above the whole TPM capacity is refused at once: no refill
        or refund could ever make room for it. Negative estimates count as zero.
        """
        charge = max(0, estimated_tokens)
        if self._tokens is not None and charge > self._tokens.capacity:
            raise self._never_fits(charge)
        if not self._queue and self._blocker(charge) is None:
            return self._admit(estimated_tokens, charge)
        start = self._clock.monotonic()
        deadline = start + self.settings.max_queue_wait
        # Refuse at once when neither refills nor refunds from the calls in
        # flight could cover this call and everyone queued ahead of it in time.
        hopeless = self._hopeless(len(self._queue), charge, self.settings.max_queue_wait)
        if hopeless is not None:
            raise self._reject(*hopeless, 0.0)
        waiter = _Waiter(charge)
        self._queue.append(waiter)
        try:
            while True:
                now = self._clock.monotonic()
                remaining = deadline - now
                if self._queue[0] is not waiter:
                    if remaining <= 0:
                        position = self._queue.index(waiter)
                        raise self._reject(*self._estimate(position, charge), now - start)
                    await self._wait(waiter, remaining)
                    continue
                blocker = self._blocker(charge)
                if blocker is None:
                    self._queue.popleft()
                    return self._admit(estimated_tokens, charge)
                if remaining <= 0:
                    raise self._reject(*blocker, now - start)
                # The same rule as up front: a release without refund (or an
                # extra charge) may have taken the last hope away.
                hopeless = self._hopeless(0, charge, remaining)
                if hopeless is not None:
                    raise self._reject(*hopeless, now - start)
                # Sleep until the refill; a freed slot, a refund or kinder
                # provider headers wake us earlier (see _wake_head).
                wait = blocker[1]
                await self._wait(waiter, min(wait, remaining) if wait > 0 else remaining)
        finally:
            if waiter in self._queue:  # timed out or cancelled: give the place up
                self._queue.remove(waiter)
                self._wake_head()

    def try_acquire(self, estimated_tokens: int) -> RatePermit | None:
        """Room for one call right now, else None: never queues, never waits.

        How a call with somewhere else to go (another backend) asks: a full
        limiter here is a reason to go there, not to wait.
        """
        charge = max(0, estimated_tokens)
        if self._tokens is not None and charge > self._tokens.capacity:
            return None
        if self._queue or self._blocker(charge) is not None:
            return None
        return self._admit(estimated_tokens, charge)

    def observe_headers(self, headers: RateLimitHeaders) -> None:
        """Learn the shared budget from a response's ``x-ratelimit-*`` headers."""
        if not self.settings.learn_from_headers:
            return
        now = self._clock.monotonic()
        self._provider_requests.observe(headers.remaining_requests, headers.reset_requests, now)
        self._provider_tokens.observe(headers.remaining_tokens, headers.reset_tokens, now)
        # The new numbers may be kinder than the old ones.
        self._wake_head()

    def snapshot(self) -> RateLimitSnapshot:
        """The limiter's state now, for ``/status`` and the gauges.

        It only reads (metrics collect from a worker thread): a value may be a
        moment stale, but the loop's own bookkeeping is never written here.
        """
        now = self._clock.monotonic()
        preq, ptok = self._provider_requests, self._provider_tokens
        # A hold concerns the next caller: the head of the queue, or a small newcomer.
        head = next(iter(list(self._queue)), None)
        next_tokens = head.tokens if head is not None else 1
        blocked = max(preq.wait_for(1, now), ptok.wait_for(next_tokens, now))
        return {
            "requests_available": self._requests.peek(now) if self._requests else None,
            "tokens_available": self._tokens.peek(now) if self._tokens else None,
            "in_flight": self._in_flight,
            "max_concurrency": self.settings.max_concurrency,
            "queued": len(self._queue),
            "provider_remaining_requests": preq.remaining if preq.known(now) else None,
            "provider_remaining_tokens": ptok.remaining if ptok.known(now) else None,
            "provider_reset_requests": preq.reset_at - now if preq.known(now) else None,
            "provider_reset_tokens": ptok.reset_at - now if ptok.known(now) else None,
            "blocked_until": self._clock.time() + blocked if blocked > 0 else None,
        }

    # -- called by RatePermit ----------------------------------------------------

    def _settle(self, charged: int, actual_tokens: int | None) -> None:
        if actual_tokens is not None and self._tokens is not None:
            # Refunds stop at capacity; extra usage may leave the bucket in debt.
            self._tokens.add(charged - max(0, actual_tokens), self._clock.monotonic())
        self._free_slot(charged)

    def _free_slot(self, charged: int) -> None:
        # Settled or released, the charge can no longer come back.
        self._on_loan -= charged
        self._in_flight -= 1
        # A refund or a free slot may be what the head of the queue waits for.
        self._wake_head()

    # -- internals ---------------------------------------------------------------

    def _admit(self, estimated_tokens: int, charge: int) -> RatePermit:
        now = self._clock.monotonic()
        if self._requests is not None:
            self._requests.add(-1, now)
        if self._tokens is not None:
            self._tokens.add(-charge, now)
        self._provider_requests.spend(1)
        self._provider_tokens.spend(charge)
        self._in_flight += 1
        self._on_loan += charge
        # Budgets may allow the next in line too.
        self._wake_head()
        return RatePermit(self, estimated_tokens, charge)

    def _blocker(self, charge: int) -> tuple[str, float] | None:
        """What keeps the head of the queue out, and for how long (0 = unknown)."""
        budget, wait = self._estimate(0, charge)
        if budget is not None:
            return budget, wait
        cap = self.settings.max_concurrency
        if cap is not None and self._in_flight >= cap:
            return "concurrency", 0.0
        return None

    def _waits(self, position: int, tokens: int) -> list[tuple[float, str]]:
        """Refill or reset time per budget for a caller at ``position`` (0 = fits now).

        Counts the callers ahead and this one; concurrency is left out since
        nothing predicts when slots free up.
        """
        now = self._clock.monotonic()
        requests = position + 1
        tokens += sum(w.tokens for w in itertools.islice(self._queue, position))
        return [
            (self._requests.wait_for(requests, now) if self._requests else 0.0, "requests"),
            (self._tokens.wait_for(tokens, now) if self._tokens else 0.0, "tokens"),
            (self._provider_requests.wait_for(requests, now), "provider_requests"),
            (self._provider_tokens.wait_for(tokens, now), "provider_tokens"),
        ]

    def _estimate(self, position: int, tokens: int) -> tuple[str | None, float]:
        """The budget that keeps a caller at ``position`` waiting longest, and how long."""
        wait, budget = max(self._waits(position, tokens), key=lambda pair: pair[0])
        return (budget, wait) if wait > 0 else (None, 0.0)

    def _hopeless(self, position: int, tokens: int, within: float) -> tuple[str, float] | None:
        """A budget that cannot admit a caller at ``position`` in ``within`` seconds.

        Refills and provider resets are predictable. Refunds are not, but they
        are bounded: settle() gives back at most the pre-charges on loan, so
        the TPM bucket is hopeless only if even refunding all of them (every
        call in flight using no tokens) would not cover the need in time.
        Returns the longest such wait (the retry-after), or None while there
        is hope.
        """
        hopeless: list[tuple[float, str]] = []
        for wait, budget in self._waits(position, tokens):
            if wait <= within:
                continue
            if budget == "tokens" and self._tokens is not None and self._on_loan > 0:
                need = tokens + sum(w.tokens for w in itertools.islice(self._queue, position))
                now = self._clock.monotonic()
                if self._tokens.wait_for(need - self._on_loan, now) <= within:
                    continue
            hopeless.append((wait, budget))
        if not hopeless:
            return None
        wait, budget = max(hopeless, key=lambda pair: pair[0])
        return budget, wait

    def _describe(self, budget: str) -> str:
        """The budget's config field (or upstream header) and its current value."""
        field = _BUDGETS[budget][1]
        settings = self.settings
        configured = {
            "requests": settings.requests_per_minute,
            "tokens": settings.tokens_per_minute,
            "concurrency": settings.max_concurrency,
        }
        if budget in configured:
            return f"{field} = {configured[budget]}"
        provider = (
            self._provider_requests if budget == "provider_requests" else self._provider_tokens
        )
        left = provider.remaining if provider.known(self._clock.monotonic()) else None
        return f"{field} = {left}" if left is not None else field

    def _reject(self, budget: str | None, wait: float, waited: float) -> LocalRateLimited:
        budget = budget or "concurrency"
        limit = _BUDGETS[budget][0]
        retry_after = wait if wait > 0 else _CONCURRENCY_RETRY_AFTER
        return LocalRateLimited(
            f"local {limit} budget exhausted ({self._describe(budget)}): not admitted after"
            f" {waited:.3f}s in the queue (rateLimits.maxQueueWait = "
            f"{self.settings.max_queue_wait:g}s); retry after {retry_after:.3g}s",
            retry_after=retry_after,
            limit=limit,
        )

    def _never_fits(self, charge: int) -> LocalRateLimited:
        return LocalRateLimited(
            f"local tokens budget too small (rateLimits.tokensPerMinute = "
            f"{self.settings.tokens_per_minute}): this call's estimate of {charge} tokens"
            " (prompt plus max output) can never fit; lower max_tokens or raise"
            " rateLimits.tokensPerMinute",
            retry_after=_NEVER_FITS_RETRY_AFTER,
            limit="tokens",
            fits=False,
        )

    async def _wait(self, waiter: _Waiter, seconds: float) -> None:
        """Until ``seconds`` of clock time pass or someone wakes ``waiter``."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.wake = wake

        def ring(_: object) -> None:
            if not wake.done():
                wake.set_result(None)

        timer = asyncio.create_task(self._clock.sleep(seconds))
        timer.add_done_callback(ring)
        try:
            await wake
        finally:
            waiter.wake = None
            timer.cancel()

    def _wake_head(self) -> None:
        if self._queue:
            wake = self._queue[0].wake
            if wake is not None and not wake.done():
                wake.set_result(None)


class RatePermit:
    """One admitted call; give its slot back exactly once.

    :meth:`settle` (with real usage) or :meth:`release` (error or cancel);
    whichever comes first counts. As a context manager an unsettled permit is
    released on exit, so no path leaks a concurrency slot.
    """

    __slots__ = ("_done", "_limiter", "estimated_tokens", "tokens")

    def __init__(self, limiter: RateLimiter, estimated_tokens: int, tokens: int) -> None:
        self._limiter = limiter
        self._done = False
        self.estimated_tokens = estimated_tokens
        self.tokens = tokens
        """Tokens charged to the TPM budget (the estimate, at least 0)."""

    @property
    def settled(self) -> bool:
        return self._done

    def settle(self, actual_tokens: int | None) -> None:
        """Correct the TPM charge to ``actual_tokens`` (None keeps it) and free the slot."""
        if not self._done:
            self._done = True
            self._limiter._settle(self.tokens, actual_tokens)

    def release(self) -> None:
        """Free the slot, keeping the estimate charged."""
        if not self._done:
            self._done = True
            self._limiter._free_slot(self.tokens)

    def move_to(self, limiter: RateLimiter) -> bool:
        """Carry the call over to ``limiter`` (another backend's) if it has room now.

        The slot here is freed with its estimate kept charged, since the
        attempt that failed here reached upstream; False leaves all as it was.
        """
        if limiter is self._limiter or self._done:
            return True
        moved = limiter.try_acquire(self.estimated_tokens)
        if moved is None:
            return False
        self._limiter._free_slot(self.tokens)
        # The new slot is this permit's now: the one taken for it never frees it.
        moved._done = True
        self._limiter, self.tokens = limiter, moved.tokens
        return True

    def held_by(self, limiter: RateLimiter) -> bool:
        """Whether the call's slot is ``limiter``'s."""
        return self._limiter is limiter

    def __enter__(self) -> RatePermit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
