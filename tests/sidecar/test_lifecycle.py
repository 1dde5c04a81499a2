"""The sidecar's life: start-up, readiness, SIGTERM drain, client disconnects, status.

The drain and bad-config tests run the real console script in a subprocess,
so signals, exit codes and stderr are the ones a kubelet would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import parse_listen
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner.credentials import fingerprint
from tests.sidecar.conftest import SidecarFactory
from tests.support import OLD_KEY, SecretVolume, free_port

CLI = Path(sys.executable).parent / "openai-runtime"
USER = {"role": "user", "content": "Summarise the rotation guarantee"}
STREAM_BODY = {"model": "gpt-4o-mini", "messages": [USER], "stream": True}


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0, what: str = ""
) -> None:
    """Poll ``check`` (plain or async) until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what or check}")
        await asyncio.sleep(0.01)


async def refuses(url: str) -> bool:
    """Whether a new TCP connection to ``url``'s host and port is refused."""
    host, port = parse_listen(url.removeprefix("http://"))
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


def child_env() -> dict[str, str]:
    """The test's environment without anything that would redirect the sidecar."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "OPENAI_RUNTIME_"))
    }


# -- a sidecar in its own process ------------------------------------------


class SidecarProcess:
    """``openai-runtime sidecar --config FILE`` with its JSON log lines collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.api_url = ""
        self.admin_url = ""
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, config: Path, *, launcher: Sequence[str] = ()) -> SidecarProcess:
        """The console script on ``config``; ``launcher`` runs first and execs it (e.g. limits)."""
        proc = await asyncio.create_subprocess_exec(
            *launcher,
            str(CLI),
            "sidecar",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=config.parent,
            env=child_env(),
        )
        return cls(proc)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            try:
                line = json.loads(text)
            except ValueError:
                continue
            self.lines.append(line)
            if line.get("msg") == "sidecar listening":
                self.api_url, self.admin_url = line["api"], line["admin"]
                self._listening.set()

    def stderr(self) -> str:
        return "\n".join(self.raw)

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 30.0) -> None:
        """Until the sidecar says where it listens and ``/readyz`` answers 200."""
        async with asyncio.timeout(within):
            listening = asyncio.create_task(self._listening.wait())
            exited = asyncio.create_task(self.proc.wait())
            await asyncio.wait({listening, exited}, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            listening.cancel()
            assert self._listening.is_set(), f"sidecar exited early:\n{self.stderr()}"
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.admin_url + "/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.02)

    async def wait_exit(self, within: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.wait_for(self._reader, 5)
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)


def write_config(
    tmp_path: Path, upstream: FakeUpstream, key_file: Path, *, grace: str, **overrides: Any
) -> Path:
    spec: dict[str, Any] = {
        "runtime": {"namespace": "team-a", "name": "chat"},
        "variant": {"direct": {"endpoint": upstream.url + "/v1"}},
        "apiKey": {"file": str(key_file)},
        # Port 0: the log line "sidecar listening" says which ports were taken,
        # so no other test can grab a port between choosing and binding it.
        "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "watch": {"interval": "50ms", "shutdownGrace": grace},
    }
    spec.update(overrides)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def start_process(
    tmp_path: Path,
    upstream: FakeUpstream,
    secret_dir: SecretVolume,
    http: aiohttp.ClientSession,
    grace: str,
) -> SidecarProcess:
    config = write_config(tmp_path, upstream, secret_dir.path, grace=grace)
    sidecar = await SidecarProcess.start(config)
    try:
        await sidecar.wait_ready(http)
    except BaseException:
        await sidecar.close()
        raise
    return sidecar


async def open_held_stream(
    http: aiohttp.ClientSession, upstream: FakeUpstream, api_url: str, gate: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    """A raw SSE stream through the sidecar, paused by upstream after its first content."""
    async with asyncio.timeout(10):
        response = await http.post(
            api_url + "/v1/chat/completions", json=STREAM_BODY, headers={"x-fake-hold": gate}
        )
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        await upstream.wait_held(gate)
        first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: {")
    return response, first


async def read_rest(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The rest of a stream's body, and whether it ended cleanly."""
    received = b""
    try:
        async with asyncio.timeout(15):
            async for chunk in response.content.iter_any():
                received += chunk
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        return received, False
    finally:
        response.close()
    return received, True


# -- SIGTERM -------------------------------------------------------------------


async def test_sigterm_drains_a_held_stream_then_exits_0(
    tmp_path: Path, upstream: FakeUpstream, secret_dir: SecretVolume, http: aiohttp.ClientSession
) -> None:
    grace = 10.0
    sidecar = await start_process(tmp_path, upstream, secret_dir, http, grace="10s")
    try:
        response, first = await open_held_stream(http, upstream, sidecar.api_url, "drain")

        sidecar.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Unready at once (or the admin listener is already gone).
        async with asyncio.timeout(5):
            while True:
                try:
                    async with http.get(sidecar.admin_url + "/readyz") as ready:
                        if ready.status == 503:
                            assert "shutting down" in (await ready.json())["reasons"]
                            break
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.01)
        # No new connections while the held stream drains.
        await eventually(lambda: refuses(sidecar.api_url), what="API listener closed")
        assert sidecar.proc.returncode is None, "still draining the held stream"
        assert upstream.requests[-1].outcome == "pending"

        upstream.release("drain")
        rest, clean = await read_rest(response)
        assert clean, "the drained stream ended cleanly"
        body = first + rest
        assert body.rstrip().endswith(b"data: [DONE]")
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in body.decode().splitlines()
            if line.startswith("data: {")
        )
        assert text == "Echo: Summarise the rotation guarantee"

        assert await sidecar.wait_exit(within=grace) == 0
        assert time.monotonic() - signalled < grace
    finally:
        await sidecar.close()
    assert upstream.requests[-1].outcome == "ok"
    messages = [line.get("msg") for line in sidecar.lines]
    assert "shutting down" in messages and messages[-1] == "stopped"
    requests = [line for line in sidecar.lines if line.get("logger") == "openai_runtime.requests"]
    assert [(line["status"], line["stream"]) for line in requests] == [(200, True)]


async def test_a_stream_outlasting_a_short_grace_is_cut_and_the_exit_is_still_0(
    tmp_path: Path, upstream: FakeUpstream, secret_dir: SecretVolume, http: aiohttp.ClientSession
) -> None:
    sidecar = await start_process(tmp_path, upstream, secret_dir, http, grace="300ms")
    try:
        response, first = await open_held_stream(http, upstream, sidecar.api_url, "never")
        sidecar.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await sidecar.wait_exit(within=10) == 0
        # 300ms of grace, up to as much again for the cancelled handler, 1s for the admin.
        assert time.monotonic() - signalled < 5
        rest, clean = await read_rest(response)
        assert b"[DONE]" not in first + rest, "the stream was cut, not completed"
        assert not clean, "the client sees a broken stream, not a clean end"
    finally:
        await sidecar.close()
    # The sidecar hung up on upstream instead of leaving the call running.
    await eventually(lambda: upstream.requests[-1].outcome == "cancelled", what="upstream cut")
    # The cut call is still logged, with usage estimated from what was streamed.
    (line,) = [line for line in sidecar.lines if line.get("logger") == "openai_runtime.requests"]
    assert line["status"] == 499 and line["stream"] is True
    assert line["usage_estimated"] is True and line["cost_estimated"] is True
    assert line["prompt_tokens"] > 0
    assert [line.get("msg") for line in sidecar.lines][-1] == "stopped"


# -- bad start-up ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retry: {maxAttempts: 0}\n", "retry.maxAttempts"),
        ("listen: {api: 'nowhere'}\n", "listen.api"),
        ("variant: [\n", "not valid YAML"),
        (None, "cannot read"),
    ],
    ids=["bad-field", "bad-listen", "invalid-yaml", "missing-file"],
)
async def test_a_bad_config_exits_non_zero_before_listening(
    tmp_path: Path, text: str | None, message: str
) -> None:
    api, admin = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    if text is not None:
        base = (
            "variant: {direct: {}}\n"
            f"apiKey: {{file: {tmp_path / 'key'}}}\n"
            f"listen: {{api: '127.0.0.1:{api}', admin: '127.0.0.1:{admin}'}}\n"
        )
        path.write_text(base + text, encoding="utf-8")  # a repeated key: the last one wins
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "sidecar",
        "--config",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=child_env(),
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode()
    assert proc.returncode == 2, stderr
    assert message in stderr
    assert str(path) in stderr, "the message names the file"
    assert "sidecar listening" not in stderr
    assert "Traceback" not in stderr
    for port in (api, admin):
        assert await refuses(f"127.0.0.1:{port}")


