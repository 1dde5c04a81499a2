"""The fake's account: files, batches, vector stores and stored responses, in memory.

::

    FakeUpstream ──▶ routes (table, inference) ──▶ store (objects kept between calls)

One :class:`Store` per :class:`~.upstream.FakeUpstream`, shared by Direct and
both Azure dialects. A file keeps its size and sha256, and its bytes only up to
:data:`KEEP_FILE`: larger files read back as :func:`~.replies.filler` of the
same size seeded by their sha256, so a 200 MB upload costs no memory. Batches
stay ``validating`` until cancelled (the cancel answers ``cancelling``, the batch
is ``cancelled`` from then on). Also here: the small answer helpers every
handler shares (400s, 404s, cursor pages, binary downloads).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import replies as fr
from . import scenarios as fs
from .records import Call

if TYPE_CHECKING:
    from .upstream import FakeUpstream

__all__ = ["KEEP_FILE", "Store", "StoredFile"]

KEEP_FILE = 64 * 1024
"""Uploaded files up to this size keep their bytes, so their content reads back verbatim."""


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    size: int
    sha256: str
    content: bytes | None
    """The bytes, for files of at most :data:`KEEP_FILE` bytes."""

    def object(self) -> dict[str, Any]:
        return file_object(self.id, filename=self.filename, purpose=self.purpose, size=self.size)


@dataclass
class Store:
    """What the fake's one account holds; objects are JSON as last answered."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    vector_stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)


