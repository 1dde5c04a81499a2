"""Key rotation and config reload on a running sidecar, seen through the official SDK.

The sidecar follows its files with its own watcher (``watch.interval`` is
20 ms in these tests). Nothing here sleeps for a fixed time: tests wait for
an outcome (a new fingerprint, a new config generation) by polling it every
10 ms under a deadline, and gates in the fake upstream hold streams open for
exactly as long as a test needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner.credentials import fingerprint
from tests.sidecar.conftest import SidecarFactory
from tests.support import NEW_KEY, OLD_KEY, SecretVolume

USER = {"role": "user", "content": "Rotate the key"}
EXPECTED = "Echo: Rotate the key"
OLD_FP = fingerprint(OLD_KEY)
NEW_FP = fingerprint(NEW_KEY)
MODEL = "gpt-4o-mini"


# -- helpers -----------------------------------------------------------------


@asynccontextmanager
async def sdk(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    """The app's client: the real SDK, a dummy key (the sidecar adds the real one)."""
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key="not-the-real-key", max_retries=0, timeout=10
    ) as client:
        yield client


async def eventually(condition: Callable[[], bool], what: str, *, within: float = 1.0) -> float:
    """Poll ``condition`` every 10 ms until it holds; the moment it was seen to hold."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def fingerprint_of(sidecar: Sidecar) -> str | None:
    snapshot = sidecar.credentials.current
    return snapshot.fingerprint if snapshot is not None else None


async def settled(sidecar: Sidecar, expected: str, *, within: float = 1.0) -> float:
    """Wait until the sidecar's own snapshot is ``expected``; when that was seen."""
    return await eventually(
        lambda: fingerprint_of(sidecar) == expected,
        f"sidecar picks up key {expected} (has {fingerprint_of(sidecar)})",
        within=within,
    )


async def admin_get(sidecar: Sidecar, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + path) as response,
    ):
        return response.status, await response.text()


async def status(sidecar: Sidecar) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + "/status") as response,
    ):
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = dict(_LABEL.findall(match["labels"] or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match["value"])
    return total


async def scrape(sidecar: Sidecar) -> str:
    code, text = await admin_get(sidecar, "/metrics")
    assert code == 200
    return text


async def ask(client: openai.AsyncOpenAI, content: str = USER["content"]) -> str:
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}]
    )
    return reply.choices[0].message.content or ""


async def ask_streamed(
    client: openai.AsyncOpenAI,
    content: str = USER["content"],
    headers: Mapping[str, str] | None = None,
) -> str:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        stream=True,
        extra_headers=dict(headers or {}),
    )
    parts = [
        chunk.choices[0].delta.content or ""
        async for chunk in stream
        if chunk.choices and chunk.choices[0].delta is not None
    ]
    return "".join(parts)


def write_config(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(document)), encoding="utf-8")


# -- the key follows the file --------------------------------------------------