# -- client disconnects ----------------------------------------------------------


async def test_a_client_leaving_mid_stream_cancels_upstream_and_frees_everything(
    sidecar: Sidecar, upstream: FakeUpstream
) -> None:
    await asyncio.sleep(0)  # let start-up tasks settle before counting
    baseline = len(asyncio.all_tasks())
    async with aiohttp.ClientSession() as http:
        response, _ = await open_held_stream(http, upstream, sidecar.api_url, "leave")
        assert sidecar.runner.limiter.snapshot()["in_flight"] == 1
        response.close()  # drop the connection, as a killed app would

        await eventually(
            lambda: upstream.requests[-1].outcome == "cancelled", what="upstream saw the cancel"
        )
        await eventually(
            lambda: sidecar.runner.limiter.snapshot()["in_flight"] == 0, what="slot freed"
        )
    await eventually(
        lambda: len(asyncio.all_tasks()) <= baseline,
        what=f"tasks back to {baseline}: {asyncio.all_tasks()}",
    )
    assert len(upstream.requests) == 1, "a cancelled stream is not retried"
    # The books still hold the call (usage estimated from what was streamed).
    await eventually(lambda: bool(sidecar.spend), what="call accounted")
    (totals,) = sidecar.spend.values()
    assert totals.requests == 1 and totals.prompt_tokens > 0
    assert totals.estimated_usd == totals.usd > 0, "cut before usage: an estimate"
    # The sidecar keeps serving afterwards.
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            sidecar.api_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [USER]},
        )
        assert response.status == 200


