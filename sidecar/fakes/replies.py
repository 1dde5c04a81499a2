"""The successful answers of :mod:`.routes`: everything beyond chat completions.

::

    routes (handlers, store) ──▶ replies (pure shapes) ──▶ scenarios (chat, errors)

Pure functions of the request, like :mod:`.scenarios`: no I/O, no clock.
Each body copies what api.openai.com sends closely enough for the official SDK
to parse it (types under ``openai/types``). Counting rules, so tests can
compute what to expect:

* text tokens: ``len(text) // 4 + 1`` per embedding input or prompt; Responses
  input is counted like chat (all text // 4 + 7); one reply piece is one token;
* replies echo: ``"Echo: "`` + the first 40 characters of the last user text;
* embeddings: unit vectors seeded by the sha256 of each input, as float32;
* binary content: :func:`filler`, a 64 KiB block derived from a seed, repeated.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import scenarios as fs

__all__ = [
    "CATALOG",
    "ResponsesReply",
    "TextReply",
    "embeddings",
    "filler",
    "images",
    "moderation",
    "piece_size",
    "transcription",
    "vector",
]

CATALOG = frozenset(
    {
        "dall-e-3",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-tts",
        "gpt-4o-transcribe",
        "gpt-3.5-turbo-instruct",
        "gpt-image-1",
        "omni-moderation-latest",
        "text-embedding-3-large",
        "text-embedding-3-small",
        "text-embedding-ada-002",
        "tts-1",
        "whisper-1",
    }
)
"""Direct's models beyond chat (``GET /v1/models`` adds chat's aliases and snapshots)."""

_BLOCK = 64 * 1024


def tokens(text: str) -> int:
    return len(text) // 4 + 1


def echo(text: str) -> str:
    return "Echo: " + text[:40]


# -- embeddings --------------------------------------------------------------


def vector(key: bytes, dims: int) -> list[float]:
    """A unit vector of ``dims`` float32 values, a function of ``key`` alone."""
    raw = b"".join(
        hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range(math.ceil(dims / 16))
    )
    values = [v / 32768 - 1 for v in struct.unpack(f">{dims}H", raw[: 2 * dims])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Through float32 and back: the float list and the base64 form hold the same numbers.
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in values))))


def _embedding_inputs(value: Any) -> list[tuple[bytes, int]] | None:
    """Each input's (seed, token count), or ``None`` when ``input`` has no valid shape."""
    if isinstance(value, str) and value:
        return [(value.encode(), tokens(value))]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, int) for v in value):
        return [(repr(value).encode(), len(value))]
    out = []
    for item in value:
        if isinstance(item, str) and item:
            out.append((item.encode(), tokens(item)))
        elif isinstance(item, list) and item and all(isinstance(v, int) for v in item):
            out.append((repr(item).encode(), len(item)))
        else:
            return None
    return out


