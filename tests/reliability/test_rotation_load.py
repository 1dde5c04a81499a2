"""Key rotation under load: ~300 calls and streams in flight, ten swaps, nothing fails.

The workers mix chat, embeddings and the Responses API, streamed and not.

The smaller version (60 SDK workers, five kubelet swaps) lives in
tests/sidecar/test_rotation.py. This one alternates the kubelet way (a new
``..data`` directory renamed over the old link) with a plain in-place
rewrite of the key file, and swaps both ways (old -> new and new -> old)
with each method.

Definitions used below, all on ``time.monotonic()``:

- a swap is *effective* when the sidecar's credential store replaced its
  snapshot (observed through the store's own reload listener);
- a swap is *settled* when the sidecar's ``/status`` has answered with the
  new fingerprint (always after it is effective);
- a call *began* when the app sent it; upstream records when the request
  reached it and which key (fingerprint) it carried.

Claims: no call fails; every call that began after a swap settled and
reached upstream before the next swap became effective carried that swap's
key; any call carried either the key current when it began or one that
became effective before it reached upstream; streams held open across a
swap finish, unretried, with the key they started with.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import aiohttp

from openai_runtime_sidecar.runner.credentials import ReloadOutcome, fingerprint
from tests.support import NEW_KEY, OLD_KEY, SecretVolume

from .harness import NEW_FP, OLD_FP, Answer, Rig, running

# At every swap about 300 calls are open: the workers' (each always has one
# open), the long-held ones and the swap's own held streams.
WORKERS = 60  # call after call, streamed and not, until the last swap
LONG_HELD = 230  # half streams, half not: opened before the first swap, held across all ten
HELD_PER_SWAP = 2  # streams opened just before one swap, released after it settled
AFTER_SETTLE = 20  # calls begun after each settle that must reach upstream before the next swap


KINDS = ("chat", "chat", "embeddings", "responses", "responses", "chat")


async def other_call(
    rig: Rig,
    kind: str,
    request_id: str,
    stream: bool,
    headers: dict[str, str],
    session: aiohttp.ClientSession,
) -> Answer:
    """An embeddings or Responses API call, as the SDK would send it."""
    if kind == "embeddings":
        path, body = "/v1/embeddings", {"model": "text-embedding-3-small", "input": request_id}
    else:
        path = "/v1/responses"
        body = {"model": "gpt-4o-mini", "input": request_id, "stream": stream}
    sent = {"Content-Type": "application/json", **headers}
    return await rig.send(path=path, data=json.dumps(body).encode(), headers=sent, session=session)


def answered(kind: str, answer: Answer, request_id: str) -> bool:
    """The answer is the whole, right one for its kind."""
    if kind == "chat":
        return answer.text == f"Echo: {request_id}"
    if kind == "embeddings":
        return len(answer.json["data"]) == 1
    if answer.streamed:
        return any(
            isinstance(e, dict) and e.get("type") == "response.completed" for e in answer.events
        )
    return answer.json["status"] == "completed"


def kubelet_swap(volume: SecretVolume, key: str, n: int) -> None:
    volume.write(key)


def plain_rewrite(volume: SecretVolume, key: str, n: int) -> None:
    # In place, through the symlinks: same inode. Trailing newlines (stripped
    # by the sidecar) give each rewrite its own size, so the change never
    # hinges on the filesystem's mtime resolution.
    volume.path.write_text(key + "\n" * (2 + n), encoding="utf-8")


# Each method swaps in both directions: keys alternate NEW, OLD, NEW, ...
SWAPS = [
    (kubelet_swap, NEW_KEY),
    (plain_rewrite, OLD_KEY),
    (plain_rewrite, NEW_KEY),
    (kubelet_swap, OLD_KEY),
    (kubelet_swap, NEW_KEY),
    (plain_rewrite, OLD_KEY),
    (plain_rewrite, NEW_KEY),
    (kubelet_swap, OLD_KEY),
    (kubelet_swap, NEW_KEY),
    (plain_rewrite, OLD_KEY),
]


async def test_ten_swaps_under_three_hundred_concurrent_calls(tmp_path: Path) -> None:
    async with running(tmp_path, chunks=2) as rig:
        await _rotate_under_load(rig)


async def _rotate_under_load(rig: Rig) -> None:
    upstream, sidecar = rig.upstream, rig.sidecar
    sent_at: dict[str, float] = {}  # x-client-request-id -> when the app sent it
    failures: list[str] = []
    completed = 0
    stop = asyncio.Event()
    ids = itertools.count()

    # When each fingerprint became effective in the store, in order.
    effective: list[tuple[float, str]] = [(0.0, OLD_FP)]
    swapped = asyncio.Event()

    def on_reload(outcome: ReloadOutcome) -> None:
        if outcome.changed and outcome.snapshot is not None:
            effective.append((time.monotonic(), outcome.snapshot.fingerprint))
            swapped.set()

    sidecar.credentials.subscribe(on_reload)

    open_calls = 0

    async def call(
        session: aiohttp.ClientSession,
        name: str,
        stream: bool,
        gate: str = "",
        kind: str = "chat",
    ) -> None:
        nonlocal completed, open_calls
        open_calls += 1
        try:
            await _call(session, name, stream, gate, kind)
        finally:
            open_calls -= 1

    async def _call(
        session: aiohttp.ClientSession, name: str, stream: bool, gate: str, kind: str
    ) -> None:
        nonlocal completed
        request_id = f"{name}-{next(ids)}"
        headers = {"x-client-request-id": request_id}
        if gate:
            headers["x-fake-hold"] = gate
        sent_at[request_id] = time.monotonic()
        try:
            if kind == "chat":
                answer = await rig.chat(request_id, stream=stream, headers=headers, session=session)
            else:
                answer = await other_call(rig, kind, request_id, stream, headers, session)
        except Exception as exc:  # every failure is a test failure, collected
            failures.append(f"{request_id}: {exc!r}")
            return
        if answer.status != 200 or not answered(kind, answer, request_id):
            failures.append(f"{request_id}: {answer.status} {answer.raw[:200]!r}")
        elif stream and kind == "chat" and (not answer.done or answer.stream_error is not None):
            failures.append(f"{request_id}: stream ended badly")
        else:
            completed += 1

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        calls = 0
        while calls < 1 or not stop.is_set():
            calls += 1
            # Chat, embeddings and the Responses API, streamed and not, all on one path.
            kind = KINDS[(n + calls) % len(KINDS)]
            await call(session, f"w{n}", stream=(n + calls) % 2 == 0, kind=kind)

    def began_after(moment: float) -> int:
        return sum(
            1
            for r in upstream.requests
            if sent_at.get(r.headers.get("x-client-request-id", ""), 0.0) > moment
        )

    # (index, fingerprint before, fingerprint after, effective at, settled at, held streams)
    swaps: list[tuple[int, str, str, float, float, list[str]]] = []
    held_tasks: list[asyncio.Task[None]] = []
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) for _ in range(4)]
    try:
        tasks = [
            asyncio.create_task(worker(sessions[n % len(sessions)], n)) for n in range(WORKERS)
        ]
        long_held = [
            asyncio.create_task(call(rig.http, "long", stream=n % 2 == 0, gate="long"))
            for n in range(LONG_HELD)
        ]
        await asyncio.wait_for(upstream.wait_held("long", LONG_HELD), timeout=20)
        await upstream.until(lambda: len(upstream.requests) >= WORKERS, "load is on")
        current = OLD_FP
        for index, (method, key) in enumerate(SWAPS):
            expected = fingerprint(key)
            # Streams that start with the current key and stay open across the swap.
            gate = f"swap-{index}"
            held_ids_before = set(sent_at)
            held_tasks += [
                asyncio.create_task(call(rig.http, f"held{index}", stream=True, gate=gate))
                for _ in range(HELD_PER_SWAP)
            ]
            await asyncio.wait_for(upstream.wait_held(gate, HELD_PER_SWAP), timeout=10)
            held_ids = [i for i in sent_at if i not in held_ids_before and i.startswith("held")]

            assert open_calls >= WORKERS + LONG_HELD + HELD_PER_SWAP - 5, open_calls
            swapped.clear()
            method(rig.volume, key, index)
            await asyncio.wait_for(swapped.wait(), timeout=5)
            effective_at, now_fp = effective[-1]
            assert now_fp == expected
            document = await rig.status()
            assert document["credential"]["fingerprint"] == expected
            settled_at = time.monotonic()
            swaps.append((index, current, expected, effective_at, settled_at, held_ids))

            await upstream.until(
                lambda s=settled_at: began_after(s) >= AFTER_SETTLE, f"calls after swap {index}"
            )
            # The held streams are still open, on the previous key; now they finish.
            assert all(not t.done() for t in held_tasks[-HELD_PER_SWAP:])
            upstream.release(gate)
            current = expected
        stop.set()
        assert all(not t.done() for t in long_held)
        upstream.release("long")
        await asyncio.wait_for(asyncio.gather(*tasks, *held_tasks, *long_held), timeout=30)
    finally:
        stop.set()
        for session in sessions:
            await session.close()

    assert failures == []
    assert completed == len(sent_at) >= WORKERS + LONG_HELD + len(SWAPS) * HELD_PER_SWAP
    requests = upstream.requests
    assert len(requests) == completed, "one upstream request per call: no retry, no 401"
    assert {r.outcome for r in requests} == {"ok"}
    assert {r.stream for r in requests} == {True, False}
    assert {r.endpoint for r in requests} == {"chat.completions", "embeddings", "responses.create"}
    assert sidecar.credentials.rotations == len(SWAPS)
    assert sidecar.credential_error is None
    document = await rig.status()
    assert document["credential"]["rotations"] == len(SWAPS)
    assert document["credential"]["lastError"] is None
    assert [fp for _, fp in effective[1:]] == [fingerprint(key) for _, key in SWAPS]

    def key_at(moment: float) -> str:
        return [fp for at, fp in effective if at <= moment][-1]

    # Every call carried the key current when it began, or one that became
    # effective between then and its arrival upstream.
    by_id = {r.headers["x-client-request-id"]: r for r in requests}
    impossible = []
    for request_id, record in by_id.items():
        began = sent_at[request_id]
        allowed = {key_at(began)} | {fp for at, fp in effective if began < at <= record.started_at}
        if record.key_fingerprint not in allowed:
            impossible.append(f"{request_id}: {record.key_fingerprint} not in {allowed}")
    assert impossible == []

    # Strictly: begun after the settle, upstream before the next swap took effect.
    for index, _, expected, _, settled_at, _ in swaps:
        next_effective = effective[index + 2][0] if index + 2 < len(effective) else float("inf")
        window = [
            r
            for request_id, r in by_id.items()
            if sent_at[request_id] > settled_at and r.started_at < next_effective
        ]
        assert len(window) >= AFTER_SETTLE, (index, len(window))
        assert {r.key_fingerprint for r in window} == {expected}, index

    # Held streams: started on the previous key, open across the swap, finished with it.
    for _, before, _, effective_at, settled_at, held_ids in swaps:
        assert len(held_ids) == HELD_PER_SWAP
        for request_id in held_ids:
            record = by_id[request_id]
            assert record.stream and record.key_fingerprint == before
            assert record.started_at < effective_at
            assert record.finished_at is not None and record.finished_at > settled_at
    # Held across all ten swaps: began on the old key, ended on it, after the last settle.
    long = [r for i, r in by_id.items() if i.startswith("long")]
    assert len(long) == LONG_HELD and {r.stream for r in long} == {True, False}
    assert {r.key_fingerprint for r in long} == {OLD_FP}
    assert all(r.finished_at is not None and r.finished_at > swaps[-1][4] for r in long)
    assert {r.key_fingerprint for r in requests} == {OLD_FP, NEW_FP}
    assert json.dumps(document).count("sk-test") == 0
