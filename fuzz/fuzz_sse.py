"""Coverage-guided fuzzing of the SSE decoder (``make fuzz``).

Every input is split into a chunking and a stream: the first byte says how
many of the following bytes are chunk sizes, those bytes are the sizes
(cycled, 0 to 63 each, a 0 meaning an empty chunk), the rest is the stream.
The decoder is fed the stream in those chunks and must keep every promise
``openai_runtime_sidecar.runner.sse`` makes:

- it never raises, whatever the bytes (it documents no exception);
- after every ``feed`` the ``raw`` of the frames returned so far plus
  ``pending`` is exactly what was fed, and after ``flush`` the frames' ``raw``
  alone is (nothing altered, dropped or reordered);
- a frame returned by ``feed`` is complete: its ``raw`` ends a line;
- any chunking gives the same frames as one ``feed`` of the whole stream;
- after ``flush`` the decoder starts afresh: the same stream decodes the same;
- fields have their documented types (``retry`` all digits, at most 18;
  ``id`` without NUL).

Run it directly (``python fuzz/fuzz_sse.py -max_total_time=60 fuzz/corpus/sse``)
or import it: without atheris, :func:`TestOneInput` still works (the test
suite runs it over the seed corpus).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

try:
    import atheris
except ImportError:  # the test suite imports this module without atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["openai_runtime_sidecar"]):
        from openai_runtime_sidecar.runner.sse import SSEDecoder, SSEFrame
else:
    from openai_runtime_sidecar.runner.sse import SSEDecoder, SSEFrame

__all__ = ["TestOneInput", "check", "main", "split"]

_LINE_ENDS = (b"\n", b"\r")


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(stream, chunks): the input read as a chunking and a stream, see the module doc."""
    if not data:
        return b"", []
    count = data[0] % 16
    sizes = [size % 64 for size in data[1 : 1 + count]]
    stream = data[1 + count :]
    return stream, list(_chunks(stream, sizes))


def _chunks(stream: bytes, sizes: list[int]) -> Iterator[bytes]:
    if not sizes or not any(sizes):
        yield stream
        return
    pos = 0
    index = 0
    while pos < len(stream):
        size = sizes[index % len(sizes)]
        index += 1
        yield stream[pos : pos + size]
        pos += size


def _fields(frame: SSEFrame) -> tuple[object, ...]:
    return (frame.data, frame.event, frame.id, frame.retry, frame.comments)


def _decode(decoder: SSEDecoder, chunks: list[bytes]) -> list[SSEFrame]:
    frames: list[SSEFrame] = []
    fed = bytearray()
    for chunk in chunks:
        completed = decoder.feed(chunk)
        for frame in completed:
            assert frame.raw.endswith(_LINE_ENDS), f"incomplete frame forwarded: {frame.raw!r}"
        frames += completed
        fed += chunk
        assert b"".join(f.raw for f in frames) + decoder.pending == fed, "bytes not conserved"
    frames += decoder.flush()
    assert decoder.pending == b"", "flush left bytes behind"
    assert b"".join(f.raw for f in frames) == fed, "bytes not conserved at end of stream"
    return frames


def check(stream: bytes, chunks: list[bytes]) -> list[SSEFrame]:
    """Decode ``stream`` fed as ``chunks``; assert every invariant; return the frames."""
    assert b"".join(chunks) == stream
    decoder = SSEDecoder()
    frames = _decode(decoder, chunks)
    for frame in frames:
        assert frame.data is None or isinstance(frame.data, str)
        assert frame.event is None or isinstance(frame.event, str)
        assert frame.id is None or "\x00" not in frame.id
        assert frame.retry is None or 0 <= frame.retry < 10**18
        assert all(isinstance(comment, str) for comment in frame.comments)
    whole = _decode(SSEDecoder(), [stream])
    assert [_fields(f) for f in frames] == [_fields(f) for f in whole], "depends on chunking"
    assert [f.raw for f in frames] == [f.raw for f in whole], "raw depends on chunking"
    again = _decode(decoder, chunks)  # the same decoder, after flush: a fresh stream
    assert [_fields(f) for f in again] == [_fields(f) for f in frames], "flush did not reset"
    return frames


def TestOneInput(data: bytes) -> None:
    """The entry point atheris (libFuzzer) calls with each input."""
    stream, chunks = split(data)
    check(stream, chunks)


def main(argv: list[str] | None = None) -> None:
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install 'atheris>=2.3'")
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