def file_object(id: str, *, filename: str, purpose: str, size: int) -> dict[str, Any]:
    return {
        "id": id,
        "object": "file",
        "bytes": size,
        "created_at": fs.CREATED,
        "expires_at": fs.CREATED + 30 * 86400 if purpose == "batch" else None,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


def page(items: list[dict[str, Any]], query: Mapping[str, str], limit: int) -> dict[str, Any]:
    """A cursor page of ``items`` (oldest first), newest first unless ``order=asc``.

    Raises :class:`ValueError` for a ``limit`` that is not a positive integer.
    """
    if query.get("order", "desc") == "desc":
        items = items[::-1]
    after = query.get("after")
    ids = [item["id"] for item in items]
    if after in ids:
        items = items[ids.index(after) + 1 :]
    limit = int(query.get("limit", limit))
    if limit < 1:
        raise ValueError(limit)
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


# -- answers every handler shares ----------------------------------------------------


def bad(up: FakeUpstream, call: Call, message: str, param: str | None = None) -> web.Response:
    return up._json(call, 400, fs.openai_error(message, "invalid_request_error", param))


def missing(up: FakeUpstream, call: Call, param: str) -> web.Response:
    return bad(up, call, f"Missing required parameter: '{param}'.", param)


def lookup(
    up: FakeUpstream, call: Call, table: dict[str, Any], key: str, message: str
) -> Any | web.Response:
    """``table[match_info[key]]``, or OpenAI's 404 with ``message`` (``{}`` for the id)."""
    wanted = call.request.match_info[key]
    if wanted in table:
        return table[wanted]
    return up._json(call, 404, fs.not_found(message.format(wanted), key.rpartition("_")[2]))


def list_page(
    up: FakeUpstream, call: Call, items: list[dict[str, Any]], limit: int
) -> web.Response:
    try:
        return up._json(call, 200, page(items, call.request.query, limit))
    except ValueError:
        return bad(up, call, "Invalid 'limit': expected a positive integer.", "limit")


async def download(
    up: FakeUpstream, call: Call, size: int, chunks: Iterator[bytes], content_type: str
) -> web.StreamResponse:
    """Stream ``chunks`` out as one binary body: holds and mid-stream scenarios apply."""
    cut = min(2, math.ceil(size / fr.piece_size(size)))
    frames = (("content", chunk) for chunk in chunks)
    return await up._write(call, frames, cut, content_type=content_type, hold=True)


# -- stored responses -------------------------------------------------------------------


async def responses_retrieve(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.responses, "response_id", "Response with id '{}' not found.")
    return found if isinstance(found, web.Response) else up._json(call, 200, found)


async def responses_delete(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.responses, "response_id", "Response with id '{}' not found.")
    if isinstance(found, web.Response):
        return found
    del up.store.responses[found["id"]]
    return up._json(call, 200, {"id": found["id"], "object": "response", "deleted": True})


# -- files ------------------------------------------------------------------------------

_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_NO_FILE = "No such File object: {}"


async def files_create(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    assert call.form is not None
    upload = call.form.file("file")
    if upload is None:
        return missing(up, call, "file")
    purpose = body.get("purpose")
    if purpose is None:
        return missing(up, call, "purpose")
    if purpose not in _PURPOSES:
        message = f"'{purpose}' is not one of {list(_PURPOSES)} - 'purpose'"
        return bad(up, call, message, "purpose")
    stored = StoredFile(
        f"file-{call.number}",
        upload.filename or "file",
        purpose,
        upload.size,
        upload.sha256,
        call.form.contents.get("file"),
    )
    up.store.files[stored.id] = stored
    return up._json(call, 200, stored.object())


async def files_list(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    purpose = call.request.query.get("purpose")
    found = [f.object() for f in up.store.files.values() if purpose in (None, f.purpose)]
    return list_page(up, call, found, 10_000)


async def files_retrieve(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    found = lookup(up, call, up.store.files, "file_id", _NO_FILE)
    return found if isinstance(found, web.Response) else up._json(call, 200, found.object())


async def files_delete(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    found = lookup(up, call, up.store.files, "file_id", _NO_FILE)
    if isinstance(found, web.Response):
        return found
    del up.store.files[found.id]
    return up._json(call, 200, {"id": found.id, "object": "file", "deleted": True})


async def files_content(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    found = lookup(up, call, up.store.files, "file_id", _NO_FILE)
    if isinstance(found, web.Response):
        return found
    piece = fr.piece_size(found.size)
    chunks: Iterator[bytes]
    if found.content is not None:
        content = found.content
        chunks = (content[i : i + piece] for i in range(0, len(content), piece))
    else:
        chunks = fr.filler(found.size, bytes.fromhex(found.sha256), piece)
    return await download(up, call, found.size, chunks, "application/octet-stream")


# -- batches and vector stores --------------------------------------------------------------


async def batches_create(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            return missing(up, call, name)
    source = up.store.files.get(body["input_file_id"])
    if source is None:
        message = f"Invalid 'input_file_id': '{body['input_file_id']}'. No such file."
        return bad(up, call, message, "input_file_id")
    lines = source.content.splitlines() if source.content is not None else []
    total = sum(1 for line in lines if line.strip())
    batch = {
        "id": f"batch_{call.number}",
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": source.id,
        "completion_window": body["completion_window"],
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": fs.CREATED,
        "in_progress_at": None,
        "expires_at": fs.CREATED + 86400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": total, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    up.store.batches[batch["id"]] = batch
    return up._json(call, 200, batch)


_NO_BATCH = "No batch found with id '{}'."


async def batches_retrieve(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.batches, "batch_id", _NO_BATCH)
    return found if isinstance(found, web.Response) else up._json(call, 200, found)


async def batches_list(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    return list_page(up, call, list(up.store.batches.values()), 20)


async def batches_cancel(up: FakeUpstream, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    """Answer ``cancelling``, as OpenAI does; the stored batch is ``cancelled`` from then on."""
    found = lookup(up, call, up.store.batches, "batch_id", _NO_BATCH)
    if isinstance(found, web.Response):
        return found
    if found["status"] not in ("validating", "in_progress", "finalizing"):
        message = f"Cannot cancel a batch with status '{found['status']}'."
        return up._json(call, 409, fs.openai_error(message, "invalid_request_error"))
    found |= {"status": "cancelled", "cancelling_at": fs.CREATED, "cancelled_at": fs.CREATED}
    return up._json(call, 200, found | {"status": "cancelling", "cancelled_at": None})


_NO_STORE = "No vector store found with id '{}'."


def _vector_store(store: dict[str, Any], body: dict[str, Any]) -> None:
    """Apply ``name``, ``metadata`` and ``expires_after`` from a create or update body."""
    for key in ("name", "metadata", "expires_after"):
        if key in body:
            store[key] = body[key]
    if isinstance(store.get("expires_after"), dict):
        days = store["expires_after"].get("days", 0)
        store["expires_at"] = fs.CREATED + 86400 * days if isinstance(days, int) else None


async def vector_stores_create(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    ids = body.get("file_ids") or []
    if not isinstance(ids, list):
        return bad(up, call, "Invalid type for 'file_ids': expected an array.", "file_ids")
    known = [up.store.files[i] for i in ids if i in up.store.files]
    store: dict[str, Any] = {
        "id": f"vs_{call.number}",
        "object": "vector_store",
        "created_at": fs.CREATED,
        "name": "",
        "usage_bytes": sum(f.size for f in known),
        "file_counts": {
            "in_progress": 0,
            "completed": len(known),
            "failed": len(ids) - len(known),
            "cancelled": 0,
            "total": len(ids),
        },
        "status": "completed",
        "expires_after": None,
        "expires_at": None,
        "last_active_at": fs.CREATED,
        "metadata": {},
    }
    _vector_store(store, body)
    up.store.vector_stores[store["id"]] = store
    return up._json(call, 200, store)


async def vector_stores_list(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    return list_page(up, call, list(up.store.vector_stores.values()), 20)


async def vector_stores_retrieve(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.vector_stores, "vector_store_id", _NO_STORE)
    return found if isinstance(found, web.Response) else up._json(call, 200, found)


async def vector_stores_update(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.vector_stores, "vector_store_id", _NO_STORE)
    if isinstance(found, web.Response):
        return found
    _vector_store(found, body)
    return up._json(call, 200, found)


async def vector_stores_delete(
    up: FakeUpstream, call: Call, body: dict[str, Any]
) -> web.StreamResponse:
    found = lookup(up, call, up.store.vector_stores, "vector_store_id", _NO_STORE)
    if isinstance(found, web.Response):
        return found
    del up.store.vector_stores[found["id"]]
    return up._json(
        call, 200, {"id": found["id"], "object": "vector_store.deleted", "deleted": True}
    )
