"""Upstream and client faults: each answered as documented while others keep being served.

Every fault runs next to a :class:`SteadyProbe` of good calls that must all
succeed; where the fault can be held open (hangs, stalls, held streams, slow
clients) the probe is made to succeed *while* it is open. The breaker
runs on a :class:`ManualClock`; timeouts are the one place real time passes
(the transport enforces them on the event loop's clock), so they are short.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from openai_runtime_sidecar.runner import ManualClock, UpstreamTimeout

from ..support import unaccepting_port
from .harness import (
    CHAT,
    MODEL,
    Answer,
    Rig,
    SteadyProbe,
    assert_openai_error,
    open_fds,
    running,
    until,
)

# Faults must not trip the breaker here, or the probe would see 503s by design.
NO_BREAKER = {"failureThreshold": 10_000, "openDuration": "30s"}


def assert_local_error(answer: Answer, status: int, code: str, attempts: str | None = None) -> None:
    assert answer.status == status, answer.raw
    assert_openai_error(answer.json, code)
    assert answer.headers["x-should-retry"] == "false"
    if attempts is not None:
        assert answer.headers["x-openai-runtime-attempts"] == attempts


async def quiet(rig: Rig) -> None:
    """Once the app has its answers: nothing pending upstream, no limiter slot taken."""
    await rig.upstream.until(lambda: not rig.upstream.pending(), "upstream requests finished")
    await until(lambda: rig.in_flight == 0, "limiter slots freed")


# -- storms --------------------------------------------------------------------


async def test_a_500_storm_is_retried_then_surfaced_and_others_are_served(tmp_path: Path) -> None:
    async with running(tmp_path, circuitBreaker=NO_BREAKER) as rig, SteadyProbe(rig) as probe:
        storm = [
            rig.chat(f"storm {n}", stream=n % 2 == 0, headers={"x-fake-scenario": "server-error"})
            for n in range(40)
        ]
        answers = await asyncio.gather(*storm, probe.more(10))
        for answer in answers[:-1]:
            assert isinstance(answer, Answer)
            assert answer.status == 500, "upstream's status is kept"
            assert_openai_error(answer.json)
            assert answer.headers["x-should-retry"] == "false"
            assert answer.headers["x-openai-runtime-attempts"] == "3"
        await quiet(rig)
    failed = [r for r in rig.upstream.requests if r.scenario == "server-error"]
    assert len(failed) == 40 * 3
    assert len(rig.clock.sleeps) >= 40 * 2, "backoff between attempts"


async def test_a_429_storm_honours_retry_after_and_surfaces_waits_beyond_the_cap(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, circuitBreaker=NO_BREAKER) as rig, SteadyProbe(rig) as probe:
        recovering = [
            rig.chat(
                f"paced {n}",
                stream=n % 2 == 0,
                headers={
                    "x-fake-scenario": "rate-limit",
                    "x-fake-retry-after": "7",
                    "x-fake-fail-times": "2",
                    "x-fake-sequence": f"paced-{n}",
                },
            )
            for n in range(30)
        ]
        refused = [
            rig.chat(
                f"refused {n}",
                headers={"x-fake-scenario": "rate-limit", "x-fake-retry-after": "1000"},
            )
            for n in range(10)
        ]
        answers = await asyncio.gather(*recovering, *refused)
        await probe.more(5)
        for n, answer in enumerate(answers[:30]):
            assert answer.status == 200 and answer.text == f"Echo: paced {n}"
            assert answer.headers["x-openai-runtime-attempts"] == "3"
        for answer in answers[30:]:
            assert answer.status == 429
            assert answer.headers["retry-after"] == "1000"
            assert_openai_error(answer.json, "rate_limit_exceeded")
        await quiet(rig)
    assert rig.clock.sleeps.count(7.0) == 30 * 2, "each retry waited exactly retry-after"


# -- resets, truncation, garbage ------------------------------------------------


async def test_connection_resets_before_and_during_streams(tmp_path: Path) -> None:
    async with running(tmp_path, circuitBreaker=NO_BREAKER) as rig, SteadyProbe(rig) as probe:
        once = {
            "x-fake-scenario": "reset-before-headers",
            "x-fake-fail-times": "1",
        }
        recovered = await asyncio.gather(
            *(
                rig.chat(f"r{n}", stream=n % 2 == 0, headers=once | {"x-fake-sequence": f"r{n}"})
                for n in range(10)
            )
        )
        always = {"x-fake-scenario": "reset-before-headers"}
        lost = await asyncio.gather(*(rig.chat("lost", headers=always) for _ in range(5)))
        mid = {"x-fake-scenario": "reset-mid-stream"}
        cut = await asyncio.gather(
            *(rig.chat(f"cut {n}", stream=True, headers=mid) for n in range(10))
        )
        halved = await rig.chat("halved", headers=mid)
        await probe.more(5)
        await quiet(rig)

    for n, answer in enumerate(recovered):
        assert answer.status == 200 and answer.text == f"Echo: r{n}"
        assert answer.headers["x-openai-runtime-attempts"] == "2"
    for answer in lost:
        assert_local_error(answer, 502, "upstream_transport_error", attempts="3")
    for answer in cut:
        # Committed after the first event: never retried, ends with an error event.
        assert answer.status == 200 and not answer.done
        assert answer.text and answer.text != "Echo: cut"
        assert_openai_error(answer.stream_error, "upstream_transport_error")
        assert answer.headers["x-openai-runtime-attempts"] == "1"
    assert_local_error(halved, 502, "upstream_transport_error", attempts="3")


async def test_truncated_streams_and_garbage_bodies(tmp_path: Path) -> None:
    async with running(tmp_path, circuitBreaker=NO_BREAKER) as rig, SteadyProbe(rig) as probe:
        truncated = await asyncio.gather(
            *(
                rig.chat("t", stream=True, headers={"x-fake-scenario": "truncated"})
                for _ in range(5)
            )
        )
        garbage = await asyncio.gather(
            *(
                rig.chat("g", stream=n % 2 == 0, headers={"x-fake-scenario": "garbage"})
                for n in range(6)
            )
        )
        html = await rig.chat("h", headers={"x-fake-scenario": "html-502"})
        await probe.more(5)
        await quiet(rig)
    for answer in truncated:
        assert answer.status == 200 and not answer.done
        assert_openai_error(answer.stream_error, "upstream_transport_error")
    for answer in garbage:
        assert_local_error(answer, 502, "upstream_transport_error", attempts="3")
    assert html.status == 502
    assert_openai_error(html.json)


class RawUpstream:
    """An upstream that answers every stream request with fixed bytes as SSE."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self.body)
        await response.write_eof()
        return response

    async def __aenter__(self) -> RawUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


