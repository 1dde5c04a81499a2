"""A real sidecar in front of the fake upstream, in-process, for the reliability tests.

Everything runs on the test's event loop: the app (raw aiohttp, lighter than
the SDK when hundreds of calls are in flight), the sidecar, the fake upstream.
Nothing sleeps for a fixed time. The fake upstream announces every request it
receives and finishes (:meth:`WatchedUpstream.until`), hold gates keep calls
in flight for as long as a test needs, the runner's clock is a
:class:`ManualClock`, and what has no event of its own (open sockets, tasks)
is awaited by yielding to the loop under a deadline (:func:`until`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.sdk.trace import TracerProvider

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner import CallOutcome, ManualClock
from openai_runtime_sidecar.runner.credentials import fingerprint
from openai_runtime_sidecar.telemetry import Telemetry
from tests.support import NEW_KEY, OLD_KEY, SecretVolume

__all__ = [
    "CHAT",
    "MODEL",
    "NEW_FP",
    "OLD_FP",
    "Answer",
    "Rig",
    "SteadyProbe",
    "WatchedUpstream",
    "assert_openai_error",
    "open_fds",
    "running",
    "until",
]

MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
OLD_FP = fingerprint(OLD_KEY)
NEW_FP = fingerprint(NEW_KEY)
NO_LIMITS = {"requestsPerMinute": None, "tokensPerMinute": None, "maxConcurrency": None}


async def until(condition: Callable[[], bool], what: str, *, within: float = 10.0) -> None:
    """Yield to the loop until ``condition`` holds (for state that has no event)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0)


def open_fds() -> int:
    """File descriptors this process holds (sidecar, upstream and clients alike)."""
    return len(os.listdir("/proc/self/fd"))


def assert_openai_error(payload: Any, code: str | None = None) -> None:
    """``{"error": {"message", "type", "param", "code"}}`` and nothing else."""
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str | None)
    assert isinstance(error["param"], str | None)
    if code is not None:
        assert error["code"] == code, error


class WatchedUpstream(FakeUpstream):
    """The fake upstream, announcing each request as it arrives and as it ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._changed = asyncio.Event()

    async def _dispatch(self, call: Any) -> web.StreamResponse:
        self._changed.set()  # the request is recorded (outcome "pending")
        return await super()._dispatch(call)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super()._handle(request)
        finally:
            self._changed.set()

    async def until(self, condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
        """Wait until ``condition`` (about :attr:`requests`) holds."""
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"upstream: not within {within}s: {what}") from None

    @property
    def open_connections(self) -> int:
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def pending(self) -> list[Any]:
        return [r for r in self.requests if r.outcome == "pending"]


@dataclass
class Answer:
    """What the app got: status, headers, body; for streams the parsed events."""

    status: int
    headers: Mapping[str, str]
    raw: bytes
    events: list[Any] = field(default_factory=list)
    done: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def streamed(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("text/event-stream")

    @property
    def text(self) -> str:
        """The completion's content, streamed or not."""
        if not self.streamed:
            return str(self.json["choices"][0]["message"]["content"])
        return "".join(
            event["choices"][0]["delta"].get("content") or ""
            for event in self.events
            if isinstance(event, dict) and event.get("choices")
        )

    @property
    def stream_error(self) -> Any:
        """The ``{"error": ...}`` event a broken stream ends with, if any."""
        errors = [e for e in self.events if isinstance(e, dict) and "error" in e]
        return errors[-1] if errors else None


def parse_sse(raw: bytes) -> tuple[list[Any], bool]:
    events: list[Any] = []
    done = False
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            continue
        if data == b"[DONE]":
            done = True
            continue
        try:
            events.append(json.loads(data))
        except ValueError:
            events.append(data)
    return events, done


