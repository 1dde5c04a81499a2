"""What a request to the OpenAI API is: its operation, and where it goes upstream.

The sidecar stands in for ``api.openai.com`` (and for an Azure OpenAI
resource), so every method and path an app's SDK may call reaches the runner.
:func:`operation_for` names the call from its method and path (pure, table
driven): how its usage is read (chat-like, Responses API, embeddings, or
none), which GenAI operation it is for telemetry, whether it creates
something upstream (then a retry is only safe when the request surely did not
arrive, or with an ``Idempotency-Key``), whether its body is an upload, and
whether Azure serves it per deployment or per resource.
:func:`upstream_url` then maps it onto the runtime's variant:

=================================  =========================================
app path (under ``/v1``)           Azure route (``api-version`` query added)
=================================  =========================================
``/chat/completions``,             ``/openai/deployments/{d}/<path>``
``/completions``, ``/embeddings``,
``/audio/*``, ``/images/*``
``/files...``, ``/batches...``,    ``/openai/<path>`` (the resource)
``/responses...``, ``/models...``,
anything else
=================================  =========================================

Apps written for Azure call ``/openai/deployments/{d}/...`` or Azure's GA
``/openai/v1/...`` routes themselves; those keep their shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

__all__ = ["Operation", "UsageShape", "operation_for", "upstream_url"]

UsageShape = Literal["chat", "responses", "embeddings"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One kind of API call."""

    name: str
    """A stable label: ``chat``, ``embeddings``, ``files.create``, ``other``..."""
    gen_ai: str | None = None
    """``gen_ai.operation.name`` for inference calls; None for the rest of the API."""
    usage: UsageShape | None = None
    """How the answer reports token usage, if it does."""
    creates: bool = False
    """It creates something upstream: not to be repeated blindly."""
    upload: bool = False
    """Its body may be a large upload (multipart): streamed, with the upload limit."""
    per_deployment: bool = False
    """Azure serves it under ``/openai/deployments/{deployment}/``."""

    @property
    def inference(self) -> bool:
        return self.gen_ai is not None


OTHER = Operation("other")
_READ = Operation("read")
_DELETE = Operation("delete")
_CREATE = Operation("create", creates=True)

# (method, path pattern under /v1) -> operation; the first match wins.
_TABLE: tuple[tuple[str, re.Pattern[str], Operation], ...] = tuple(
    (method, re.compile(pattern), operation)
    for method, pattern, operation in (
        ("POST", r"/chat/completions", Operation("chat", "chat", "chat", per_deployment=True)),
        (
            "POST",
            r"/completions",
            Operation("completions", "text_completion", "chat", per_deployment=True),
        ),
        (
            "POST",
            r"/embeddings",
            Operation("embeddings", "embeddings", "embeddings", per_deployment=True),
        ),
        # Stored by default (store: true): a retry after it arrived would store twice.
        ("POST", r"/responses", Operation("responses", "chat", "responses", creates=True)),
        ("POST", r"/moderations", Operation("moderations", per_deployment=False)),
        ("POST", r"/images/generations", Operation("images", per_deployment=True)),
        (
            "POST",
            r"/images/(edits|variations)",
            Operation("images", upload=True, per_deployment=True),
        ),
        (
            "POST",
            r"/audio/(transcriptions|translations)",
            Operation("audio.transcriptions", upload=True, per_deployment=True),
        ),
        ("POST", r"/audio/speech", Operation("audio.speech", per_deployment=True)),
        ("POST", r"/files", Operation("files.create", creates=True, upload=True)),
        ("POST", r"/uploads/[^/]+/parts", Operation("uploads.parts", creates=True, upload=True)),
        ("GET", r"/models", Operation("models.list")),
        ("GET", r"/models/[^/]+", Operation("models.retrieve")),
        ("GET", r"/realtime.*", Operation("realtime")),
    )
)


def operation_for(method: str, path: str) -> Operation:
    """The operation of ``method path`` (``path`` under ``/v1``, e.g. ``/files/f-1``).

    Anything not in the table is still proxied: GET and DELETE as reads, other
    methods as calls that may create something.
    """
    method = method.upper()
    for wanted, pattern, operation in _TABLE:
        if method == wanted and pattern.fullmatch(path):
            return operation
    if method in ("GET", "HEAD", "OPTIONS"):
        return _READ
    if method == "DELETE":
        return _DELETE
    return _CREATE


def upstream_url(
    variant: str,
    base: str,
    operation: Operation,
    path: str,
    *,
    deployment: str | None = None,
    api_version: str | None = None,
    query: str = "",
) -> str:
    """Where ``path`` (under ``/v1``) goes for this variant, with the app's ``query``.

    Direct: ``{base}{path}``, ``base`` being the endpoint (``.../v1``).
    Azure: ``base`` is the resource URL; per-deployment operations go to
    ``deployment``, the rest to the resource; ``api_version`` is added unless
    the app's query already names one (the app's wins).
    """
    if variant != "azure":
        url = base.rstrip("/") + path
        return f"{url}?{query}" if query else url
    root = base.rstrip("/") + "/openai"
    if operation.per_deployment and deployment:
        root += f"/deployments/{quote(deployment, safe='')}"
    params = [query] if query else []
    if api_version and not re.search(r"(^|&)api-version=", query):
        params.append(f"api-version={quote(api_version, safe='')}")
    url = root + path
    return f"{url}?{'&'.join(params)}" if params else url