FIRST = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'


@pytest.mark.parametrize(
    "tail",
    [
        b"\xff\xfe\x00\x01garbage\r\r\n\x00data: \xc3(\n\n",
        b"data: {not json}\n\nevent: x\nid: \x00\nretry: 99999999999999999999999\n\n",
        b": comment only\n\n" + b"x" * 70_000 + b"\n\n",
        b"data: [DONE]\n\n\xef\xbb\xbfdata: after done\n\n",
    ],
    ids=["binary", "bad-fields", "long-line", "after-done"],
)
async def test_garbage_in_a_stream_is_forwarded_byte_for_byte(tmp_path: Path, tail: bytes) -> None:
    """The sidecar passes upstream's frames on untouched, whatever they hold."""
    async with (
        RawUpstream(FIRST + tail) as raw,
        running(tmp_path, variant={"direct": {"endpoint": raw.url}}) as rig,
    ):
        answer = await rig.chat("x", stream=True)
        assert answer.status == 200
        assert answer.raw.startswith(FIRST + tail)
        rest = answer.raw[len(FIRST + tail) :]
        if b"data: [DONE]" in tail:
            assert rest == b""
        else:
            assert rest.startswith(b"data: {") and b"upstream_transport_error" in rest
        await until(lambda: rig.in_flight == 0, "limiter slot freed")