def embeddings(body: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    """The ``list`` of embeddings, floats or base64 float32 as asked; ``None`` for a bad input."""
    inputs = _embedding_inputs(body.get("input"))
    if inputs is None:
        return None
    dims = body.get("dimensions")
    if not isinstance(dims, int) or not 0 < dims <= 3072:
        dims = 3072 if "3-large" in model else 1536
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, (seed, _) in enumerate(inputs):
        values = vector(seed, dims)
        encoded: Any = values
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    used = sum(count for _, count in inputs)
    usage = {"prompt_tokens": used, "total_tokens": used}
    return {"object": "list", "data": data, "model": model, "usage": usage}


# -- Responses API -------------------------------------------------------------


def _input_text(value: Any) -> tuple[str, str]:
    """(all text, the last user text) of a Responses ``input``: a string or a list of items."""
    if isinstance(value, str):
        return value, value
    items = [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []
    texts = [fs.message_text(i.get("content")) for i in items]
    user = [fs.message_text(i.get("content")) for i in items if i.get("role") == "user"]
    return "".join(texts), user[-1] if user else ""


def _event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\n".encode() + fs.sse(payload)


@dataclass(frozen=True, slots=True)
class ResponsesReply:
    """The deterministic answer to one ``POST /responses``, plain or streamed."""

    id: str
    model: str
    body: Mapping[str, Any]
    pieces: list[str]
    complete: bool
    input_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @classmethod
    def build(
        cls,
        body: Mapping[str, Any],
        *,
        id: str,
        model: str,
        chunks: int,
        cached_tokens: int,
        reasoning_tokens: int,
    ) -> ResponsesReply:
        everything, user = _input_text(body.get("input"))
        instructions = body.get("instructions")
        everything += instructions if isinstance(instructions, str) else ""
        pieces = fs.split_text(echo(user), chunks)
        limit = body.get("max_output_tokens")
        complete = not (isinstance(limit, int) and 0 < limit < len(pieces))
        if not complete:
            pieces = pieces[:limit]
        prompt = len(everything) // 4 + 7
        return cls(id, model, body, pieces, complete, prompt, cached_tokens, reasoning_tokens)

    @property
    def message_id(self) -> str:
        return "msg_" + self.id.removeprefix("resp_")

    @property
    def usage(self) -> dict[str, Any]:
        output = len(self.pieces) + self.reasoning_tokens
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + output,
        }

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _message(self, done: bool) -> dict[str, Any]:
        status = "in_progress" if not done else "completed" if self.complete else "incomplete"
        content = [self._part("".join(self.pieces))] if done else []
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def response(self, done: bool = True) -> dict[str, Any]:
        """The ``response`` object: finished, or as it looks while in progress."""
        get = self.body.get
        status = "in_progress" if not done else "completed" if self.complete else "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": fs.CREATED,
            "status": status,
            "background": get("background") is True,
            "completed_at": fs.CREATED if status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if done and not self.complete
            else None,
            "instructions": get("instructions"),
            "max_output_tokens": get("max_output_tokens"),
            "max_tool_calls": get("max_tool_calls"),
            "metadata": get("metadata") or {},
            "model": self.model,
            "output": [self._message(True)] if done else [],
            "parallel_tool_calls": get("parallel_tool_calls", True),
            "previous_response_id": get("previous_response_id"),
            "prompt_cache_key": get("prompt_cache_key"),
            "reasoning": get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": get("safety_identifier"),
            "service_tier": get("service_tier") or "default",
            "store": get("store", True),
            "temperature": get("temperature", 1.0),
            "text": get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": get("tool_choice", "auto"),
            "tools": get("tools") or [],
            "top_logprobs": get("top_logprobs", 0),
            "top_p": get("top_p", 1.0),
            "truncation": get("truncation") or "disabled",
            "usage": self.usage if done else None,
            "user": get("user"),
        }

    def frames(self) -> list[tuple[str, bytes]]:
        """The SSE events, ``event:`` line and all, tagged ``pre``, ``content`` or ``post``."""
        events: list[tuple[str, dict[str, Any]]] = []

        def add(kind: str, type_: str, **fields: Any) -> None:
            events.append((kind, {"type": type_, "sequence_number": len(events), **fields}))

        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        text = "".join(self.pieces)
        add("pre", "response.created", response=self.response(done=False))
        add("pre", "response.in_progress", response=self.response(done=False))
        add("pre", "response.output_item.added", output_index=0, item=self._message(False))
        add("pre", "response.content_part.added", **where, part=self._part(""))
        for piece in self.pieces:
            add("content", "response.output_text.delta", **where, delta=piece, logprobs=[])
        add("post", "response.output_text.done", **where, text=text, logprobs=[])
        add("post", "response.content_part.done", **where, part=self._part(text))
        add("post", "response.output_item.done", output_index=0, item=self._message(True))
        final = "response.completed" if self.complete else "response.incomplete"
        add("post", final, response=self.response())
        return [(kind, _event(payload)) for kind, payload in events]


INBAND_RESPONSES_ERROR = _event(
    {
        "type": "error",
        "code": "server_error",
        "message": "The server had an error while processing your request.",
        "param": None,
        "sequence_number": 0,
    }
)
"""The Responses API's own in-band failure event (chat's is a bare ``error`` object)."""


# -- legacy completions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextReply:
    """The answer to a legacy ``POST /completions``: echo the prompt, like chat."""

    id: str
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int

    @classmethod
    def build(cls, body: Mapping[str, Any], *, id: str, model: str, chunks: int) -> TextReply:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = next((p for p in prompt if isinstance(p, str)), "")
        prompt = prompt if isinstance(prompt, str) else ""
        pieces, finish = fs.split_text(echo(prompt), chunks), "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        return cls(id, model, pieces, finish, tokens(prompt))

    @property
    def usage(self) -> dict[str, Any]:
        done = len(self.pieces)
        total = self.prompt_tokens + done
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": total,
        }

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": fs.CREATED,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": fs.SYSTEM_FINGERPRINT,
        }

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    def completion(self) -> dict[str, Any]:
        text = "".join(self.pieces)
        return self._object([self._choice(text, self.finish_reason)]) | {"usage": self.usage}

    def frames(self, include_usage: bool) -> list[tuple[str, bytes]]:
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        frames = [
            ("content", fs.sse(self._object([self._choice(p, None)]) | extra)) for p in self.pieces
        ]
        frames.append(
            ("post", fs.sse(self._object([self._choice("", self.finish_reason)]) | extra))
        )
        if include_usage:
            frames.append(("post", fs.sse(self._object([]) | {"usage": self.usage})))
        frames.append(("post", b"data: [DONE]\n\n"))
        return frames


# -- moderations, images, audio ---------------------------------------------------

_CATEGORIES = (
    *("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit"),
    *("illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual"),
    *("sexual/minors", "violence", "violence/graphic"),
)
FLAG = "[flagged]"
"""Moderation flags ``violence`` for an input containing this marker, nothing otherwise."""


