from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.tokens import (
    estimate_prompt_tokens,
    estimate_text_tokens,
    max_output_tokens,
)

PRIMING = 3
PER_MESSAGE = 4
IMAGE = 765


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("你好世界", 1)],
)
def test_text_is_about_four_characters_a_token(text: str, tokens: int) -> None:
    assert estimate_text_tokens(text) == tokens


def test_text_counts_characters_not_bytes() -> None:
    # Four CJK characters are twelve UTF-8 bytes but still count as one piece of four.
    assert estimate_text_tokens("日本語テ") == estimate_text_tokens("abcd")


def test_string_content() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": "y" * 9},
        ]
    }
    assert estimate_prompt_tokens(body) == PRIMING + 2 * PER_MESSAGE + 10 + 3


def test_text_parts_are_counted_piece_by_piece() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "abcde"}, {"type": "text", "text": "f"}],
            }
        ]
    }
    # ceil(5/4) + ceil(1/4), not ceil(6/4): each piece rounds up on its own.
    assert estimate_prompt_tokens(body) == PRIMING + PER_MESSAGE + 2 + 1


def test_image_parts_count_a_fixed_amount() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 10_000},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ]
    }
    assert estimate_prompt_tokens(body) == PRIMING + PER_MESSAGE + 4 + 2 * IMAGE


def test_name_fields_and_tool_calls() -> None:
    tool_calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    body = {
        "messages": [
            {"role": "user", "name": "alice", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
    }
    calls_json = json.dumps(tool_calls, separators=(",", ":"))
    expected = (
        PRIMING
        + 3 * PER_MESSAGE
        + (1 + 2 + 1)  # name overhead, "alice", "hi"
        + estimate_text_tokens(calls_json)
        + (2 + 2)  # "call_1", "sunny"
    )
    assert estimate_prompt_tokens(body) == expected


def test_tools_and_functions_are_counted_as_json() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    functions = [{"name": "lookup", "parameters": {"type": "object"}}]
    messages = [{"role": "user", "content": "hi"}]
    base = estimate_prompt_tokens({"messages": messages})
    with_tools = estimate_prompt_tokens({"messages": messages, "tools": tools})
    with_both = estimate_prompt_tokens(
        {"messages": messages, "tools": tools, "functions": functions}
    )
    assert with_tools - base == estimate_text_tokens(json.dumps(tools, separators=(",", ":")))
    assert with_both - with_tools == estimate_text_tokens(
        json.dumps(functions, separators=(",", ":"))
    )


def test_more_text_means_more_tokens() -> None:
    short = {"messages": [{"role": "user", "content": "hi"}]}
    long = {"messages": [{"role": "user", "content": "hi " * 1000}]}
    assert estimate_prompt_tokens(long) > estimate_prompt_tokens(short)


class Unserialisable:
    def __str__(self) -> str:
        return "whatever"


def circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": 42},
        {"messages": [None, 1, "x", [], {"content": 7}, {"content": {"text": "x"}}]},
        {"messages": [{"role": "user", "content": [None, 3, {"type": "text", "text": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}], "name": 3}]},
        {"messages": [], "tools": circular()},
        {"messages": [], "tools": [Unserialisable()]},
        {"messages": [], "tools": "not a list", "functions": 12},
        {"messages": [{"role": "assistant", "tool_calls": circular()}]},
        None,
        "a string",
        [1, 2, 3],
    ],
)
def test_garbage_never_raises_and_is_at_least_one(body: Any) -> None:
    assert estimate_prompt_tokens(body) >= 1


def test_empty_body_is_just_the_priming() -> None:
    assert estimate_prompt_tokens({}) == PRIMING
    assert estimate_prompt_tokens({"messages": []}) == PRIMING


def test_garbage_text_is_zero() -> None:
    assert estimate_text_tokens(None) == 0  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(body=st.dictionaries(st.sampled_from(["messages", "tools", "functions", "n"]), json_values))
def test_arbitrary_json_never_raises(body: dict[str, Any]) -> None:
    assert estimate_prompt_tokens(body) >= 1
    assert max_output_tokens(body) >= 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
        ({"max_completion_tokens": "200", "max_tokens": 100}, 100),
        ({"max_tokens": "100"}, 4096),
        ({"max_tokens": 0}, 4096),
        ({"max_tokens": -5}, 4096),
        ({"max_tokens": 12.5}, 4096),
        ({"max_tokens": True}, 4096),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"n": 2}, 8192),
        ({"max_tokens": 100, "n": 1}, 100),
        ({"max_tokens": 100, "n": 0}, 100),
        ({"max_tokens": 100, "n": -2}, 100),
        ({"max_tokens": 100, "n": "3"}, 100),
        ({"max_tokens": 100, "n": 2.0}, 100),
        ({"max_tokens": 100, "n": True}, 100),
    ],
)
def test_max_output_tokens(body: dict[str, Any], expected: int) -> None:
    assert max_output_tokens(body) == expected


def test_max_output_tokens_custom_default() -> None:
    assert max_output_tokens({}, default=1000) == 1000
    assert max_output_tokens({"n": 4}, default=1000) == 4000
    assert max_output_tokens(None, default=7) == 7  # type: ignore[arg-type]
