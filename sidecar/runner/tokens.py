"""Token counts before upstream has said them.

Used at two points of a call. Before it is sent, the local rate limiter
pre-charges its tokens-per-minute budget from :func:`estimate_prompt_tokens`
and :func:`max_output_tokens`, and the cost estimate is made from the same
numbers; both are reconciled once upstream reports ``usage``. After a
stream is cut before its final usage chunk, the prompt estimate and
:func:`estimate_text_tokens` of the text received give the counts that
:mod:`.pricing` prices with ``estimated=True``.

These are heuristics, not a tokenizer: about four characters per token,
counted per piece of text with ``ceil(len(text) / 4)``. Characters rather
than UTF-8 bytes because OpenAI documents that its own rate limiter estimates
from the character count of the request, which is what the pre-charge tries
to predict; the price is under-counting scripts without spaces
(Chinese, Japanese: roughly one token per character), which the
reconciliation with real usage corrects. Request bodies come from clients,
so every function accepts garbage and never raises. Pure code: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["estimate_prompt_tokens", "estimate_text_tokens", "max_output_tokens"]

_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4  # role and the delimiters the chat format wraps round each message
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3  # the assistant header every reply starts with
# Bodies come off the wire as dicts: checked first, they skip the slower ABC check.
_MAPPING = (dict, Mapping)
_TOKENS_PER_IMAGE = 765  # a 1024×1024 image at "high" detail: 85 + 4 tiles × 170


def estimate_text_tokens(text: str) -> int:
    """About how many tokens ``text`` is: ``ceil(len(text) / 4)``, 0 for ``""``."""
    raw: object = text
    if not isinstance(raw, str):
        return 0
    return math.ceil(len(raw) / _CHARS_PER_TOKEN)


def _json_tokens(value: Any) -> int:
    # Tool schemas and tool-call arguments reach the model as JSON text.
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return 0
    return estimate_text_tokens(text)


def _part_tokens(part: Any) -> int:
    if isinstance(part, str):
        return estimate_text_tokens(part)
    if not isinstance(part, _MAPPING):
        return 0
    kind = part.get("type")
    if kind in ("image_url", "image", "input_image"):
        return _TOKENS_PER_IMAGE
    # "text", "refusal" and anything else carrying text; other kinds (audio,
    # files) are not estimated: their size is not knowable from the body.
    for field in ("text", "refusal"):
        text = part.get(field)
        if isinstance(text, str):
            return estimate_text_tokens(text)
    return 0


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_text_tokens(content)
    if isinstance(content, list | tuple):
        return sum(_part_tokens(part) for part in content)
    return 0


def _message_tokens(message: Any) -> int:
    if not isinstance(message, _MAPPING):
        return 0
    tokens = _TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
    name = message.get("name")
    if isinstance(name, str):
        tokens += _TOKENS_PER_NAME + estimate_text_tokens(name)
    tool_call_id = message.get("tool_call_id")
    if isinstance(tool_call_id, str):
        tokens += estimate_text_tokens(tool_call_id)
    # An assistant turn that called tools is replayed as those calls.
    for field in ("tool_calls", "function_call"):
        value = message.get(field)
        if value is not None:
            tokens += _json_tokens(value)
    return tokens


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """About how many prompt tokens a chat completions request ``body`` is.

    Counts each message's text (a string, or ``{"type": "text"}`` parts), 765
    per image part whatever its size or detail, ``name`` fields, tool calls,
    the ``tools`` and legacy ``functions`` definitions as JSON, plus 4 per
    message and 3 of reply priming. Never raises; always at least 1.
    """
    raw: object = body  # typed as a mapping, but it came off the wire
    if not isinstance(raw, _MAPPING):
        return 1
    tokens = _REPLY_PRIMING
    messages = raw.get("messages")
    if isinstance(messages, list | tuple):
        tokens += sum(_message_tokens(message) for message in messages)
    for field in ("tools", "functions"):
        value = raw.get(field)
        if value:
            tokens += _json_tokens(value)
    return max(1, tokens)


def _positive_int(value: Any) -> int | None:
    # bool is an int subclass, and `"max_tokens": true` is not a number.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def max_output_tokens(body: Mapping[str, Any], default: int = 4096) -> int:
    """The most completion tokens ``body`` can produce, across all its choices.

    ``max_completion_tokens`` (which includes reasoning tokens), else the
    legacy ``max_tokens``, else ``default``; a missing, null, non-integer or
    non-positive value counts as absent. Multiplied by ``n`` when ``n`` is an
    integer above 1, since every choice may use the whole limit.
    """
    raw: object = body
    if not isinstance(raw, _MAPPING):
        return default
    limit = _positive_int(raw.get("max_completion_tokens"))
    if limit is None:
        limit = _positive_int(raw.get("max_tokens"))
    if limit is None:
        limit = default
    choices = _positive_int(raw.get("n"))
    if choices is not None and choices > 1:
        limit *= choices
    return limit
