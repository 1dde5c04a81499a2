"""Incremental Server-Sent Events decoding for streamed completions.

Where it sits::

    upstream body bytes ──feed()──▶ SSEDecoder ──▶ [SSEFrame, ...]
                                                     │  .data/.event: inspected for usage
                                                     │  and in-band errors
                                                     └─ .raw: forwarded to the client as is

Pure and synchronous: no I/O, no asyncio, any chunking of the input gives the
same frames. The proxy relies on one invariant: the ``raw`` of every frame
returned by :meth:`SSEDecoder.feed` and :meth:`SSEDecoder.flush`, concatenated
in order, equals the bytes fed, byte for byte. So forwarding ``frame.raw``
never alters, drops or reorders what upstream sent, and a frame is only
forwarded once it is complete (never half an event to the client).

Parsing follows the WHATWG ``text/event-stream`` rules: ``\\r\\n``, ``\\n`` and
a lone ``\\r`` end a line; a blank line ends a frame; ``field:value`` with one
optional space after the colon; a line without a colon is a field with an
empty value; unknown fields are ignored; a leading UTF-8 BOM is skipped.

Design choice: a blank line with no lines before it in its block (the third
``\\n`` of ``data: x\\n\\n\\n``) comes back as a frame of its own, ``raw=b"\\n"``
with every field ``None``/empty, rather than being glued onto the previous
frame: that frame was already returned when its own blank line arrived, and
holding it back to see whether more blank lines follow would delay every event.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEFrame"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEFrame:
    """One event block of the stream, parsed, with the exact bytes it came from.

    ``data`` is the ``data`` lines joined with ``"\\n"``, or ``None`` when the
    block had no ``data`` field (keep-alive comments, stray blank lines).
    ``event`` is ``""`` for a bare ``event:``; the spec's default ``"message"``
    is left to the caller. ``retry`` keeps the last all-digit ``retry`` value.
    ``comments`` are the ``:`` lines with the colon and one space removed.
    """

    raw: bytes
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


# A stream decodes one frame per token, and a frozen dataclass's __init__
# stores each field through object.__setattr__: filling the slots directly
# builds the same frame in about a third of the time.
_new = object.__new__
_set_raw, _set_data, _set_event, _set_id, _set_retry, _set_comments = (
    getattr(SSEFrame, name).__set__ for name in ("raw", "data", "event", "id", "retry", "comments")
)


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the frames they complete.

    Call :meth:`flush` at end of stream so a final block missing its blank line
    is still returned. After :meth:`flush` the decoder starts a fresh stream
    (its BOM check included).
    """

    __slots__ = ("_bom_checked", "_buf", "_comments", "_data", "_event", "_id", "_retry", "_scan")

    def __init__(self) -> None:
        # Bytes not yet returned in a frame: the lines of the block being built
        # (already parsed into the fields below), then a partial line.
        self._buf = bytearray()
        # Offset in _buf where unparsed bytes start.
        self._scan = 0
        self._bom_checked = False
        self._reset_fields()

    def _reset_fields(self) -> None:
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a returned frame."""
        return bytes(self._buf)

    @property
    def between_frames(self) -> bool:
        """Nothing held: the next byte fed starts a new frame (or the stream)."""
        return not self._buf

    def feed(self, chunk: bytes) -> list[SSEFrame]:
        """Add ``chunk`` to the stream; return the frames it completes, in order."""
        if not chunk:
            return []
        buf = self._buf
        # Only a held lone "\r" can sit at the end: a partial line never holds
        # one, since "\r" ends a line.
        held_cr = buf[-1:] == b"\r"
        buf += chunk
        # Fast path for a long line arriving in many pieces: without a line end
        # nothing can complete, and re-scanning the buffer each time would be
        # quadratic.
        if self._bom_checked and not held_cr and b"\n" not in chunk and b"\r" not in chunk:
            return []
        return self._process(final=False)

    def flush(self) -> list[SSEFrame]:
        """End of stream: return what is left, including an unterminated block."""
        frames = self._process(final=True)
        if self._buf:
            rest = bytes(self._buf)
            if self._scan < len(rest):
                # A last line without a line ending still counts: better to
                # report the usage or error it may carry than to drop it.
                self._parse_line(rest[self._scan :])
            frames.append(self._frame(rest))
        self._buf = bytearray()
        self._scan = 0
        self._bom_checked = False
        return frames

    def _process(self, *, final: bool) -> list[SSEFrame]:
        buf = self._buf
        if not self._bom_checked:
            # Wait for three bytes so a BOM split across chunks is still
            # recognised, keeping the result independent of chunking.
            if not final and len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            self._bom_checked = True
            if buf.startswith(_BOM):
                self._scan = len(_BOM)  # skipped for parsing, kept in raw

        simple = self._take_simple_frames() if not self._scan else []
        # Only the unparsed tail is copied and split: the block's earlier lines
        # are already parsed, and re-reading them on every chunk would make a
        # large multi-line frame quadratic.
        scan = self._scan
        text = bytes(buf[scan:])
        size = len(text)
        frames: list[SSEFrame] = []
        frame_start = pos = 0  # offsets in text
        for line in text.splitlines(keepends=True):
            end = pos + len(line)
            last = line[-1:]
            if last == b"\n":
                content = line[:-2] if line[-2:-1] == b"\r" else line[:-1]
            elif last == b"\r":
                if end == size and not final:
                    # "\r" as the last byte received: a "\n" in the next chunk
                    # would make it one line end, not two.
                    break
                content = line[:-1]
            else:
                break  # partial line: wait for its end
            if content:
                self._parse_line(content)
            else:
                raw = text[frame_start:end]
                if not frames and scan:
                    raw = bytes(buf[:scan]) + raw  # lines parsed by earlier chunks
                frames.append(self._frame(raw))
                frame_start = end
            pos = end

        if frames:
            del buf[: scan + frame_start]
            self._scan = pos - frame_start
        else:
            self._scan = scan + pos
        return simple + frames if simple else frames

    def _take_simple_frames(self) -> list[SSEFrame]:
        """Cut the leading frames that are a single ``data: `` line each.

        Nearly every frame of a completion stream is one, and cutting it at its
        ``\n\n`` gives what the line-by-line parse would, several times faster.
        Anything else (other fields, several lines, ``\r``, a BOM still to
        skip, a frame not yet complete) stops the cut and is left to it.
        """
        buf = self._buf
        if b"\r" in buf or self._scan:
            return []
        text = bytes(buf)
        find = text.find
        frames: list[SSEFrame] = []
        start = 0
        while text.startswith(b"data: ", start):
            end = find(b"\n", start)
            if end < 0 or text[end + 1 : end + 2] != b"\n":
                break
            frame: SSEFrame = _new(SSEFrame)
            _set_raw(frame, text[start : end + 2])
            _set_data(frame, _decode(text[start + 6 : end]))
            _set_event(frame, None)
            _set_id(frame, None)
            _set_retry(frame, None)
            _set_comments(frame, ())
            frames.append(frame)
            start = end + 2
        if start:
            del buf[:start]
        return frames

    def _frame(self, raw: bytes) -> SSEFrame:
        data = self._data
        comments = self._comments
        frame: SSEFrame = _new(SSEFrame)
        _set_raw(frame, raw)
        # Joining before decoding: one decode call per frame, not per line.
        _set_data(frame, _decode(b"\n".join(data)) if data else None)
        _set_event(frame, self._event)
        _set_id(frame, self._id)
        _set_retry(frame, self._retry)
        _set_comments(frame, tuple(comments) if comments else ())
        # The frame holds copies, so the lists are emptied for the next block
        # rather than replaced by new ones.
        if data:
            data.clear()
        if comments:
            comments.clear()
        self._event = self._id = self._retry = None
        return frame

    def _parse_line(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            comment = line[1:]
            self._comments.append(_decode(comment[1:] if comment[:1] == b" " else comment))
            return
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = _decode(value)
        elif name == b"id":
            # The spec ignores ids containing NUL: they cannot be echoed back
            # in a Last-Event-ID header.
            if b"\x00" not in value:
                self._id = _decode(value)
        # bytes.isdigit is ASCII-only, as the spec requires; others are ignored.
        # Past 18 digits (beyond int64 milliseconds) it is garbage, and int()
        # raises on thousands of digits: ignored too, so hostile input never raises.
        elif name == b"retry" and value.isdigit() and len(value) <= 18:
            self._retry = int(value)