async def test_kubelet_swap_is_picked_up_by_the_watcher_and_used_next(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    sidecar = await make_sidecar()
    async with sdk(sidecar) as client:
        assert await ask(client) == EXPECTED
        assert upstream.requests[-1].key_fingerprint == OLD_FP

        swapped_at = time.monotonic()
        secret_dir.write(NEW_KEY)
        seen_at = await settled(sidecar, NEW_FP, within=1.0)
        assert seen_at - swapped_at < 1.0

        assert await ask(client) == EXPECTED
        assert await ask_streamed(client) == EXPECTED
    assert [r.key_fingerprint for r in upstream.requests[-2:]] == [NEW_FP, NEW_FP]
    document = await status(sidecar)
    assert document["credential"]["fingerprint"] == NEW_FP
    assert document["credential"]["rotations"] == 1
    assert document["credential"]["lastError"] is None
    text = await scrape(sidecar)
    assert metric(text, "openai_runtime_credential_reloads_total", result="rotated") == 1
    assert metric(text, "openai_runtime_credential_reloads_total", result="failed") == 0


async def test_plain_rewrite_of_a_regular_key_file_is_picked_up(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    key_file = tmp_path / "plain-api-key"
    key_file.write_text(OLD_KEY + "\n")
    sidecar = await make_sidecar(apiKey={"file": str(key_file)})
    async with sdk(sidecar) as client:
        assert await ask(client) == EXPECTED
        assert upstream.requests[-1].key_fingerprint == OLD_FP

        inode = key_file.stat().st_ino
        # Rewritten in place (same inode, no symlinks). Without the newline the
        # size differs, so the change does not hinge on the mtime clock's tick.
        key_file.write_text(NEW_KEY)
        assert key_file.stat().st_ino == inode and not key_file.is_symlink()
        await settled(sidecar, NEW_FP, within=1.0)

        assert await ask(client) == EXPECTED
    assert upstream.requests[-1].key_fingerprint == NEW_FP
    assert sidecar.credentials.rotations == 1


def _remove(volume: SecretVolume) -> None:
    volume.path.unlink()


def _empty(volume: SecretVolume) -> None:
    volume.path.write_text("")  # truncated through the symlinks: a 0-byte file


def _whitespace(volume: SecretVolume) -> None:
    volume.write(" \t \n ")  # published the kubelet way


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [(_remove, "does not exist"), (_empty, "is empty"), (_whitespace, "is empty")],
    ids=["missing", "empty", "whitespace"],
)
async def test_a_bad_key_file_keeps_the_old_key_and_is_reported(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    secret_dir: SecretVolume,
    breakage: Callable[[SecretVolume], None],
    reason: str,
) -> None:
    sidecar = await make_sidecar()
    before = sidecar.credentials.current
    assert before is not None
    async with sdk(sidecar) as client:
        assert await ask(client) == EXPECTED

        breakage(secret_dir)
        await eventually(lambda: sidecar.credential_error is not None, "reload fails")

        assert sidecar.credentials.current is before, "the old snapshot stays"
        assert await ask(client) == EXPECTED
        assert await ask_streamed(client) == EXPECTED
        assert {r.key_fingerprint for r in upstream.requests} == {OLD_FP}
        assert {r.outcome for r in upstream.requests} == {"ok"}

        code, _ = await admin_get(sidecar, "/readyz")
        assert code == 200, "a key in hand is enough to stay ready"
        document = await status(sidecar)
        credential = document["credential"]
        assert credential["fingerprint"] == OLD_FP
        assert reason in credential["lastError"]
        assert OLD_KEY not in str(document)
        failed = metric(
            await scrape(sidecar),
            "openai_runtime_credential_reloads_total",
            result="failed",
            runtime="team-a/chat",
        )
        assert failed >= 1

        # The Secret is fixed: the new key arrives and the error clears.
        secret_dir.write(NEW_KEY)
        await settled(sidecar, NEW_FP)
        assert await ask(client) == EXPECTED
    assert upstream.requests[-1].key_fingerprint == NEW_FP
    assert (await status(sidecar))["credential"]["lastError"] is None


async def test_streams_in_flight_keep_the_key_they_started_with(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    sidecar = await make_sidecar()
    gate = {"x-fake-hold": "rotation"}
    async with sdk(sidecar) as client:
        streams = [asyncio.create_task(ask_streamed(client, f"stream {n}", gate)) for n in range(3)]
        try:
            await asyncio.wait_for(upstream.wait_held("rotation", 3), timeout=5)
            held = [r for r in upstream.requests if r.headers.get("x-fake-hold") == "rotation"]
            assert len(held) == 3 and {r.key_fingerprint for r in held} == {OLD_FP}

            secret_dir.write(NEW_KEY)
            await settled(sidecar, NEW_FP)
            assert await ask(client) == EXPECTED
            assert upstream.requests[-1].key_fingerprint == NEW_FP
            assert all(not task.done() for task in streams), "the streams are still held"
        finally:
            upstream.release("rotation")
        texts = await asyncio.wait_for(asyncio.gather(*streams), timeout=5)

    assert texts == [f"Echo: stream {n}" for n in range(3)]
    held = [r for r in upstream.requests if r.headers.get("x-fake-hold") == "rotation"]
    assert [r.key_fingerprint for r in held] == [OLD_FP] * 3
    assert [r.outcome for r in held] == ["ok"] * 3
    assert len(upstream.requests) == 4, "nothing was retried"


async def test_a_401_rereads_the_key_before_the_watcher_notices(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    sidecar = await make_sidecar(watch={"interval": "1h", "shutdownGrace": "5s"})
    async with sdk(sidecar) as client:
        assert await ask(client) == EXPECTED
        assert len(upstream.requests) == 1

        upstream.set_keys({NEW_KEY})  # the old key is revoked upstream...
        secret_dir.write(NEW_KEY)  # ...and the Secret updated, but nobody looked yet
        assert fingerprint_of(sidecar) == OLD_FP

        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=[USER])
        assert raw.parse().choices[0].message.content == EXPECTED
        assert raw.headers["x-openai-runtime-attempts"] == "2"

        assert fingerprint_of(sidecar) == NEW_FP, "the re-read swapped the snapshot"
        assert await ask(client) == EXPECTED
    retried = upstream.requests[1:3]
    assert [(r.key_fingerprint, r.outcome) for r in retried] == [
        (OLD_FP, "error:401"),
        (NEW_FP, "ok"),
    ]
    assert [r.key_fingerprint for r in upstream.requests[3:]] == [NEW_FP]
    assert len(upstream.requests) == 4
    assert sidecar.credentials.rotations == 1


async def test_rotation_under_concurrent_load(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    """60 apps keep calling while the key is swapped 5 times: nothing fails, and
    every call begun after a swap settled goes upstream with that swap's key."""
    sidecar = await make_sidecar(
        rateLimits={"requestsPerMinute": None, "tokensPerMinute": None, "maxConcurrency": None}
    )
    upstream.chunks = 2  # short streams: the SDK's parsing is most of the CPU here
    workers, minimum_each = 60, 3
    sent_at: dict[str, float] = {}  # x-client-request-id -> when the app sent it
    failures: list[str] = []
    wrong_content: list[str] = []
    done = 0
    stop = asyncio.Event()
    ids = itertools.count()

    async def worker(client: openai.AsyncOpenAI, n: int) -> None:
        nonlocal done
        calls = 0
        while calls < minimum_each or not stop.is_set():
            calls += 1
            request_id = f"w{n}-{next(ids)}"
            content = f"worker {n} call {calls}"
            headers = {"x-client-request-id": request_id}
            streamed = (n + calls) % 2 == 0
            sent_at[request_id] = time.monotonic()
            try:
                if streamed:
                    text = await ask_streamed(client, content, headers)
                else:
                    reply = await client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": content}],
                        extra_headers=headers,
                    )
                    text = reply.choices[0].message.content or ""
            except Exception as exc:  # every failure is a test failure, collected
                failures.append(f"{request_id} stream={streamed}: {exc!r}")
                continue
            if text != f"Echo: {content}":
                wrong_content.append(f"{request_id}: {text!r}")
            done += 1

    def begun_after(moment: float, since: int) -> int:
        return sum(
            1
            for r in upstream.requests[since:]
            if sent_at.get(r.headers.get("x-client-request-id", ""), 0.0) > moment
        )

    # (key fingerprint, swap written at, swap settled at)
    windows: list[tuple[str, float, float]] = []
    async with contextlib.AsyncExitStack() as stack:
        # Several apps (SDK clients), each shared by a few tasks.
        clients = [await stack.enter_async_context(sdk(sidecar)) for _ in range(6)]
        tasks = [asyncio.create_task(worker(clients[n % len(clients)], n)) for n in range(workers)]
        try:
            await eventually(lambda: len(upstream.requests) >= workers // 2, "load is on", within=3)
            for key in [NEW_KEY, OLD_KEY, NEW_KEY, OLD_KEY, NEW_KEY]:
                expected = fingerprint(key)
                mark = len(upstream.requests)
                swapped_at = time.monotonic()
                secret_dir.write(key)
                settled_at = await settled(sidecar, expected, within=2)
                windows.append((expected, swapped_at, settled_at))
                # Let some calls begun after the settle reach upstream before the next swap.
                await eventually(
                    lambda m=mark, s=settled_at: begun_after(s, m) >= 3,
                    "calls after the swap",
                    within=2,
                )
        finally:
            stop.set()
            finished = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), timeout=5
            )

    assert [r for r in finished if r is not None] == []
    assert failures == []
    assert wrong_content == []
    assert done == len(sent_at) >= workers * minimum_each
    requests = upstream.requests
    assert len(requests) == done, "no retries, no 401s: both keys stayed valid"
    assert {r.outcome for r in requests} == {"ok"}
    assert {r.stream for r in requests} == {True, False}
    assert sidecar.credentials.rotations == 5
    assert sidecar.credential_error is None

    # Every upstream request that started between a swap's settle and the next
    # swap carries that swap's key. The one allowed exception is a call the app
    # sent before the settle: it took the previous snapshot when it began and
    # keeps it (by design), even if its request reached upstream a bit later.
    checked = [0] * len(windows)
    wrong: list[str] = []
    for index, (expected, _, settled_at) in enumerate(windows):
        next_swap = windows[index + 1][1] if index + 1 < len(windows) else float("inf")
        for r in requests:
            if not settled_at < r.started_at < next_swap:
                continue
            checked[index] += 1
            request_id = r.headers["x-client-request-id"]
            if r.key_fingerprint != expected and sent_at[request_id] > settled_at:
                wrong.append(f"{request_id} in window {index}: {r.key_fingerprint}")
    assert wrong == []
    assert all(count >= 3 for count in checked), checked
    # Requests begun before a settle may finish with the previous key; both are known.
    assert {r.key_fingerprint for r in requests} == {OLD_FP, NEW_FP}


# -- the config follows its file ------------------------------------------------


async def test_config_reload_applies_valid_and_rejects_invalid_files(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar()
    path = sidecar.config_path
    assert path is not None
    original = yaml.safe_load(path.read_text())
    assert (await status(sidecar))["config"] == {"generation": 1, "lastError": None}

    async with sdk(sidecar) as client:
        reply = await client.chat.completions.create(model="gpt-4o", messages=[USER])
        assert reply.choices[0].message.content == EXPECTED

        write_config(path, {**original, "models": {"allow": [MODEL]}})
        await eventually(lambda: sidecar.config_generation == 2, "config applied")
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gpt-4o", messages=[USER])
        assert refused.value.status_code == 400
        assert refused.value.code == "model_not_allowed"
        assert await ask(client) == EXPECTED
        document = await status(sidecar)
        assert document["config"] == {"generation": 2, "lastError": None}
        assert document["models"]["allow"] == [MODEL]

        # A policy the schema refuses: rejected, the running config stays.
        write_config(
            path, {**original, "models": {"allow": ["gpt-4o"]}, "retry": {"maxAttempts": 0}}
        )
        await eventually(lambda: sidecar.config_error is not None, "invalid config rejected")
        assert "maxAttempts" in (sidecar.config_error or "")
        assert sidecar.config_generation == 2
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o", messages=[USER])
        assert await ask(client) == EXPECTED
        document = await status(sidecar)
        assert document["config"]["generation"] == 2
        assert "maxAttempts" in document["config"]["lastError"]

        # Broken YAML: rejected the same way.
        path.write_text("models: [unclosed\n", encoding="utf-8")
        await eventually(lambda: "YAML" in (sidecar.config_error or ""), "broken YAML rejected")
        assert sidecar.config_generation == 2
        assert await ask(client) == EXPECTED
        text = await scrape(sidecar)
        reloads = "openai_runtime_config_reloads_total"
        assert metric(text, reloads, result="rejected", runtime="team-a/chat") == 2
        assert metric(text, reloads, result="applied", runtime="team-a/chat") == 1

        # Back to the config already running: nothing to apply, and no stale error.
        write_config(path, {**original, "models": {"allow": [MODEL]}})
        await eventually(lambda: sidecar.config_error is None, "error cleared")
        assert sidecar.config_generation == 2

        # Fixed for real: applied, and the old model is allowed again.
        write_config(path, original)
        await eventually(lambda: sidecar.config_generation == 3, "config applied again")
        reply = await client.chat.completions.create(model="gpt-4o", messages=[USER])
        assert reply.choices[0].message.content == EXPECTED
    assert (await status(sidecar))["config"] == {"generation": 3, "lastError": None}
    assert {r.outcome for r in upstream.requests} == {"ok"}


async def test_config_reload_can_point_at_another_key_file(
    make_sidecar: SidecarFactory,
    upstream: FakeUpstream,
    secret_dir: SecretVolume,
    tmp_path: Path,
) -> None:
    sidecar = await make_sidecar()
    path = sidecar.config_path
    assert path is not None
    other = SecretVolume(tmp_path / "other-secret")
    other.write(NEW_KEY)
    document = yaml.safe_load(path.read_text())
    (replaced,) = [w for w in sidecar._watchers if w.path == secret_dir.path]
    async with sdk(sidecar) as client:
        assert await ask(client) == EXPECTED
        write_config(path, {**document, "apiKey": {"file": str(other.path)}})
        await settled(sidecar, NEW_FP)
        assert sidecar.config_generation == 2
        assert await ask(client) == EXPECTED
        assert upstream.requests[-1].key_fingerprint == NEW_FP

        # The new file is the one followed from now on.
        other.write(OLD_KEY)
        await settled(sidecar, OLD_FP)
        assert await ask(client) == EXPECTED
    assert upstream.requests[-1].key_fingerprint == OLD_FP
    # One watcher per file, the old key file's one gone (its task stopped too).
    assert sorted(str(w.path) for w in sidecar._watchers) == sorted([str(path), str(other.path)])
    assert all(w.path != secret_dir.path for w in sidecar._watchers)
    assert replaced._task is None
