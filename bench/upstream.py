"""An OpenAI-shaped upstream that answers at once, so the proxy is what is measured.

``POST .../chat/completions`` answers a fixed small completion with usage, or,
when the body asks for ``"stream": true``, 50 SSE content chunks, a usage chunk
and ``[DONE]`` (chunked transfer encoding, as OpenAI does).
``POST .../embeddings`` answers one 1536-dimension vector, base64 encoded (what
the OpenAI SDK asks for unless told otherwise), with usage.
``POST .../responses`` answers a completed Responses API object with usage, or,
streamed, the Responses API's event sequence with 50 text deltas, ending in
``response.completed`` (which carries the usage). Anything else is a 404.
HTTP/1.1 keep-alive over a bare :class:`asyncio.Protocol` with canned
answers: no framework, no JSON parsing, so it costs next to nothing per call.

Run: ``python bench/upstream.py PORT`` (prints ``ready`` once listening).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import sys

MODEL = "gpt-4o-mini-2024-07-18"
EMBED_MODEL = "text-embedding-3-small"
EMBED_DIMENSIONS = 1536
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


def _embeddings() -> bytes:
    # Little-endian float32s, as OpenAI's base64 answers carry them; only the size
    # (8 kB of base64, the usual answer to one text) matters to a proxy.
    vector = struct.pack(
        f"<{EMBED_DIMENSIONS}f", *((i % 97 - 48) / 1000 for i in range(EMBED_DIMENSIONS))
    )
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": base64.b64encode(vector).decode()}
        ],
        "model": EMBED_MODEL,
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _response_object(
    status: str, text: str | None, usage: dict[str, object] | None
) -> dict[str, object]:
    """A Responses API object as OpenAI returns it (the fields the SDKs read)."""
    output: list[dict[str, object]] = []
    if text is not None:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        output.append(
            {
                "id": "msg_bench",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    return {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": 16,
        "model": MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _responses_usage(output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12 + output_tokens,
    }


def _responses() -> bytes:
    text = "Hello from the bench upstream."
    body = _response_object("completed", text, _responses_usage(7))
    return json.dumps(body, separators=(",", ":")).encode()


def _typed(kind: str, payload: dict[str, object], seq: int) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": seq, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _responses_stream_body() -> list[bytes]:
    """The Responses API's events for one text answer: 50 deltas between the framing."""
    deltas = [f"tok{i} " for i in range(STREAM_CHUNKS)]
    text = "".join(deltas)
    item = {"id": "msg_bench", "type": "message", "status": "in_progress", "role": "assistant"}
    where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {"type": "output_text", "text": text, "annotations": []}
    steps: list[tuple[str, dict[str, object]]] = [
        ("response.created", {"response": _response_object("in_progress", None, None)}),
        ("response.in_progress", {"response": _response_object("in_progress", None, None)}),
        ("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
        ("response.content_part.added", {**where, "part": empty_part}),
    ]
    steps += [("response.output_text.delta", {**where, "delta": d}) for d in deltas]
    done_item = {**item, "status": "completed", "content": [done_part]}
    final = _response_object("completed", text, _responses_usage(STREAM_CHUNKS))
    steps += [
        ("response.output_text.done", {**where, "text": text}),
        ("response.content_part.done", {**where, "part": done_part}),
        ("response.output_item.done", {"output_index": 0, "item": done_item}),
        ("response.completed", {"response": final}),
    ]
    return [_typed(kind, payload, seq) for seq, (kind, payload) in enumerate(steps)]


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


def _json_answer(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req-bench\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


RESPONSE_EMBEDDINGS = _json_answer(_embeddings())
RESPONSE_RESPONSES = _json_answer(_responses())
RESPONSE_RESPONSES_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"x-request-id: req-bench\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunked(_responses_stream_body())
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
            path = head.split(b" ", 2)[1].split(b"?", 1)[0] if b" " in head else b""
            assert self.transport is not None
            if b"chat/completions" in path:
                if _STREAM_RE.search(body):
                    self.transport.write(RESPONSE_STREAM)
                else:
                    self.transport.write(RESPONSE_JSON)
            elif path.endswith(b"/embeddings"):
                self.transport.write(RESPONSE_EMBEDDINGS)
            elif path.endswith(b"/responses"):
                stream = _STREAM_RE.search(body)
                self.transport.write(RESPONSE_RESPONSES_STREAM if stream else RESPONSE_RESPONSES)
            else:
                self.transport.write(RESPONSE_404)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