def moderation(body: Mapping[str, Any], *, id: str, model: str) -> dict[str, Any] | None:
    value = body.get("input")
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = list(value)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        inputs = [" ".join(str(v.get("text", "")) for v in value)]  # one multimodal input
    else:
        return None
    results = []
    for text in inputs:
        hit = FLAG in text
        flags = {c: hit and c == "violence" for c in _CATEGORIES}
        scores = {c: 0.97 if flags[c] else 0.0001 for c in _CATEGORIES}
        results.append(
            {
                "flagged": hit,
                "categories": flags,
                "category_scores": scores,
                "category_applied_input_types": {c: ["text"] for c in _CATEGORIES},
            }
        )
    return {"id": id, "model": model, "results": results}


def png(seed: bytes, side: int = 8) -> bytes:
    """A valid ``side``×``side`` PNG of one colour taken from ``seed``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + seed[:3] * side
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(row * side, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


_IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160}


def images(body: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    prompt, n = body.get("prompt"), body.get("n", 1)
    if not isinstance(prompt, str) or not prompt or not isinstance(n, int) or not 0 < n <= 10:
        return None
    data = []
    for i in range(n):
        encoded = base64.b64encode(png(hashlib.sha256(f"{i}:{prompt}".encode()).digest()))
        item = {"b64_json": encoded.decode()}
        if body.get("response_format") == "url":  # a URL the client can read without us
            item = {"url": "data:image/png;base64," + item["b64_json"]}
        if model.startswith("dall-e-3"):
            item["revised_prompt"] = prompt
        data.append(item)
    reply: dict[str, Any] = {"created": fs.CREATED, "data": data}
    if model.startswith("gpt-image"):
        asked = body.get("quality")
        quality = asked if isinstance(asked, str) and asked in _IMAGE_TOKENS else "medium"
        text, out = tokens(prompt), _IMAGE_TOKENS[quality] * n
        reply |= {
            "background": "opaque",
            "output_format": "png",
            "quality": quality,
            "size": body.get("size") or "1024x1024",
            "usage": {
                "input_tokens": text,
                "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
                "output_tokens": out,
                "total_tokens": text + out,
            },
        }
    return reply


def transcription(
    fields: Mapping[str, str], *, filename: str | None, size: int, model: str, task: str
) -> tuple[str, bytes]:
    """(content type, body) of a transcription or translation of ``size`` bytes of audio.

    The text names the file and its size, so a test sees what the fake read.
    Audio lasts ``size / 16000`` seconds (16 kB/s); whisper reports that
    duration as usage, the gpt-4o models tokens (one audio token per 1000 bytes).
    """
    text = f"Fake {task} of {filename or 'audio'}: {size} bytes."
    seconds = round(size / 16000, 3)
    fmt = fields.get("response_format", "json")
    if fmt == "text":
        return "text/plain; charset=utf-8", (text + "\n").encode()
    if fmt in ("srt", "vtt"):
        end = f"{int(seconds // 3600):02}:{int(seconds % 3600 // 60):02}:{seconds % 60:06.3f}"
        cue = f"00:00:00.000 --> {end}\n{text}\n"
        if fmt == "srt":
            return "text/plain; charset=utf-8", f"1\n{cue.replace('.', ',', 2)}\n".encode()
        return "text/vtt; charset=utf-8", f"WEBVTT\n\n{cue}\n".encode()
    usage: dict[str, Any]
    if model.startswith("whisper"):
        usage = {"type": "duration", "seconds": math.ceil(seconds)}
    else:
        audio, out = size // 1000 + 1, tokens(text)
        usage = {
            "type": "tokens",
            "input_tokens": audio,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
            "output_tokens": out,
            "total_tokens": audio + out,
        }
    payload: dict[str, Any] = {"text": text, "usage": usage}
    if fmt == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text}
        segment |= {"tokens": [], "temperature": 0.0, "avg_logprob": -0.1}
        segment |= {"compression_ratio": 1.0, "no_speech_prob": 0.0}
        language = fields.get("language", "english") if task == "transcription" else "english"
        verb = {"transcription": "transcribe", "translation": "translate"}.get(task, task)
        payload = {"task": verb} | payload
        payload |= {"language": language, "duration": seconds, "segments": [segment]}
    return "application/json", fs.dumps(payload)


# -- binary content ------------------------------------------------


def piece_size(size: int) -> int:
    """How much of a ``size``-byte download goes in one write: at least 8 of them, ≤ 64 KiB."""
    return min(_BLOCK, max(1024, size // 8))


def filler(size: int, seed: bytes, piece: int) -> Iterator[bytes]:
    """``size`` deterministic bytes in pieces of ``piece``: a 64 KiB block of ``seed``, repeated.

    Byte ``i`` is the same whatever ``piece`` is, and only one block is ever held.
    """
    block = b"".join(
        hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(_BLOCK // 32)
    )
    sent = 0
    while sent < size:
        n, start = min(piece, size - sent, _BLOCK), sent % _BLOCK
        chunk = block[start : start + n]
        yield chunk if len(chunk) == n else chunk + block[: n - len(chunk)]
        sent += n
