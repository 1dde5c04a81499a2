"""What :mod:`.upstream` keeps of each request, and how it reads bodies without holding uploads.

::

    FakeUpstream._handle ──▶ routes (which endpoint) ──▶ records (read + record the body)

A JSON body is parsed and kept in :attr:`RecordedRequest.body` (whole up to
:data:`KEEP_JSON` bytes). A ``multipart/form-data`` body is read part by part
in chunks of :data:`CHUNK` bytes while a byte count and a sha256 run along, so
a 200 MB upload costs the fake about one chunk of memory: text fields of up to
:data:`FORM_TEXT` bytes land in :attr:`RecordedRequest.form`, every other part
only as a :class:`FilePart` (field, file name, type, size, sha256). Keys and
bodies are never logged; the key is kept as a fingerprint only.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError, PayloadEncodingError

from . import scenarios as fs

if TYPE_CHECKING:
    from .routes import Route

__all__ = [
    "CHUNK",
    "FORM_TEXT",
    "KEEP_JSON",
    "BadBody",
    "Call",
    "FilePart",
    "Form",
    "Misuse",
    "RecordedRequest",
    "fingerprint",
    "media_type",
    "number",
    "read_form",
    "read_json",
]

CHUNK = 64 * 1024
"""Bytes read (and written) per step when streaming a body: the fake's memory per upload."""
KEEP_JSON = 1024 * 1024
"""A JSON body up to this size is kept whole; a larger one only by its short scalar fields."""
FORM_TEXT = 4096
"""A multipart field without a file name up to this size is kept as text in ``form``."""
MAX_JSON = 64 * 1024 * 1024
"""The largest JSON body accepted (read whole, it must be parsed); uploads have no limit."""


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def media_type(header: str | None) -> str | None:
    """``multipart/form-data`` of ``multipart/form-data; boundary=...``: the boundary is random."""
    if not header:
        return None
    return header.partition(";")[0].strip().lower() or None


@dataclass(frozen=True, slots=True)
class FilePart:
    """One multipart part kept by its measure, never its bytes."""

    name: str
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    """The hex digest of the part's bytes."""


@dataclass
class RecordedRequest:
    """What upstream saw of one request. Holds a fingerprint of the key, never the key.

    ``outcome`` is ``pending`` while it runs, then ``ok``, ``error:<status>``,
    ``reset``, ``cancelled`` (the client left), ``truncated``,
    ``inband-error`` or ``garbage``. ``endpoint`` names the route
    (``chat.completions``, ``embeddings``, ``files.create``...; empty for an
    unknown URL).
    """

    variant: str
    path: str
    key_fingerprint: str = ""
    model: str | None = None
    deployment: str | None = None
    stream: bool = False
    include_usage: bool = False
    scenario: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    """The JSON body: whole up to :data:`KEEP_JSON` bytes, else its short scalar fields."""
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    outcome: str = "pending"
    method: str = "POST"
    endpoint: str = ""
    query: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    """The media type of the body, without parameters (a multipart boundary is random)."""
    body_bytes: int = 0
    """The size of the body as read (after any Content-Encoding was undone)."""
    form: dict[str, str] = field(default_factory=dict)
    """Small text fields of a multipart body."""
    uploads: list[FilePart] = field(default_factory=list)
    """The other parts of a multipart body (files, big fields), by measure."""


class Misuse(Exception):
    """A malformed ``x-fake-*`` header: answered 400 so the test's mistake is loud."""


class BadBody(Exception):
    """A body the API would refuse: answered with ``status`` and an OpenAI error."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(payload["error"]["message"])
        self.status = status
        self.payload = payload


@dataclass
class Form:
    """A multipart body as read: text ``fields``, measured ``files``, small files' bytes."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)
    """The bytes of file parts no larger than the ``keep`` asked for, by field name."""

    def file(self, name: str) -> FilePart | None:
        return next((part for part in self.files if part.name == name), None)


@dataclass
class Call:
    """One request on its way through the fake."""

    request: web.Request
    rec: RecordedRequest
    number: int
    api_version: str = ""
    delay: float = 0.5
    """``x-fake-delay``, for the scenarios that wait."""
    form: Form | None = None
    route: Route | None = None
    """Which endpoint and dialect; ``None`` for an unknown URL."""


def number(request: web.Request, name: str, default: float) -> float:
    """The non-negative number in header ``name``; :class:`Misuse` if it is not one."""
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise Misuse(f"{name} must be a non-negative number, not {raw!r}")
    return value


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    """The short scalar fields of a huge body: enough to assert on, never megabytes."""
    return {
        k: v
        for k, v in body.items()
        if v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) < 256)
    }


async def read_json(call: Call) -> dict[str, Any]:
    """The JSON object body (``{}`` when there is none), recorded; :class:`BadBody` otherwise."""
    rec = call.rec
    try:
        raw = await call.request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        message = f"Request too large: the body exceeds {MAX_JSON} bytes."
        raise BadBody(413, fs.openai_error(message, "invalid_request_error")) from exc
    rec.body_bytes = len(raw)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadBody(400, fs.INVALID_JSON)
    rec.body = body if len(raw) <= KEEP_JSON else _summary(body)
    return body


async def read_form(call: Call, keep: int = 0) -> Form:
    """Read a multipart body streaming, recording fields and file measures.

    The bytes of a file part are kept only when it has at most ``keep`` of them.
    """
    request, rec = call.request, call.rec
    if rec.content_type != "multipart/form-data":
        message = (
            f"Invalid Content-Type header ({rec.content_type}), expected multipart/form-data. "
            "(HINT: If you're using curl, you can pass in the `-F` or `--form` option.)"
        )
        raise BadBody(400, fs.openai_error(message, "invalid_request_error"))
    form = Form()
    call.form = form
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):  # nested multipart: not OpenAI's
                await part.release()
                continue
            digest, size, head = hashlib.sha256(), 0, bytearray()
            limit = keep if part.filename is not None else FORM_TEXT
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                digest.update(chunk)
                if size <= limit:
                    head += chunk
            name = part.name or ""
            text = _as_text(head) if part.filename is None and size <= FORM_TEXT else None
            if text is not None:
                form.fields[name] = text
                continue
            kind = media_type(part.headers.get("Content-Type"))
            form.files.append(FilePart(name, part.filename, kind, size, digest.hexdigest()))
            if part.filename is not None and size <= keep:
                form.contents[name] = bytes(head)
    except PayloadEncodingError as exc:  # the body broke off: the client went away
        raise ConnectionResetError(str(exc)) from exc
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's words for a malformed body
        message = f"Malformed multipart body: {exc}"
        raise BadBody(400, fs.openai_error(message, "invalid_request_error")) from exc
    finally:
        rec.body_bytes = request.content.total_bytes
        rec.form, rec.uploads = form.fields, form.files
    return form


def _as_text(data: bytearray) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None
