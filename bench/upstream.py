"""An OpenAI-shaped upstream that answers at once, so the proxy is what is measured.

``POST .../chat/completions`` answers a fixed small completion with usage, or,
when the body asks for ``"stream": true``, 50 SSE content chunks, a usage chunk
and ``[DONE]`` (chunked transfer encoding, as OpenAI does). Anything else is a
404. HTTP/1.1 keep-alive over a bare :class:`asyncio.Protocol` with canned
answers: no framework, no JSON parsing, so it costs next to nothing per call.

Run: ``python bench/upstream.py PORT`` (prints ``ready`` once listening).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

MODEL = "gpt-4o-mini-2024-07-18"
STREAM_CHUNKS = 50
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _completion() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _event(payload: dict[str, object] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _stream_body() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    events = []
    for i in range(STREAM_CHUNKS):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f"tok{i} "}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        events.append(_event({**base, "model": MODEL, "choices": [choice]}))
    last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    events.append(_event({**base, "model": MODEL, "choices": [last]}))
    usage = {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 62}
    events.append(_event({**base, "model": MODEL, "choices": [], "usage": usage}))
    events.append(_event("[DONE]"))
    return events


def _chunked(parts: list[bytes]) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\n\r\n"


_JSON = _completion()
RESPONSE_JSON = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req-bench\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_JSON), _JSON)
)
RESPONSE_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nx-request-id: req-bench\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(_stream_body())
)
RESPONSE_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value.strip())
                elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            start = end + 4
            if chunked:
                stop = self.buf.find(b"\r\n0\r\n\r\n", start)
                if stop < 0:
                    return
                body, consumed = self.buf[start:stop], stop + 7
            else:
                if len(self.buf) - start < length:
                    return
                body, consumed = self.buf[start : start + length], start + length
            self.buf = self.buf[consumed:]
            path = head.split(b" ", 2)[1] if b" " in head else b""
            assert self.transport is not None
            if b"chat/completions" not in path:
                self.transport.write(RESPONSE_404)
            elif _STREAM_RE.search(body):
                self.transport.write(RESPONSE_STREAM)
            else:
                self.transport.write(RESPONSE_JSON)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