def chat_body(content: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return body | extra


@dataclass
class Rig:
    """One running sidecar, its upstream, its key volume, its clock, an app session."""

    upstream: WatchedUpstream
    sidecar: Sidecar
    volume: SecretVolume
    clock: ManualClock
    http: aiohttp.ClientSession
    calls: list[CallOutcome] = field(default_factory=list)
    """What the sidecar accounted for each finished call (its error included)."""

    @property
    def url(self) -> str:
        return self.sidecar.api_url

    async def send(
        self,
        *,
        method: str = "POST",
        path: str = CHAT,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> Answer:
        http = session or self.http
        async with http.request(
            method, self.url + path, data=data, headers=dict(headers or {})
        ) as response:
            raw = await response.read()
            answer = Answer(response.status, CIMultiDict(response.headers), raw)
        if answer.streamed:
            answer.events, answer.done = parse_sse(raw)
        return answer

    async def chat(
        self,
        content: str = "hello",
        *,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        **extra: Any,
    ) -> Answer:
        data = json.dumps(chat_body(content, stream=stream, **extra)).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return await self.send(data=data, headers=sent, session=session)

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.sidecar.admin_url + "/status") as response:
            assert response.status == 200
            document: dict[str, Any] = await response.json()
            return document

    @property
    def api_connections(self) -> int:
        """Client connections the sidecar's API listener holds open."""
        api = self.sidecar._api
        server = api.server if api is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def in_flight(self) -> int:
        return int(self.sidecar.runner.limiter.snapshot()["in_flight"])


def spec(
    upstream: FakeUpstream,
    key_file: Path,
    *,
    azure: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The sidecar's config: the direct variant, or ``azure`` (its fields) on the fake."""
    document: dict[str, Any] = {
        "runtime": {"namespace": "team-a", "name": "chat"},
        "variant": {"direct": {"endpoint": upstream.url + "/v1"}},
        "apiKey": {"file": str(key_file)},
        "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "watch": {"interval": "20ms", "shutdownGrace": "5s"},
        "rateLimits": NO_LIMITS,
    }
    if azure is not None:
        document["variant"] = {"azure": {"endpoint": upstream.url, **azure}}
    document.update(overrides)
    return document


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    clock: ManualClock | None = None,
    chunks: int = 5,
    azure: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """A sidecar (config ``overrides`` on top of :func:`spec`) in front of a fake upstream."""
    upstream = WatchedUpstream(keys={OLD_KEY, NEW_KEY}, chunks=chunks)
    await upstream.start()
    volume = SecretVolume(tmp_path / "secret")
    volume.write(OLD_KEY)
    document = spec(upstream, volume.path, azure=azure, **overrides)
    config_path = tmp_path / "sidecar.yaml"
    config_path.write_text(yaml.safe_dump(document))
    config = SidecarConfig.model_validate(document)
    telemetry = Telemetry(
        runtime=str(config.runtime),
        variant=config.variant.selected.name,
        server_address="127.0.0.1",
        tracer_provider=TracerProvider(),  # no processor: spans are dropped, memory stays flat
        environ={},
    )
    clock = clock or ManualClock(auto_advance=True)
    sidecar = Sidecar(config, config_path=config_path, telemetry=telemetry, clock=clock)
    try:
        await sidecar.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            rig = Rig(upstream, sidecar, volume, clock, http)
            account = sidecar.account

            def accounted(info: CallOutcome | None) -> None:
                if info is not None:
                    rig.calls.append(info)
                account(info)

            sidecar.account = accounted  # type: ignore[method-assign]
            yield rig
    finally:
        await sidecar.stop()
        await upstream.stop()


class SteadyProbe:
    """Good calls, one after another (streamed and not), for as long as a fault lasts.

    Each must answer 200 with the right content. :meth:`more` waits until
    ``n`` more have succeeded, so a test can prove they were served *while*
    a fault was in progress. Its own session: the faults never share its
    connections.
    """

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.ok = 0
        self.failures: list[str] = []
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._numbers = itertools.count(1)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                n = next(self._numbers)
                content = f"probe {n}"
                try:
                    answer = await self.rig.chat(content, stream=n % 2 == 0, session=session)
                    if answer.status != 200 or answer.text != f"Echo: {content}":
                        self.failures.append(f"{content}: {answer.status} {answer.raw[:200]!r}")
                    elif answer.streamed and not answer.done:
                        self.failures.append(f"{content}: stream without [DONE]")
                    else:
                        self.ok += 1
                except Exception as exc:  # collected: every failure fails the test
                    self.failures.append(f"{content}: {exc!r}")
                self._progress.set()

    async def more(self, n: int, within: float = 10.0) -> None:
        """Wait for ``n`` more successful probe calls."""
        target = self.ok + n
        async with asyncio.timeout(within):
            while self.ok < target:
                assert not self.failures, self.failures
                self._progress.clear()
                await self._progress.wait()
        assert not self.failures, self.failures

    async def __aenter__(self) -> SteadyProbe:
        self._task = asyncio.create_task(self._run(), name="steady probe")
        await self.more(1)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=10)
        assert self.failures == [], self.failures