async def test_a_stream_cut_mid_line_still_ends_with_a_clean_error_event(tmp_path: Path) -> None:
    """Upstream dies halfway through a line: the SDK must get the sidecar's error event.

    An event cut mid-line is one an SSE client discards at end of stream;
    forwarded as is, the error event written after it would be glued onto
    it and lost (the SDK then fails to parse JSON instead of raising the
    sidecar's error).
    """
    async with (
        RawUpstream(FIRST + b'data: {"id":"c1","choices":[{"del') as raw,
        running(tmp_path, variant={"direct": {"endpoint": raw.url}}) as rig,
    ):
        answer = await rig.chat("x", stream=True)
        assert answer.raw.startswith(FIRST)
        assert answer.raw[len(FIRST) :].startswith(b'data: {"error":')
        assert_openai_error(answer.stream_error, "upstream_transport_error")
        async with openai.AsyncOpenAI(
            base_url=rig.url + "/v1", api_key="unused", max_retries=0
        ) as sdk:
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            )
            with pytest.raises(openai.APIError) as caught:
                async for _ in stream:
                    pass
        assert "upstream stream ended" in str(caught.value)


# -- timeouts -------------------------------------------------------------------

HANG = {"x-fake-scenario": "hang"}


@pytest.mark.parametrize(
    ("phase", "timeouts", "stream", "headers", "committed"),
    [
        ("first_byte", {"firstByte": "500ms"}, True, HANG, False),
        ("total", {"total": "500ms"}, False, HANG, False),
        (
            "stream_idle",
            {"streamIdle": "500ms"},
            True,
            {"x-fake-scenario": "stall-mid-stream", "x-fake-delay": "60"},
            True,
        ),
        ("total", {"total": "500ms", "streamIdle": "30s"}, True, {"x-fake-hold": "never"}, True),
    ],
    ids=["first-byte", "total", "stream-idle", "total-mid-stream"],
)
async def test_hangs_past_each_timeout(
    tmp_path: Path,
    phase: str,
    timeouts: dict[str, str],
    stream: bool,
    headers: dict[str, str],
    committed: bool,
) -> None:
    async with (
        running(
            tmp_path,
            circuitBreaker=NO_BREAKER,
            retry={"maxAttempts": 1},
            timeouts=timeouts,
        ) as rig,
        SteadyProbe(rig) as probe,
    ):
        fault = asyncio.create_task(rig.chat("slow", stream=stream, headers=headers))
        await rig.upstream.until(
            lambda: any(
                r.headers.get("x-fake-scenario") or r.headers.get("x-fake-hold")
                for r in rig.upstream.pending()
            ),
            "the fault reached upstream",
        )
        await probe.more(2)
        assert not fault.done(), "the probe was served while the fault hung"
        answer = await asyncio.wait_for(fault, timeout=10)
        await quiet(rig)
    slow = [r for r in rig.upstream.requests if "slow" in str(r.body)]
    assert [r.outcome for r in slow] == ["cancelled"], "the sidecar hung up on upstream"
    if committed:
        assert answer.status == 200 and not answer.done
        assert_openai_error(answer.stream_error, "upstream_timeout")
    else:
        assert_local_error(answer, 504, "upstream_timeout", attempts="1")
    (info,) = [i for i in rig.calls if i.request_model and i.error is not None]
    assert isinstance(info.error, UpstreamTimeout) and info.error.phase == phase


async def test_connect_timeout_against_a_listener_that_never_accepts(tmp_path: Path) -> None:
    with unaccepting_port() as port:
        async with running(
            tmp_path,
            variant={"direct": {"endpoint": f"http://127.0.0.1:{port}/v1"}},
            retry={"maxAttempts": 1},
            timeouts={"connect": "500ms"},
        ) as rig:
            fault = asyncio.create_task(rig.chat("x"))
            # The sidecar still answers what needs no upstream meanwhile.
            for _ in range(3):
                bad = await rig.send(data=b"{", headers={"Content-Type": "application/json"})
                assert bad.status == 400
                async with rig.http.get(rig.sidecar.admin_url + "/healthz") as health:
                    assert health.status == 200
            assert not fault.done()
            answer = await asyncio.wait_for(fault, timeout=10)
            assert_local_error(answer, 504, "upstream_timeout", attempts="1")
            (info,) = [i for i in rig.calls if i.error is not None]
            assert isinstance(info.error, UpstreamTimeout) and info.error.phase == "connect"


