"""jsoncodec reads and writes what the standard library would, orjson or not."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_runtime_sidecar.runner import jsoncodec

# Everything JSON can hold, integers beyond 64 bits and awkward text included.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _stdlib(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@settings(max_examples=300)
@given(_DOCUMENTS)
def test_reads_back_what_the_standard_library_wrote(value: object) -> None:
    text = _stdlib(value)
    assert jsoncodec.loads(text) == json.loads(text)
    assert jsoncodec.loads(text.decode("utf-8")) == json.loads(text)


@settings(max_examples=300)
@given(_DOCUMENTS)
def test_writes_what_the_standard_library_reads_the_same(value: object) -> None:
    assert json.loads(jsoncodec.dumps(value)) == json.loads(_stdlib(value))


def test_is_fast_here() -> None:
    # orjson is a dependency: the suite would otherwise test only the fallback.
    assert jsoncodec.FAST


@pytest.mark.parametrize(
    "text",
    [
        b'{"id": 123456789012345678901234567890}',  # beyond 64 bits: orjson reads a float
        b'{"id": -9223372036854775809}',
        b'{"id": 18446744073709551616}',
    ],
)
def test_big_integers_stay_exact(text: bytes) -> None:
    value = jsoncodec.loads(text)
    assert value == json.loads(text)
    assert isinstance(value["id"], int)
    assert jsoncodec.dumps(value) == _stdlib(json.loads(text))


@pytest.mark.parametrize(
    "text", [b'{"t": NaN}', b'{"t": Infinity}', b'{"t": -Infinity}', b'{"t": 1e400}']
)
def test_non_finite_numbers_are_read_and_written_back_as_they_came(text: bytes) -> None:
    value = jsoncodec.loads(text)
    assert not math.isfinite(value["t"])
    # orjson would write null; the document is written by json instead.
    assert jsoncodec.dumps(value) == _stdlib(json.loads(text))
    value["model"] = "gpt-4o-mini"  # edited on its way, as the server does
    assert b"null" not in jsoncodec.dumps(value)


def test_a_copy_keeps_the_mark() -> None:
    import copy

    value = jsoncodec.loads(b'{"t": NaN}')
    assert b"NaN" in jsoncodec.dumps(copy.copy(value))


def test_lone_surrogates_go_back_out_as_the_escapes_they_came_as() -> None:
    text = b'{"s": "\\ud800", "t": "\xc3\xa9"}'
    value = jsoncodec.loads(text)
    assert value == json.loads(text)
    assert jsoncodec.dumps(value) == b'{"s":"\\ud800","t":"\\u00e9"}'
    assert json.loads(jsoncodec.dumps(value)) == value


@pytest.mark.parametrize("text", [b"{", b'{"a": 1,}', b"\xff{}", b"[" * 5000 + b"]" * 5000])
def test_invalid_input_raises_what_json_raises(text: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as ours:
        jsoncodec.loads(text)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_log_lines_keep_their_defaults() -> None:
    import datetime
    import enum

    class Colour(enum.Enum):
        RED = "red"

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    def default(value: object) -> object:
        if isinstance(value, datetime.datetime):
            return "at " + value.isoformat()
        if isinstance(value, set):
            return sorted(value)
        return f"<{type(value).__name__}>"

    entry = {"when": when, "tags": {"b", "a"}, "colour": Colour.RED, "n": 2**70, "é": "ü"}
    line = jsoncodec.dumps_text(entry, default)
    assert json.loads(line) == json.loads(
        json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=default)
    )


def test_without_orjson_everything_goes_to_json() -> None:
    code = (
        "import sys; sys.modules['orjson'] = None\n"
        "from openai_runtime_sidecar.runner import jsoncodec as c\n"
        "assert not c.FAST\n"
        'v = c.loads(b\'{"a": [1, 2.5, "\\\\u00e9"], "t": NaN}\')\n'
        'assert c.dumps(v) == b\'{"a":[1,2.5,"\\xc3\\xa9"],"t":NaN}\', c.dumps(v)\n'
        "assert c.dumps_text({'a': {1}}, sorted) == '{\"a\":[1]}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
