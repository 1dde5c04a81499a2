"""JSON on the hot path: orjson where it agrees with the standard library, json where not.

Every call parses the app's request and upstream's answer (each streamed
event too) and encodes a payload and a log line; orjson does that several
times faster than :mod:`json`. It does not do it identically, so each
difference is routed to the standard library, which stays the reference:

- integers beyond 64 bits: orjson reads them as floats, silently. Any run of
  19 digits sends the text to :mod:`json` (cheap to look for; a false alarm
  only costs speed);
- ``NaN``, ``Infinity``, numbers beyond a double and lone surrogates: orjson
  refuses them, :mod:`json` reads them (and a lone surrogate is written back
  as the escape it came as: UTF-8 cannot carry it). A value read that way may hold a
  non-finite float, which orjson would write as ``null``; such a document is
  marked (:class:`_Exotic`) and always written back by :mod:`json`;
- invalid text: :mod:`json` reads it again to raise its own error, so the
  message an app gets is unchanged.

Without orjson installed (it is a dependency; a platform without a wheel
may lack it), everything goes to :mod:`json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

try:
    import orjson

    FAST = True
    """Whether orjson is in use."""
except ImportError:  # pragma: no cover - exercised by the fallback test's subprocess
    FAST = False

__all__ = ["FAST", "dumps", "dumps_text", "loads"]

# Every ASCII digit becomes "1" and every other byte "0": a run of 19 digits is
# then a plain substring search. A regex does the same scan ten times slower
# (an 8 KB embeddings answer: 80 µs against 8).
_DIGIT_MAP = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x30 for byte in range(256))
_LONG_NUMBER = b"1" * 19
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


class _Exotic(dict[str, Any]):
    """A document read by :mod:`json` that holds what orjson would write differently."""


def _stdlib_loads(data: bytes | str) -> Any:
    exotic = False

    def constant(name: str) -> float:
        nonlocal exotic
        exotic = True
        return float(name)

    def number(text: str) -> float:
        nonlocal exotic
        value = float(text)
        if not math.isfinite(value):
            exotic = True
        return value

    value = json.loads(data, parse_constant=constant, parse_float=number)
    if exotic and isinstance(value, dict):
        return _Exotic(value)
    return value


def loads(data: bytes | str) -> Any:
    """Parse like :func:`json.loads` (same values, same errors), fast when it can."""
    if not FAST:
        return _stdlib_loads(data)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG_NUMBER not in raw.translate(_DIGIT_MAP):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return _stdlib_loads(data)


def dumps(value: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` as UTF-8 bytes."""
    if FAST and type(value) is not _Exotic:
        try:
            return orjson.dumps(value)
        except TypeError:  # beyond 64 bits, a lone surrogate, a type orjson lacks
            pass
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate read from an escape goes back out as that escape:
        # UTF-8 cannot carry it raw.
        return _ASCII_ENCODER.encode(value).encode("ascii")


def dumps_text(value: Any, default: Callable[[Any], Any]) -> str:
    """Compact JSON text with ``default`` for other types (log lines: never a document
    read from outside, so there is no non-finite float to keep)."""
    if FAST:
        try:
            return orjson.dumps(value, default=default, option=_LOG_OPTIONS).decode("utf-8")
        except TypeError:
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)


# Dates, dataclasses and subclasses go through ``default`` as they do with json.
_LOG_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS) if FAST else 0
