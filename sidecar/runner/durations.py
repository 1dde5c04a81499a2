"""Durations as Kubernetes users write them.

Configs, CRDs and provider headers (``x-ratelimit-reset-tokens: 6m0s``) spell
durations the Go way: ``250ms``, ``5s``, ``1m30s``, ``1h``. Plain numbers are
seconds. :data:`Duration` is the config type that accepts both and stores
float seconds; :func:`format_duration` writes the canonical spelling back.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from .modeling import Before, JsonSchema, Serializer

__all__ = ["Duration", "format_duration", "parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUM = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(ns|us|µs|μs|ms|s|m|h)"
# Schema pattern: a bare number, or one or more number+unit parts.
_PATTERN = rf"^({_NUM}|({_NUM}{_UNIT})+)$"


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``: a number of seconds or a Go duration string.

    Raises :class:`ValueError` naming what was wrong; negative and non-finite
    durations are refused because no setting here means "before now".
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '5s'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range: as infinite as it gets
            seconds = math.inf
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_go(text)
    else:
        raise ValueError("a duration is a number of seconds or a string like '5s'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite, non-negative time, got {value!r}")
    return seconds


def _parse_go(text: str) -> float:
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: use seconds (1.5) or units ns, us, ms, s, m, h "
                "(250ms, 1m30s)"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def _decimal(value: float, places: int) -> str:
    """``value`` in plain notation (never ``1e-07``, which would not parse back)."""
    return f"{value:.{places}f}".rstrip("0").rstrip(".") or "0"


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of ``seconds`` (``0.25`` -> ``250ms``), to the nanosecond."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_decimal(seconds * 1000, 6)}ms"
    whole_minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if rest or not out:
        out += f"{_decimal(rest, 9)}s"
    return out


def _validate(value: Any) -> float:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return parse_duration(value)
    raise ValueError("a duration is a number of seconds or a string like '5s'")


Duration = Annotated[
    float,
    Before(_validate),
    Serializer(format_duration),
    JsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "Seconds, or a Go-style duration such as 250ms, 5s, 1m30s.",
        }
    ),
]
"""Float seconds, written as a number or a Go-style duration string."""