# -- the breaker ------------------------------------------------------------------


async def test_the_breaker_opens_and_recovers_per_policy(tmp_path: Path) -> None:
    clock = ManualClock()  # moves only when told: open_duration passes in one call
    failing = {"x-fake-scenario": "server-error"}
    async with running(
        tmp_path,
        clock=clock,
        retry={"maxAttempts": 1},
        circuitBreaker={"failureThreshold": 3, "openDuration": "30s", "halfOpenProbes": 1},
    ) as rig:
        upstream = rig.upstream
        for _ in range(3):
            assert (await rig.chat("x", headers=failing)).status == 500
        assert (await rig.status())["circuit"]["scopes"][MODEL]["state"] == "open"

        refused = await rig.chat("x")
        assert refused.status == 503 and refused.headers["retry-after"] == "30"
        assert_openai_error(refused.json, "circuit_open")
        assert len(upstream.requests) == 3, "an open circuit spends nothing upstream"

        clock.advance(29.9)
        assert (await rig.chat("x")).status == 503
        clock.advance(0.1)
        assert (await rig.status())["circuit"]["scopes"][MODEL]["state"] == "half_open"
        # A failed probe opens it again for a fresh open_duration.
        assert (await rig.chat("x", headers=failing)).status == 500
        document = await rig.status()
        assert document["circuit"]["scopes"][MODEL]["state"] == "open"
        assert document["circuit"]["scopes"][MODEL]["retry_after"] == 30

        clock.advance(30)
        # One probe at a time: while it is held upstream, others are refused briefly.
        probe = asyncio.create_task(rig.chat("probe", headers={"x-fake-hold": "probe"}))
        await upstream.wait_held("probe")
        busy = await rig.chat("x", stream=True)
        assert busy.status == 503 and busy.headers["retry-after"] == "1"
        assert_openai_error(busy.json, "circuit_open")
        upstream.release("probe")
        assert (await probe).status == 200
        circuit = (await rig.status())["circuit"]
        assert MODEL not in circuit["scopes"], "closed again with nothing counted"
        assert circuit["host"]["state"] == "closed"
        answers = await asyncio.gather(*(rig.chat(f"ok {n}", stream=n % 2 == 0) for n in range(6)))
        assert [a.status for a in answers] == [200] * 6
    assert len(upstream.requests) == 3 + 1 + 1 + 6


# -- clients that misbehave -----------------------------------------------------


async def slow_client(rig: Rig, *, headers_done: bool) -> tuple[Any, Any]:
    host, port = rig.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\n".encode())
    if headers_done:
        writer.write(b'Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"mod')
    await writer.drain()
    return reader, writer


async def test_slow_loris_clients_do_not_starve_others(tmp_path: Path) -> None:
    async with running(tmp_path) as rig, SteadyProbe(rig) as probe:
        await until(lambda: rig.api_connections >= 1, "probe connected")
        baseline = rig.api_connections
        slow = [await slow_client(rig, headers_done=n % 2 == 0) for n in range(20)]
        # Half are still sending headers, half their body.
        more = [b"e" if n % 2 == 0 else b"X-Slow: 1\r\n" for n in range(20)]
        await until(lambda: rig.api_connections >= baseline + 20, "slow clients connected")
        await probe.more(6)
        for (_, writer), extra in zip(slow, more, strict=True):  # a little more: still not done
            writer.write(extra)
            await writer.drain()
        await probe.more(6)
        assert rig.in_flight == 0, "a request still arriving holds no limiter slot"
        assert all("slow" not in str(r.headers) for r in rig.upstream.requests)
        for _, writer in slow:
            writer.close()
        await until(lambda: rig.api_connections <= baseline, "slow clients released")


