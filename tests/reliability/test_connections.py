"""Idle, slow and too many connections cannot hold the sidecar's descriptors.

Real sockets on loopback against the real listeners; timeouts made small
through the config so every outcome comes within a second or so. Nothing
sleeps to wait for an outcome: a test reads until the sidecar closes the
socket, under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.listening import (
    ACCEPT_ERROR_MESSAGE,
    AcceptErrorThrottle,
    ConnectionGuard,
    _GuardedProtocol,
    api_connection_limit,
)
from openai_runtime_sidecar.telemetry import Telemetry

from ..sidecar.test_lifecycle import SidecarProcess, write_config
from ..support import SecretVolume

HEADER_TIMEOUT = 0.3
IDLE_TIMEOUT = 0.6
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

Factory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar(upstream: FakeUpstream, secret_dir: SecretVolume) -> AsyncIterator[Factory]:
    started: list[Sidecar] = []

    async def factory(**connections: Any) -> Sidecar:
        config = SidecarConfig.model_validate(
            {
                "variant": {"direct": {"endpoint": upstream.url + "/v1"}},
                "apiKey": {"file": str(secret_dir.path)},
                "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                "connections": connections,
            }
        )
        telemetry = Telemetry(
            runtime=str(config.runtime),
            variant=config.variant.selected.name,
            server_address="127.0.0.1",
            environ={},
        )
        sidecar = Sidecar(config, telemetry=telemetry)
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield factory
    for sidecar in started:
        await sidecar.stop()


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, deadline: float) -> float:
    """Seconds until the peer closes (EOF or reset); fails after ``deadline``."""
    start = time.monotonic()
    async with asyncio.timeout(deadline):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass
    return time.monotonic() - start


async def is_open(reader: asyncio.StreamReader) -> bool:
    """Whether the peer has not closed: the socket has no EOF waiting."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.05):
            try:
                return bool(await reader.read(1))
            except ConnectionResetError:
                return False
    return True


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str, body: bytes = b""
) -> int:
    """Send one request, read its whole (Content-Length) answer; the status."""
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


def chat_request(url: str) -> tuple[str, bytes]:
    body = json.dumps(CHAT).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    return head, body


async def chat_ok(http: aiohttp.ClientSession, api_url: str) -> None:
    async with http.post(api_url + "/v1/chat/completions", json=CHAT) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["choices"]


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    make_sidecar: Factory,
) -> None:
    sidecar = await make_sidecar(
        headerTimeout=HEADER_TIMEOUT,
        api={"idleTimeout": 30},
        admin={"idleTimeout": 30},
    )
    for url in (sidecar.api_url, sidecar.admin_url):
        reader, writer = await connect(url)
        elapsed = await closed_within(reader, 5)
        writer.close()
        assert elapsed >= HEADER_TIMEOUT * 0.9, url
    assert sidecar.api_connections is not None and sidecar.admin_connections is not None
    assert sidecar.api_connections.timed_out == sidecar.admin_connections.timed_out == 1
    metrics = sidecar.telemetry.prometheus_text()
    for listener in ("api", "admin"):
        closed = (
            f'openai_runtime_connections_closed_total{{listener="{listener}",reason="timed_out"'
        )
        assert closed in metrics and metrics.split(closed, 1)[1].split("\n", 1)[0].endswith(" 1")


