"""JSON logs: one object per line on stderr, one line per proxied request.

Where it sits::

    cli / app start -> configure_logging() -> root logger -> JsonFormatter -> stderr
    server, after each call -> request_fields(info, ...)
                             -> log.info("request", extra={"fields": ...})

Kubernetes collects a container's stderr, and log pipelines index JSON
without parsing rules, so every record is a single JSON object: ``ts``
(RFC 3339, UTC), ``level``, ``logger``, ``msg`` and whatever the caller put
in the reserved ``fields`` extra. Exceptions are rendered as their type and
message only: a traceback's frames and locals could hold a request body or
a key.

The per-request line is built by :func:`request_fields` from
:class:`~.runner.results.CallOutcome` alone (counts, names, ids and the key's
fingerprint), so no prompt, completion or API key can end up in it.
"""

from __future__ import annotations

import enum
import logging
import math
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePath
from typing import Any, TextIO

from .runner import jsoncodec
from .runner.results import CallOutcome

__all__ = ["FIELDS", "JsonFormatter", "RequestLog", "configure_logging", "request_fields"]

FIELDS = "fields"
"""The ``extra`` key whose mapping is merged into the JSON object."""

_CORE = ("ts", "level", "logger", "msg")


def _json_default(value: Any) -> Any:
    """A JSON form for the few non-JSON types a field may hold.

    Deliberately no ``str()`` fallback: an arbitrary object's string may be
    its content (a request, a response body), so unknown types are logged by
    type name only, and bytes by length.
    """
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__}>"


_second: tuple[int, str] = (-1, "")
"""The last whole second and its text (one tuple, so threads never see halves)."""


def _timestamp(created: float) -> str:
    # The same rounding as datetime.fromtimestamp (microseconds half-even),
    # without building a datetime and calling strftime for every line.
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    global _second
    second = int(whole)
    cached, text = _second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second = (second, text)
    return f"{text}{micros // 1000:03d}Z"


def _entry(created: float, level: str, logger: str, msg: str, fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ts": _timestamp(created),
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    if isinstance(fields, dict | Mapping):  # dict first: it skips the slower ABC check
        for key, value in fields.items():
            name = str(key)
            # A field never overwrites the core keys a pipeline indexes on.
            entry[f"field.{name}" if name in _CORE else name] = value
    return entry


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, None)
        entry = _entry(record.created, record.levelname, record.name, record.getMessage(), fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            entry["exception"] = {"type": type(exc).__name__, "message": str(exc)}
        # No stack_info and no traceback: frames can hold request bodies.
        return jsoncodec.dumps_text(entry, _json_default)


class RequestLog:
    """The one line per request, at INFO on ``logger``.

    When that line could only reach the handler :func:`configure_logging`
    installed (no other handler, no filter on the way), it is formatted and
    written here directly: the same JSON, the same level check, without a
    ``LogRecord`` and the handler chain, which cost as much as the line
    itself. Anything else listening (a test's capture, an embedding app's
    handler) gets the record through ``logging`` as usual.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def write(self, msg: str, fields: Mapping[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._sole_handler()
        if handler is None:
            logger.info(msg, extra={FIELDS: fields})
            return
        line = jsoncodec.dumps_text(
            _entry(time.time(), "INFO", logger.name, msg, fields), _json_default
        )
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except Exception:
            # A stream that fails (closed, full) must not fail the call: logging
            # reports such an error and carries on, so hand the line to it.
            failed = True
        else:
            failed = False
        finally:
            handler.release()
        if failed:
            logger.info(msg, extra={FIELDS: fields})

    def _sole_handler(self) -> _JsonHandler | None:
        """Our handler, when it is the only thing the record would reach."""
        current = self._logger
        while not current.handlers:
            if current.filters or not current.propagate or current.parent is None:
                return None
            current = current.parent
        if current.filters or current.parent is not None or len(current.handlers) != 1:
            return None
        handler = current.handlers[0]
        if not isinstance(handler, _JsonHandler) or handler.filters or handler.level > logging.INFO:
            return None
        return handler


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so configuring again replaces it."""


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record, as JSON, to ``stream`` (stderr by default).

    Idempotent: a second call replaces the handler installed by the first.
    Handlers installed by others (a test's log capture) are left in place.
    """
    names = logging.getLevelNamesMapping()
    number = names.get(level.strip().upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _JsonHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(number)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def request_fields(
    info: CallOutcome | None,
    *,
    status: int,
    duration: float,
    error_type: str | None,
    method: str,
    path: str,
) -> dict[str, Any]:
    """The fields of the one log line per request; ``info`` is None before the runner ran.

    Every key is always present (``null`` when unknown), so the line has one
    shape a log pipeline can index.
    """
    usage = info.usage if info is not None else None
    cost = info.cost if info is not None else None
    if error_type is None and info is not None and info.error is not None:
        error_type = info.error.kind
    return {
        "method": method,
        # A query string is dropped: the path is a route, not a place for data.
        "path": path.split("?", 1)[0],
        "status": status,
        "duration_ms": _ms(duration),
        "error_type": error_type,
        "model": info.request_model if info is not None else None,
        "response_model": info.response_model if info is not None else None,
        "stream": info.stream if info is not None else None,
        "attempts": info.attempts if info is not None else None,
        "prompt_tokens": usage.prompt_tokens if usage is not None else None,
        "completion_tokens": usage.completion_tokens if usage is not None else None,
        "cached_tokens": usage.cached_tokens if usage is not None else None,
        "usage_estimated": info.usage_estimated if info is not None and usage is not None else None,
        "cost_usd": cost.usd if cost is not None else None,
        "cost_estimated": cost.estimated if cost is not None else None,
        "finish_reasons": list(info.finish_reasons) if info is not None else None,
        "ttfb_ms": _ms(info.time_to_first_byte) if info is not None else None,
        "request_id": info.request_id if info is not None else None,
        "credential_fingerprint": info.credential_fingerprint if info is not None else None,
        "backend": info.backend if info is not None else None,
    }
