"""Every error the sidecar gives is in OpenAI's shape, and says whether a retry can help.

Over real sockets: what aiohttp's HTTP parser refuses before any handler
runs (sent byte for byte, as no HTTP client would), bodies in encodings the
sidecar cannot decode, the sidecar's own refusals, and an open circuit,
which the official SDK must report at once rather than sleep out its
``retry-after``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from openai_runtime_sidecar.runner import ManualClock

from .harness import CHAT, MODEL, Rig, assert_openai_error, running, until

JSON = {"Content-Type": "application/json"}
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
CHUNKED = ("Content-Type: application/json", "Transfer-Encoding: chunked")


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(rig: Rig, *parts: bytes) -> RawAnswer:
    """Send ``parts`` as they are (each its own write) and read the answer until the
    sidecar closes the connection, as it does after every parse error."""
    host, port = rig.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    return parse(raw)


def parse(raw: bytes) -> RawAnswer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body)


def request(*headers: str, body: bytes = b"", path: str = CHAT) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: sidecar", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_refusal(answer: RawAnswer, status: int, code: str | None = None) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    assert_openai_error(answer.json, code)
    assert answer.headers["x-should-retry"] == "false", answer
    assert b"Traceback" not in answer.body


# (id, what is sent, each part its own write, the code)
MALFORMED: list[tuple[str, tuple[bytes, ...], str]] = [
    ("bad-request-line", (b"GARBAGE\r\n\r\n",), "invalid_http_request"),
    (
        "tls-hello",
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",),
        "invalid_http_request",
    ),
    ("invalid-header", (request("Bad Header: x", "Content-Length: 0"),), "invalid_http_request"),
    (
        "header-too-long",
        (request("X-Long: " + "a" * 9000, "Content-Length: 0"),),
        "header_too_large",
    ),
    (
        "broken-chunked-body",
        (request(*CHUNKED, body=b"zz\r\nabc\r\n0\r\n\r\n"),),
        "invalid_http_request",
    ),
]


@pytest.mark.parametrize(
    ("parts", "code"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
async def test_requests_aiohttp_cannot_parse_are_answered_in_openais_shape(
    tmp_path: Path, parts: tuple[bytes, ...], code: str
) -> None:
    async with running(tmp_path) as rig:
        answer = await exchange(rig, *parts)
        assert_refusal(answer, 400, code)
        assert rig.upstream.requests == []
        assert (await rig.chat("still here")).status == 200


async def test_a_chunk_broken_while_the_handler_reads_ends_in_an_openai_shaped_answer(
    tmp_path: Path,
) -> None:
    """aiohttp's C parser drops the body of a request already handed to its handler
    when a later chunk is broken (``_http_parser.pyx`` sets ``_payload = None`` and
    raises, never failing the body), so the handler waits: the sidecar's
    ``limits.bodyTimeout`` ends it with a 408. Should aiohttp fail the body
    instead, the handler answers 400 ``invalid_body``. Either way: OpenAI's
    shape, no retry, and the sidecar keeps serving."""
    async with running(tmp_path, limits={"bodyTimeout": "200ms"}) as rig:
        api = rig.sidecar._api
        assert api is not None and api.server is not None
        server = api.server
        host, port = rig.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            before = server.requests_count
            writer.write(request(*CHUNKED))
            await writer.drain()
            await until(lambda: server.requests_count > before, "the request was dispatched")
            writer.write(b"10\r\n" + BODY[:16] + b"\r\nzz\r\n" + BODY[16:])
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()
        answer = parse(raw)
        assert answer.status in (400, 408), answer
        assert_refusal(answer, answer.status)
        assert rig.upstream.requests == []
        assert (await rig.chat("still here")).status == 200


# -- Content-Encoding -------------------------------------------------------------

ENCODINGS = ["br", "zstd", "compress", "gzip, br", "x-garbage"]


@pytest.mark.parametrize("path", [CHAT, "/v1/embeddings", "/v1/files"])
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_a_body_in_an_encoding_the_sidecar_cannot_decode_is_refused_with_415(
    tmp_path: Path, encoding: str, path: str
) -> None:
    async with running(tmp_path) as rig:
        answer = await rig.send(
            path=path,
            data=b"\x28\xb5\x2f\xfd" + BODY,
            headers=JSON | {"Content-Encoding": encoding},
        )
        assert answer.status == 415, answer.raw
        assert answer.headers["Content-Type"].startswith("application/json")
        assert_openai_error(answer.json, "unsupported_content_encoding")
        assert answer.headers["x-should-retry"] == "false"
        assert rig.upstream.requests == [], "refused before anything was read or sent"
        assert (await rig.chat("still here")).status == 200


async def test_gzip_and_deflate_bodies_are_decoded_and_served(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        zipped = await rig.send(
            data=gzip.compress(BODY), headers=JSON | {"Content-Encoding": "gzip"}
        )
        deflated = await rig.send(
            data=zlib.compress(BODY), headers=JSON | {"Content-Encoding": "Deflate"}
        )
        plain = await rig.send(data=BODY, headers=JSON | {"Content-Encoding": "identity"})
    assert [zipped.status, deflated.status, plain.status] == [200, 200, 200]
    assert [r.body["messages"] for r in rig.upstream.requests] == [
        [{"role": "user", "content": "hi"}]
    ] * 3


# -- x-should-retry on the sidecar's own answers ------------------------------------


# (id, method, path, body, status, code)
REFUSALS: list[tuple[str, str, str, bytes, int, str]] = [
    ("invalid-json", "POST", CHAT, b"{", 400, "invalid_json"),
    ("unknown-url", "GET", "/v2/models", b"", 404, "unknown_url"),
    ("method", "PUT", "/chat/completions", BODY, 405, "method_not_allowed"),
    ("too-large", "POST", CHAT, b"x" * 70_000, 413, "request_too_large"),
    ("realtime", "GET", "/v1/realtime", b"", 501, "unsupported_endpoint"),
]


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
async def test_local_refusals_tell_the_sdk_not_to_retry(
    tmp_path: Path, method: str, path: str, data: bytes, status: int, code: str
) -> None:
    async with running(tmp_path, limits={"maxRequestBytes": 64 * 1024}) as rig:
        answer = await rig.send(method=method, path=path, data=data, headers=JSON)
    assert answer.status == status, answer.raw
    assert_openai_error(answer.json, code)
    assert answer.headers["x-should-retry"] == "false"


async def test_a_stalled_body_is_answered_408_without_retry(tmp_path: Path) -> None:
    async with running(tmp_path, limits={"bodyTimeout": "200ms"}) as rig:
        # Headers promise 4096 bytes; five come, then nothing until bodyTimeout.
        answer = await exchange(
            rig,
            request("Content-Type: application/json", "Content-Length: 4096", body=b'{"mod'),
        )
        assert_refusal(answer, 408, "request_timeout")
        assert answer.headers["connection"] == "close"
        assert (await rig.chat("still here")).status == 200


async def test_the_local_rate_limit_still_invites_a_retry(tmp_path: Path) -> None:
    limits = {"requestsPerMinute": None, "tokensPerMinute": None}
    async with running(
        tmp_path, rateLimits=limits | {"maxConcurrency": 1, "maxQueueWait": 0}
    ) as rig:
        held = asyncio.create_task(rig.chat("held", headers={"x-fake-hold": "h"}))
        await rig.upstream.wait_held("h")
        busy = await rig.chat("busy")
        rig.upstream.release("h")
        assert (await held).status == 200
    assert busy.status == 429
    assert_openai_error(busy.json, "local_rate_limited")
    assert "retry-after" in busy.headers and "x-should-retry" not in busy.headers


async def test_an_open_circuit_fails_the_sdk_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the SDK (default max_retries=2) slept out ``retry-after: 30`` twice
    to be refused again; now it raises on the first answer."""
    caplog.set_level(logging.INFO, logger="openai_runtime.requests")
    async with running(
        tmp_path,
        clock=ManualClock(),  # the breaker stays open: nothing moves its clock
        retry={"maxAttempts": 1},
        circuitBreaker={"failureThreshold": 1, "openDuration": "30s"},
    ) as rig:
        failed = await rig.chat("x", headers={"x-fake-scenario": "server-error"})
        assert failed.status == 500
        assert (await rig.status())["circuit"]["scopes"][MODEL]["state"] == "open"
        caplog.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="unused") as sdk:
            assert sdk.max_retries == 2, "the SDK's default"
            with pytest.raises(openai.InternalServerError) as caught:
                # Bounded: a regression would sleep 30 s per retry.
                async with asyncio.timeout(10):
                    await sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                    )
        elapsed = loop.time() - started
    assert caught.value.status_code == 503 and caught.value.code == "circuit_open"
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert headers["retry-after"] == "30", "kept, as information"
    served = [r for r in caplog.records if r.getMessage() == "request"]
    assert len(served) == 1, "the SDK asked the sidecar exactly once"
    assert elapsed < 30
    assert len(rig.upstream.requests) == 1, "only the call that opened the circuit"