# -- a key that is not there yet --------------------------------------------------


async def test_missing_key_at_start_is_unready_then_ready_once_it_appears(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "late-secret")
    assert not volume.path.exists()
    sidecar = await make_sidecar(apiKey={"file": str(volume.path)})
    assert not sidecar.ready

    async with aiohttp.ClientSession() as http:
        async with http.get(sidecar.admin_url + "/healthz") as health:
            assert health.status == 200, "alive, just not ready"
        async with http.get(sidecar.admin_url + "/readyz") as ready:
            assert ready.status == 503
            reasons = (await ready.json())["reasons"]
        assert len(reasons) == 1 and "no API key" in reasons[0]
        assert str(volume.path) in reasons[0]

        async with http.post(
            sidecar.api_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [USER]},
        ) as refused:
            assert refused.status == 503
            error = (await refused.json())["error"]
        assert error["code"] == "credential_unavailable"
        assert upstream.requests == [], "nothing was sent without a key"

        volume.write(OLD_KEY)
        async with asyncio.timeout(1.0):
            while True:
                async with http.get(sidecar.admin_url + "/readyz") as ready:
                    if ready.status == 200:
                        break
                await asyncio.sleep(0.01)

        async with http.post(
            sidecar.api_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [USER]},
        ) as served:
            assert served.status == 200
            reply = await served.json()
    assert reply["choices"][0]["message"]["content"] == "Echo: Summarise the rotation guarantee"
    assert upstream.requests[-1].key_fingerprint == fingerprint(OLD_KEY)
    assert sidecar.credentials.rotations == 0, "a first load is not a rotation"


# -- probes and status ------------------------------------------------------------


async def test_healthz_and_status_report_identity_state_and_exact_spend(
    sidecar: Sidecar, upstream: FakeUpstream
) -> None:
    costs: dict[str, float] = {}
    usage: dict[str, list[int]] = {}
    async with aiohttp.ClientSession() as http:
        async with http.get(sidecar.admin_url + "/healthz") as health:
            assert health.status == 200 and await health.json() == {"status": "ok"}

        calls = [
            ("gpt-4o-mini", "short"),
            ("gpt-4o-mini", "a somewhat longer question about key rotation " * 3),
            ("gpt-4o", "what does the sidecar cost?"),
        ]
        for model, content in calls:
            async with http.post(
                sidecar.api_url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": content}]},
            ) as response:
                assert response.status == 200
                payload = await response.json()
                header = float(response.headers["x-openai-runtime-cost-usd"])
            served = payload["model"]
            costs[served] = costs.get(served, 0.0) + header
            tokens = usage.setdefault(served, [0, 0, 0])
            tokens[0] += 1
            tokens[1] += payload["usage"]["prompt_tokens"]
            tokens[2] += payload["usage"]["completion_tokens"]

        async with http.get(sidecar.admin_url + "/status") as response:
            assert response.status == 200
            status = await response.json()

    assert status["runtime"] == {"namespace": "team-a", "name": "chat"}
    assert status["variant"] == "direct"
    assert status["upstream"] == upstream.url + "/v1/chat/completions"
    assert status["ready"] is True
    assert status["credential"]["fingerprint"] == fingerprint(OLD_KEY)
    assert status["credential"]["rotations"] == 0
    assert status["credential"]["lastError"] is None
    assert status["config"] == {"generation": 1, "lastError": None}
    assert status["circuit"]["host"]["state"] == "closed"
    assert status["circuit"]["host"]["consecutive_failures"] == 0
    assert status["circuit"]["scopes"] == {}, "a scope shows once it counts a failure"
    assert status["rateLimits"]["in_flight"] == 0
    assert status["rateLimits"]["provider_remaining_requests"] == 9999

    assert status["spend"]["usd"] == pytest.approx(sum(costs.values()), abs=1e-9)
    spend = status["spend"]["models"]
    assert set(spend) == {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"}
    for model, totals in spend.items():
        requests, prompt, completion = usage[model]
        assert totals["requests"] == requests
        assert totals["promptTokens"] == prompt
        assert totals["completionTokens"] == completion
        assert totals["usd"] == pytest.approx(costs[model], abs=1e-9)
        assert totals["usd"] > 0 and totals["estimatedUsd"] == 0
    assert OLD_KEY not in json.dumps(status)
