"""Tests for the incremental SSE decoder (openai_runtime_sidecar.runner.sse)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.sse import SSEDecoder, SSEFrame

BOM = b"\xef\xbb\xbf"


def decode_chunks(chunks: Iterable[bytes]) -> list[SSEFrame]:
    """Feed every chunk then flush, checking the raw/pending invariant as it goes."""
    decoder = SSEDecoder()
    frames: list[SSEFrame] = []
    fed = b""
    for chunk in chunks:
        frames += decoder.feed(chunk)
        fed += chunk
        assert b"".join(f.raw for f in frames) + decoder.pending == fed
    frames += decoder.flush()
    assert decoder.pending == b""
    assert b"".join(f.raw for f in frames) == fed
    return frames


def decode(stream: bytes) -> list[SSEFrame]:
    return decode_chunks([stream])


def fields(frame: SSEFrame) -> tuple[object, ...]:
    return (frame.data, frame.event, frame.id, frame.retry, frame.comments)


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in pairwise(points)]


# --- typical streams ---------------------------------------------------------


def test_openai_chat_stream() -> None:
    chunks = [
        {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    payloads = [json.dumps(c) for c in chunks] + ["[DONE]"]
    stream = b"".join(f"data: {p}\n\n".encode() for p in payloads)

    frames = decode(stream)

    assert [f.data for f in frames] == payloads
    assert json.loads(frames[3].data or "")["usage"]["completion_tokens"] == 2
    assert all(f.event is None and f.id is None and f.retry is None for f in frames)
    assert [f.raw for f in frames] == [f"data: {p}\n\n".encode() for p in payloads]


def test_azure_stream_with_empty_choices_first_chunk() -> None:
    first = {"id": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]}
    second = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    stream = f"data: {json.dumps(first)}\n\ndata: {json.dumps(second)}\n\ndata: [DONE]\n\n"

    frames = decode_chunks(split_at(stream.encode(), [7, 30, 31, 90]))

    assert json.loads(frames[0].data or "")["choices"] == []
    assert json.loads(frames[1].data or "")["choices"][0]["delta"]["content"] == "hi"
    assert frames[2].data == "[DONE]"
    assert len(frames) == 3


def test_feed_returns_only_completed_frames() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: t") == [SSEFrame(b"data: one\n\n", data="one")]
    assert decoder.pending == b"data: t"
    assert decoder.feed(b"wo\n") == []
    assert decoder.pending == b"data: two\n"
    assert decoder.feed(b"\n") == [SSEFrame(b"data: two\n\n", data="two")]
    assert decoder.pending == b""


# --- comments and fields -----------------------------------------------------


def test_keepalive_comments() -> None:
    frames = decode(b": ping\n\n:\n\n:no-space\n: two  spaces\ndata: x\n\n")

    assert [fields(f) for f in frames] == [
        (None, None, None, None, ("ping",)),
        (None, None, None, None, ("",)),
        ("x", None, None, None, ("no-space", "two  spaces")),
    ]


def test_multiline_data() -> None:
    frames = decode(b"data: line one\ndata:\ndata:  indented\ndata\n\n")

    assert frames[0].data == "line one\n\n indented\n"


def test_data_with_and_without_space() -> None:
    frames = decode(b"data:x\n\ndata: x\n\ndata:  x\n\ndata: \n\n")

    assert [f.data for f in frames] == ["x", "x", " x", ""]


def test_event_id_retry_fields() -> None:
    stream = (
        b"event: error\nid: 42\nretry: 1500\ndata: {}\n\n"
        b"event:\nid\nretry: 10s\ndata: a\n\n"
        b"retry: 5\nretry: x\nevent: a\nevent: b\n\n"
    )
    frames = decode(stream)

    assert [fields(f) for f in frames] == [
        ("{}", "error", "42", 1500, ()),
        ("a", "", "", None, ()),
        (None, "b", None, 5, ()),
    ]


def test_retry_only_ascii_digits() -> None:
    frames = decode("retry: ١٢\n\nretry: -1\n\nretry: +1\n\nretry: 1 \n\nretry:\n\n".encode())
    assert [f.retry for f in frames] == [None] * 5
    assert decode(b"retry: " + b"9" * 5000 + b"\n\n")[0].retry is None


def test_id_with_nul_ignored() -> None:
    assert decode(b"id: a\x00b\ndata: x\n\n")[0].id is None


def test_unknown_fields_and_colons_in_value() -> None:
    frames = decode(b"foo: bar\nDATA: no\ndata: a: b:c\nevent:x:y\n\n")

    assert fields(frames[0]) == ("a: b:c", "x:y", None, None, ())


# --- line endings, BOM, encoding ----------------------------------------------


def test_crlf_and_lone_cr_endings() -> None:
    crlf = decode(b"event: e\r\ndata: a\r\ndata: b\r\n\r\n")
    cr = decode(b"event: e\rdata: a\rdata: b\r\r")
    lf = decode(b"event: e\ndata: a\ndata: b\n\n")

    assert [fields(f) for f in crlf] == [fields(f) for f in cr] == [fields(f) for f in lf]
    assert crlf[0].data == "a\nb"


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # still one line end, no blank line yet
    assert decoder.feed(b"\r") == []  # could be the start of "\r\n"
    assert decoder.pending == b"data: a\r\n\r"
    assert decoder.feed(b"\ndata: b\r") == [SSEFrame(b"data: a\r\n\r\n", data="a")]
    assert decoder.feed(b"\r") == []
    assert decoder.flush() == [SSEFrame(b"data: b\r\r", data="b")]


def test_lone_cr_confirmed_by_next_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert decoder.feed(b"d") == [SSEFrame(b"data: a\r\r", data="a")]
    assert decoder.pending == b"d"


def test_bom_ignored_for_parsing_but_kept_in_raw() -> None:
    frames = decode(BOM + b"data: x\n\n")
    assert frames == [SSEFrame(BOM + b"data: x\n\n", data="x")]

    split = decode_chunks([BOM[:1], BOM[1:2], BOM[2:] + b"data: x\n", b"\n"])
    assert split == frames

    # Only at stream start; later BOMs are content (so "\ufeffdata" is unknown).
    later = decode(b"data: a\n\n" + BOM + b"data: b\n\n")
    assert [f.data for f in later] == ["a", None]
    assert decode(b"data: " + BOM + b"x\n\n")[0].data == "\ufeffx"


def test_invalid_utf8_is_replaced() -> None:
    frames = decode(b"data: \xff\xfe ok \xe2\x82\ndata: \xc3\n: \x80\nevent: \xed\xa0\x80\n\n")

    assert frames[0].data == "\ufffd\ufffd ok \ufffd\n\ufffd"
    assert frames[0].comments == ("\ufffd",)
    assert frames[0].event is not None
    assert set(frames[0].event) == {"\ufffd"}


def test_multibyte_char_split_across_chunks() -> None:
    raw = "data: héllo €\n\n".encode()
    assert decode_chunks([raw[:8], raw[8:15], raw[15:]]) == decode(raw)
    assert decode(raw)[0].data == "héllo €"


# --- blank lines, flush, empty input -----------------------------------------


def test_extra_blank_lines_are_their_own_frames() -> None:
    frames = decode(b"data: x\n\n\n\r\n")

    assert frames == [
        SSEFrame(b"data: x\n\n", data="x"),
        SSEFrame(b"\n"),
        SSEFrame(b"\r\n"),
    ]


def test_flush_returns_unterminated_frame() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\nevent: end\ndata: b\ndata: c") == [
        SSEFrame(b"data: a\n\n", data="a")
    ]
    assert decoder.flush() == [
        SSEFrame(b"event: end\ndata: b\ndata: c", data="b\nc", event="end"),
    ]
    assert decoder.pending == b""
    assert decoder.flush() == []


def test_flush_with_only_partial_line_or_cr() -> None:
    assert decode(b"data: x") == [SSEFrame(b"data: x", data="x")]
    assert decode(b"data: x\r") == [SSEFrame(b"data: x\r", data="x")]
    assert decode(b"data: x\n\r") == [SSEFrame(b"data: x\n\r", data="x")]
    assert decode(BOM) == [SSEFrame(BOM)]
    assert decode(BOM[:2]) == [SSEFrame(BOM[:2])]


def test_flush_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a")
    decoder.flush()
    assert decoder.feed(BOM + b"data: b\n\n") == [SSEFrame(BOM + b"data: b\n\n", data="b")]


def test_empty_input() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == b""
    assert decoder.flush() == []
    assert decode_chunks([]) == []
    assert decode_chunks([b"", b""]) == []


def test_long_line_in_tiny_chunks() -> None:
    payload = "x" * 50_000
    raw = f"data: {payload}\n\n".encode()
    frames = decode_chunks(raw[i : i + 7] for i in range(0, len(raw), 7))
    assert [f.data for f in frames] == [payload]


def test_many_line_frame_in_small_chunks() -> None:
    raw = b"id: 1\ndata: " + b"y" * 90 + b"\n" + b"data: z\n" * 2000 + b"\n"
    frames = decode_chunks(raw[i : i + 10] for i in range(0, len(raw), 10))
    assert frames == decode(raw)
    assert [f.raw for f in frames] == [raw]
    assert frames[0].id == "1"
    assert frames[0].data == "y" * 90 + "\nz" * 2000


# --- property-based: chunking never changes the result -----------------------

_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=12,
)
_ENDING = st.sampled_from(["\n", "\r", "\r\n"])
_UNKNOWN = st.sampled_from(["foo", "x", "dat", "datas", "Data", "EVENT", "ID ", "retry2"])
_RETRY = st.one_of(st.from_regex(r"\A[0-9]{1,20}\Z"), _TEXT)


@dataclass
class Expected:
    data: list[str] = field(default_factory=list)
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def as_fields(self) -> tuple[object, ...]:
        data = "\n".join(self.data) if self.data else None
        return (data, self.event, self.id, self.retry, tuple(self.comments))


@st.composite
def sse_lines(draw: st.DrawFn) -> tuple[str, str, object]:
    """One non-blank line: (kind, text as written, parsed value)."""
    kind = draw(st.sampled_from(["data", "event", "id", "retry", "comment", "unknown", "bare"]))
    if kind == "bare":
        return "data", "data", ""
    value = draw(_RETRY if kind == "retry" else _TEXT)
    space = draw(st.booleans())
    parsed = value if space or not value.startswith(" ") else value[1:]
    sep = " " if space else ""
    if kind == "comment":
        return kind, f":{sep}{value}", parsed
    if kind == "unknown":
        return kind, f"{draw(_UNKNOWN)}:{sep}{value}", None
    if kind == "retry":
        ok = re.fullmatch(r"[0-9]{1,18}", parsed) is not None
        return kind, f"retry:{sep}{value}", int(parsed) if ok else None
    return kind, f"{kind}:{sep}{value}", parsed


_BLOCK = st.lists(st.tuples(sse_lines(), _ENDING), max_size=5)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[object, ...]]]:
    """A random stream and the fields of the frames it must decode to."""
    out: list[str] = []

    def emit(text: str, ending: str) -> None:
        # "\r" then a blank "\n" would merge into one "\r\n" line end: keep two.
        if ending == "\n" and not text and out and out[-1].endswith("\r"):
            ending = "\r\n"
        out.append(text + ending)

    expected: list[tuple[object, ...]] = []

    def block(lines: list[tuple[tuple[str, str, object], str]]) -> Expected:
        frame = Expected()
        for (kind, text, value), ending in lines:
            emit(text, ending)
            if kind == "data":
                frame.data.append(str(value))
            elif kind == "comment":
                frame.comments.append(str(value))
            elif kind == "event":
                frame.event = str(value)
            elif kind == "id":
                frame.id = str(value)
            elif kind == "retry" and isinstance(value, int):
                frame.retry = value
        return frame

    for lines, ending, blanks in draw(
        st.lists(st.tuples(_BLOCK, _ENDING, st.lists(_ENDING, max_size=2)), max_size=6)
    ):
        frame = block(lines)
        emit("", ending)
        expected.append(frame.as_fields())
        for blank in blanks:
            emit("", blank)
            expected.append(Expected().as_fields())

    tail = draw(st.lists(st.tuples(sse_lines(), _ENDING), max_size=3))
    if tail:
        frame = block(tail)
        if draw(st.booleans()):  # last line missing its line ending too
            out[-1] = out[-1].rstrip("\r\n")
        expected.append(frame.as_fields())

    bom = BOM if draw(st.booleans()) else b""
    if bom and not out:
        expected.append(Expected().as_fields())  # the lone BOM still comes back as raw
    return bom + "".join(out).encode(), expected


@settings(max_examples=200, deadline=None)
@given(sse_streams(), st.data())
def test_generated_streams_any_chunking(
    case: tuple[bytes, list[tuple[object, ...]]], data: st.DataObject
) -> None:
    stream, expected = case
    whole = decode(stream)
    assert [fields(f) for f in whole] == expected

    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert decode_chunks(split_at(stream, cuts)) == whole
    # Cuts inside every "\r\n", "\r\r" and BOM at once.
    cr_cuts = [m.start() + 1 for m in re.finditer(rb"\r", stream)] + [1, 2]
    assert decode_chunks(split_at(stream, cr_cuts)) == whole


_PIECES = st.sampled_from(
    [
        *(b"\r", b"\n", b"\r\n", b"data", b":", b" ", b"x", b"event", b"id", b"retry", b"7"),
        *(BOM, BOM[:2], b"\xff", b"\xe2\x82", b"\x00"),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(_PIECES, max_size=40).map(b"".join), st.binary(max_size=200)))
def test_arbitrary_bytes_one_byte_chunks(stream: bytes) -> None:
    whole = decode(stream)
    assert decode_chunks(stream[i : i + 1] for i in range(len(stream))) == whole


def test_decoded_frames_have_every_field_of_the_dataclass() -> None:
    """The decoder fills frames slot by slot: a field added to SSEFrame must be filled too."""
    decoder = SSEDecoder()
    [frame] = decoder.feed(b": note\nevent: e\nid: 7\nretry: 10\ndata: x\n\n")
    values = {f.name: getattr(frame, f.name) for f in dataclass_fields(SSEFrame)}
    assert frame == SSEFrame(**values)
    assert values == {
        "raw": b": note\nevent: e\nid: 7\nretry: 10\ndata: x\n\n",
        "data": "x",
        "event": "e",
        "id": "7",
        "retry": 10,
        "comments": ("note",),
    }


class _LineByLine(SSEDecoder):
    """The decoder without its cut for single-line frames: the reference for it."""

    __slots__ = ()

    def _take_simple_frames(self) -> list[SSEFrame]:
        return []


_COMPLETION_PIECES = st.one_of(
    _TEXT.map(lambda text: f"data: {text}\n\n".encode()),
    st.sampled_from(
        [b"data: [DONE]\n\n", b": keep-alive\n\n", b"\n", b"data:x\n\n", b"data: a\ndata: b\n\n"]
    ),
    st.sampled_from([b"event: e\n", b"data: y\r\n\r\n", b"data: z\n", b"id: 1\n\n"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_COMPLETION_PIECES, max_size=12).map(b"".join), st.data())
def test_single_line_frames_cut_as_the_line_parse_would(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    chunks = split_at(stream, cuts)
    fast, reference = SSEDecoder(), _LineByLine()
    got = [frame for chunk in chunks for frame in fast.feed(chunk)] + fast.flush()
    want = [frame for chunk in chunks for frame in reference.feed(chunk)] + reference.flush()
    assert got == want
    assert b"".join(frame.raw for frame in got) == stream