async def test_a_client_that_stalls_its_body_is_eventually_dropped(tmp_path: Path) -> None:
    async with (
        running(tmp_path, limits={"bodyTimeout": "200ms"}) as rig,
        SteadyProbe(rig) as probe,
    ):
        reader, writer = await slow_client(rig, headers_done=True)
        try:
            # Answered 408 once bodyTimeout passed, then dropped (read() sees EOF).
            answer = await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()
        await probe.more(3)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_clients_leaving_mid_stream_cancel_upstream_and_free_everything(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig, SteadyProbe(rig) as probe:
        await leave_mid_stream(rig, "leave", 20)
        await probe.more(5)
        await rig.upstream.until(
            lambda: sum(r.outcome == "cancelled" for r in rig.upstream.requests) == 20,
            "upstream saw every cancel",
        )
        await quiet(rig)
    held = [r for r in rig.upstream.requests if r.headers.get("x-fake-hold") == "leave"]
    assert len(held) == 20, "a cancelled stream is not retried"


async def leave_mid_stream(rig: Rig, gate: str, n: int) -> None:
    """``n`` apps open a stream, read its first bytes, and drop the connection."""
    async with aiohttp.ClientSession() as session:
        responses = []
        for i in range(n):
            response = await session.post(
                rig.url + CHAT,
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"leave {i}"}],
                    "stream": True,
                },
                headers={"x-fake-hold": gate},
            )
            assert response.status == 200
            assert (await response.content.readany()).startswith(b"data: ")
            responses.append(response)
        await rig.upstream.wait_held(gate, n)
        for response in responses:
            response.close()


# -- nothing leaks ----------------------------------------------------------------


async def one_round_of_faults(rig: Rig, n: int, session: aiohttp.ClientSession) -> None:
    def chat(content: str, scenario: str, stream: bool = False) -> Any:
        headers = {"x-fake-scenario": scenario} if scenario else {}
        return rig.chat(content, stream=stream, headers=headers, session=session)

    results = await asyncio.gather(
        chat("e", "server-error"),
        chat("r", "reset-before-headers"),
        chat("m", "reset-mid-stream", stream=True),
        chat("t", "truncated", stream=True),
        chat("g", "garbage"),
        rig.send(data=b"\xff{", headers={"Content-Type": "application/json"}, session=session),
        chat("ok", "", stream=True),
    )
    assert [a.status for a in results] == [500, 502, 200, 200, 502, 400, 200]
    await leave_mid_stream(rig, f"round-{n}", 2)
    await rig.upstream.until(lambda: not rig.upstream.pending(), "round finished upstream")
    await until(lambda: rig.in_flight == 0, "limiter slots freed")


async def rounds(rig: Rig, numbers: range) -> tuple[int, int]:
    """Run rounds of faults, let every connection of the app close; (open fds, tasks)."""
    async with aiohttp.ClientSession() as session:
        for n in numbers:
            await one_round_of_faults(rig, n, session)
    await until(lambda: rig.api_connections == 0, "app connections closed")
    rig.upstream.requests.clear()  # the test's own records
    rig.calls.clear()
    rig.clock.sleeps.clear()
    rig.upstream._gates.clear()  # one per round, all passed
    gc.collect()
    return open_fds(), len(asyncio.all_tasks())


async def test_repeated_faults_leak_no_sockets_tasks_or_memory(tmp_path: Path) -> None:
    async with running(tmp_path, circuitBreaker=NO_BREAKER, retry={"maxAttempts": 2}) as rig:
        # Warm-up: pools, caches and lazily built objects.
        fds_before, tasks_before = await rounds(rig, range(3))
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            fds_after, tasks_after = await rounds(rig, range(3, 33))
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        # The sidecar's pool to upstream may hold a few more idle connections.
        assert fds_after - fds_before <= 4, (fds_before, fds_after)
        assert rig.upstream.open_connections <= 8
        assert tasks_after <= tasks_before, (tasks_before, tasks_after)
        # About 100 KiB of allocator noise; a leak of 1 KiB per call would be 270.
        assert growth < 256 * 1024, f"{growth} bytes more after 30 rounds of faults"