async def test_a_header_sent_in_pieces_and_stalled_is_closed_after_the_header_timeout(
    make_sidecar: Factory,
) -> None:
    # The idle timeout far off: only the header deadline can close these.
    sidecar = await make_sidecar(
        headerTimeout=HEADER_TIMEOUT, api={"idleTimeout": 30}, admin={"idleTimeout": 30}
    )
    for url in (sidecar.api_url, sidecar.admin_url):
        reader, writer = await connect(url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\n")
        await writer.drain()
        elapsed = await closed_within(reader, 5)
        writer.close()
        assert HEADER_TIMEOUT * 0.9 <= elapsed < 5, url


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(
    make_sidecar: Factory,
) -> None:
    sidecar = await make_sidecar(
        headerTimeout=HEADER_TIMEOUT,
        api={"idleTimeout": IDLE_TIMEOUT},
        admin={"idleTimeout": IDLE_TIMEOUT},
    )
    head, body = chat_request(sidecar.api_url)
    for url, (h, b) in (
        (sidecar.api_url, (head, body)),
        (sidecar.admin_url, ("GET /healthz HTTP/1.1\r\nHost: sidecar\r\n", b"")),
    ):
        reader, writer = await connect(url)
        assert await request(reader, writer, h, b) == 200
        # Past the header deadline, the connection still serves a second request.
        assert await request(reader, writer, h, b) == 200
        elapsed = await closed_within(reader, 5)
        writer.close()
        assert elapsed >= IDLE_TIMEOUT * 0.9, url

    # A second request trickled in on a kept-alive connection: aiohttp's idle
    # timer closes a connection still waiting for a whole request.
    reader, writer = await connect(sidecar.admin_url)
    assert await request(reader, writer, "GET /healthz HTTP/1.1\r\nHost: sidecar\r\n") == 200
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    assert await closed_within(reader, 5) >= IDLE_TIMEOUT * 0.9
    writer.close()


async def test_over_the_admin_cap_idle_connections_make_way_and_the_api_serves(
    make_sidecar: Factory,
) -> None:
    cap = 4
    sidecar = await make_sidecar(admin={"idleTimeout": 30, "maxConnections": cap})
    guard = sidecar.admin_connections
    assert guard is not None and guard.limit == cap
    flood = [await connect(sidecar.admin_url) for _ in range(cap * 5)]
    try:
        # The listener never holds more than its cap: the oldest idle ones
        # went, each as a newer one came (the last closes when the last arrives).
        for reader, _ in flood[:-cap]:
            await closed_within(reader, 5)
        assert guard.open_connections == cap
        assert guard.evicted == cap * 4
        assert all([await is_open(reader) for reader, _ in flood[-cap:]])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await chat_ok(http, sidecar.api_url)
            # A probe still gets in: it takes an idle connection's place.
            async with http.get(sidecar.admin_url + "/healthz") as response:
                assert response.status == 200
        assert guard.open_connections <= cap
        metrics = sidecar.telemetry.prometheus_text()
        family = "openai_runtime_connections_closed_total"
        evicted = re.search(family + r'\{listener="admin",reason="evicted"[^}]*\} (\d+)', metrics)
        assert evicted is not None and int(evicted.group(1)) == guard.evicted >= cap * 4
        assert re.search(
            r'openai_runtime_connections_open\{listener="admin"[^}]*\} [1-4]\n', metrics
        )
        assert re.search(r'openai_runtime_connections_open\{listener="api"', metrics)
    finally:
        for _, writer in flood:
            writer.close()


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_when_every_connection_is_busy_a_new_one_is_closed_at_once() -> None:
    guard = ConnectionGuard("admin", limit=2, header_timeout=10)
    busy = []
    for _ in range(2):
        conn = _GuardedProtocol(guard, server=None)  # type: ignore[arg-type]
        conn.transport = _Transport()
        assert guard.admit(conn)
        conn.busy = 1  # inside a request handler
        busy.append(conn)
    extra = _GuardedProtocol(guard, server=None)  # type: ignore[arg-type]
    transport = _Transport()
    extra.connection_made(transport)
    assert transport.closed
    assert guard.refused == 1 and guard.open_connections == 2
    assert not any(c.transport is not None and c.transport.is_closing() for c in busy)


def test_the_api_cap_leaves_descriptors_for_upstream_and_the_admin_port() -> None:
    assert api_connection_limit(64, nofile=1024) == (1024 - 64 - 64) // 2
    assert api_connection_limit(64, nofile=256) == 64
    assert api_connection_limit(64, nofile=100) == 16


def test_accept_errors_are_logged_once_per_interval_and_others_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = AcceptErrorThrottle(10.0, clock=lambda: now[0])
    passed: list[dict[str, Any]] = []

    class Loop:
        def default_exception_handler(self, context: dict[str, Any]) -> None:
            passed.append(context)

    loop: Any = Loop()
    error = {"message": ACCEPT_ERROR_MESSAGE, "exception": OSError(24, "Too many open files")}
    with caplog.at_level("ERROR", logger="openai_runtime.sidecar"):
        for step in range(1000):
            now[0] = step * 0.025  # 1,000 failed accepts over 25 s
            throttle(loop, error)
        throttle(loop, {"message": "Task exception was never retrieved"})
    lines = [r for r in caplog.records if r.name == "openai_runtime.sidecar"]
    assert len(lines) == 3  # at 0 s, 10 s, 20 s
    assert [r.fields["suppressed"] for r in lines] == [0, 399, 399]  # type: ignore[attr-defined]
    assert passed == [{"message": "Task exception was never retrieved"}]


NOFILE = 256


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE behaviour as on Linux")
async def test_a_flood_past_the_file_limit_leaves_the_api_and_probes_working(
    tmp_path: Path, upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < NOFILE * 3:
        pytest.skip("the test process itself needs descriptors for the flood")
    config = write_config(tmp_path, upstream, secret_dir.path, grace="5s")
    # The real console script, exec'd with a container-like descriptor limit.
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    sidecar = await SidecarProcess.start(config, launcher=(sys.executable, "-c", launcher))
    flood: list[asyncio.StreamWriter] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await sidecar.wait_ready(http)
            for _ in range(NOFILE * 2):
                with contextlib.suppress(OSError):
                    flood.append((await connect(sidecar.admin_url))[1])
            for _ in range(5):
                await chat_ok(http, sidecar.api_url)
                async with http.get(sidecar.admin_url + "/healthz") as response:
                    assert response.status == 200
    finally:
        for writer in flood:
            writer.close()
        await sidecar.close()
    accept_errors = [
        line
        for line in sidecar.raw
        if ACCEPT_ERROR_MESSAGE in line or "cannot accept connections" in line
    ]
    assert len(accept_errors) <= 5, "\n".join(accept_errors[:10])
