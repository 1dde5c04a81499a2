"""Tests for Go-style durations (openai_runtime_sidecar.runner.durations)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.durations import Duration, format_duration, parse_duration
from openai_runtime_sidecar.runner.modeling import ConfigModel, ValidationError
from openai_runtime_sidecar.runner.schemas import json_schema


class Settings(ConfigModel):
    wait: Duration
    other: Duration = 2.0


_SCHEMA = json_schema(Settings)["properties"]["wait"]
_SCHEMA_PATTERN = next(s["pattern"] for s in _SCHEMA["anyOf"] if s.get("type") == "string")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("2μs", 2e-6),
        ("500ns", 5e-7),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h2m3s4ms", 3723.004),
        ("0s", 0.0),
        ("  5s  ", 5.0),
        ("1m1m", 120.0),
    ],
)
def test_go_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (5, 5.0), (2.5, 2.5), ("5", 5.0), ("0.25", 0.25), ("  .5 ", 0.5), ("1e3", 1000.0)],
)
def test_numbers_and_numeric_strings_are_seconds(value: Any, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "non-negative"),
        (-0.5, "non-negative"),
        ("-3", "non-negative"),
        (math.inf, "finite"),
        ("inf", "finite"),
        ("nan", "finite"),
        (math.nan, "finite"),
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("5 s", "invalid duration '5 s'"),
        ("abc", "invalid duration 'abc'"),
        ("5x", "invalid duration '5x'"),
        ("1h 30m", "invalid duration"),
        ("-5s", "invalid duration '-5s'"),
        ("s", "invalid duration 's'"),
        ("5sec", "invalid duration"),
        (True, "a number of seconds or a string"),
        (False, "a number of seconds or a string"),
        (None, "a number of seconds or a string"),
        ([5], "a number of seconds or a string"),
    ],
)
def test_errors(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


def test_invalid_message_suggests_the_syntax() -> None:
    with pytest.raises(ValueError, match=r"units ns, us, ms, s, m, h \(250ms, 1m30s\)"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.012, "12ms"),
        (0.0005, "0.5ms"),
        (0.1, "100ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (5, "5s"),
        (60, "1m"),
        (90, "1m30s"),
        (360, "6m"),
        (600, "10m"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (3600.5, "1h0.5s"),
        (7200, "2h"),
        (12.3456789, "12.3456789s"),
        (1e-7, "0.0001ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("seconds", [1e-10, 1e-12, 123.456789012, 0.999999, 59.999999, 86400.25])
def test_format_never_writes_exponents_and_parses_back(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@given(
    st.integers(0, 48),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_format_parse_round_trip(h: int, m: int, s: int, ms: int) -> None:
    seconds = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_parse_round_trip_any_float(seconds: float) -> None:
    text = format_duration(seconds)
    assert re.fullmatch(_SCHEMA_PATTERN, text)
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-6, rel=1e-12)


@pytest.mark.parametrize(("value", "seconds"), [("250ms", 0.25), (1.5, 1.5), (3, 3.0), ("2", 2.0)])
def test_config_type_accepts_numbers_and_strings(value: Any, seconds: float) -> None:
    model = Settings(wait=value)
    assert model.wait == seconds
    assert isinstance(model.wait, float)


def test_config_dumps_json_as_go_strings() -> None:
    model = Settings(wait="1m30s")
    assert model.model_dump() == {"wait": 90.0, "other": 2.0}
    assert model.model_dump(mode="json") == {"wait": "1m30s", "other": "2s"}
    assert Settings.model_validate(json.loads(json.dumps(model.model_dump(mode="json")))) == model


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("-1s", "invalid duration"),
        (-1, "non-negative"),
        (True, "a number of seconds"),
        (None, "a number of seconds"),
        ("later", "invalid duration"),
    ],
)
def test_config_errors(value: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(wait=value)
    (error,) = info.value.errors()
    assert error["loc"] == ("wait",)
    assert fragment in error["msg"]


def test_json_schema() -> None:
    assert _SCHEMA["anyOf"][1] == {"type": "number", "minimum": 0}
    assert "Go-style duration" in _SCHEMA["description"]
    for good in ["250ms", "1m30s", "1.5", ".5s", "6m0s", "2µs", "10"]:
        assert re.fullmatch(_SCHEMA_PATTERN, good), good
        assert re.search(_SCHEMA_PATTERN, good), good
    for bad in ["", "-1s", "5 s", "5x", "1e3s", "s"]:
        assert not re.search(_SCHEMA_PATTERN, bad), bad
