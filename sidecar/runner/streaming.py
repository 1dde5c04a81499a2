"""Reading an upstream SSE stream while forwarding it untouched.

The runner hands a streaming response here. :func:`open_stream` reads until
the first event is decoded (until then the attempt may still be retried),
then :meth:`StreamAttempt.forward` yields the bytes to pass on, frame by
frame, exactly as upstream sent them, while watching each event for the
response id, model, finish reasons, usage and in-band errors. The one frame
that may be held back is the usage-only chunk the runner asked for on the
caller's behalf. :class:`ChatStream` is what the runner hands its caller:
the attempt's bytes, and the call's outcome once the stream ended. Azure's
quirks are tolerated: a first chunk with empty ``choices`` / ``id`` /
``model``, filter-only chunks without ``delta``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict

from . import jsoncodec
from .errors import RunnerError, TransportError, classify_error_payload, classify_response
from .pricing import Cost
from .ratelimit import RatePermit
from .results import Answered, CallLedger, CallOutcome, Usage
from .sse import SSEDecoder, SSEFrame
from .transport import UpstreamResponse

if TYPE_CHECKING:
    from .runner import OpenAiRunner

__all__ = ["COST_FIELD", "ChatStream", "Pricer", "StreamAttempt", "ask_for_usage", "open_stream"]


def ask_for_usage(payload: dict[str, Any]) -> bool:
    """Ask upstream to end the stream with its usage (``payload`` is changed in place).

    Returns whether the caller asked for it itself: if not, the usage-only
    chunk is not passed on.
    """
    options = payload.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    requested = options.get("include_usage") is True
    options["include_usage"] = True
    payload["stream_options"] = options
    return requested


class Pricer(Protocol):
    """Prices usage by the answer's model, else the request's (the runner's ``price``)."""

    def __call__(self, usage: Usage, *, model: str | None, fallback_model: str | None) -> Cost: ...


COST_FIELD = "openai_runtime_cost_usd"
"""Added to a stream's ``usage`` object: what the call cost, in USD (priced models only)."""

# Content chunks whose only use is the output estimate for a stream cut before
# its usage arrives are kept unparsed, up to this many characters, and parsed
# only if that estimate is ever needed (a finished stream reports its usage).
_DEFERRED_CHARS = 65536
# Events of a read decoded one by one while the id and model are not known yet.
_SPLIT_EVENTS = 4
# A finish reason that is not null: the frame carrying it must be read.
_FINISHED = re.compile(rb'"finish_reason":\s*+(?!null)')


class StreamAttempt:
    """One upstream stream that delivered its first event."""

    def __init__(
        self,
        response: UpstreamResponse,
        now: float,
        *,
        usage_requested: bool = False,
        price: Pricer | None = None,
        request_model: str | None = None,
    ) -> None:
        self._response = response
        self._price = price
        self._request_model = request_model
        self._usage_requested = usage_requested
        self._rewritten: bytes | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: tuple[str, ...] = ()
        self._chunks = response.chunks().__aiter__()
        self._decoder = SSEDecoder()
        self._now = now
        self._buffered: list[bytes] = []
        self._finish_by_choice: dict[int, str] = {}
        self.status = response.status
        self.headers = CIMultiDict(response.headers)
        self.usage: Usage | None = None
        self.output_chars = 0
        self.done = False
        self.events = 0
        self.error: RunnerError | None = None
        self.error_event = 0
        """Which event (1-based) carried an in-band error."""
        self._closed = False
        self._deferred: list[str] = []
        self._deferred_chunks: list[str] = []
        self._deferred_chars = 0

    # -- frames ------------------------------------------------------------

    def _process(self, frame: SSEFrame) -> bool:
        """Record what ``frame`` says; return whether to forward it."""
        data = frame.data
        if data is None:
            return True
        self.events += 1
        if data == "[DONE]":
            self.done = True
            return True
        if self._only_content(data):
            self._deferred.append(data)
            self._deferred_chars += len(data)
            if self._deferred_chars > _DEFERRED_CHARS:
                self._count_deferred()
            return True
        try:
            chunk: Any = jsoncodec.loads(data)
        except ValueError:
            return True  # not ours to judge: pass it on as upstream sent it
        if not isinstance(chunk, dict):
            return True
        if "error" in chunk:
            self.error_event = self.events
            self.error = classify_error_payload(
                200, chunk, headers=self.headers, body=data.encode("utf-8"), now=self._now
            )
            return True
        if self.response_id is None and (rid := chunk.get("id")) and isinstance(rid, str):
            self.response_id = rid
        if self.response_model is None and (model := chunk.get("model")) and isinstance(model, str):
            self.response_model = model
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage.from_payload(usage)
            if choices == [] and not self._usage_requested:
                return False
            self._with_cost(chunk, usage)
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                reason = choice.get("finish_reason")
                index = choice.get("index", 0)
                if isinstance(reason, str) and reason and isinstance(index, int):
                    self._finish_by_choice[index] = reason
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self.output_chars += _delta_chars(delta)
            self.finish_reasons = tuple(self._finish_by_choice.values())
        return True

    def _only_content(self, data: str) -> bool:
        """Whether ``data`` can carry nothing but delta text (the bulk of a stream).

        Such a chunk has no usage, no error and only null finish reasons, and
        comes after the id and model are known. The test is on the JSON text:
        a key is a quoted name, which string contents (quotes escaped) cannot
        fake, so anything in doubt is parsed.
        """
        return (
            self.response_id is not None
            and self.response_model is not None
            and '"usage"' not in data
            and '"error"' not in data
            and data.count('"finish_reason"') == data.count('"finish_reason":null')
        )

    def _plain_prefix(self, chunk: bytes) -> int:
        """How many leading bytes of ``chunk`` are delta text only, in single-line frames.

        The bulk of a stream is such frames, and each would be cut, decoded and
        checked only to be forwarded unchanged and kept for the output
        estimate. The checks of :meth:`_only_content` are made on the bytes of
        the whole run at once: it ends before the first frame that may carry
        usage, an error, a finish reason or ``[DONE]``, and it is counted and
        kept as it came. Anything in doubt (other fields, several lines,
        ``\r``, a frame not yet complete) is left to the frame-by-frame path.
        """
        # A known id means the decoder has read the stream's start (its BOM).
        if (
            self.response_id is None
            or self.response_model is None
            or not self._decoder.between_frames
            or not chunk.startswith(b"data: ")
            or b"\r" in chunk
        ):
            return 0
        cut = len(chunk)
        for marker in (b'"usage"', b'"error"', b"[DONE]"):
            found = chunk.find(marker, 0, cut)
            if found >= 0:
                cut = found
        finished = _FINISHED.search(chunk, 0, cut)
        if finished is not None:
            cut = finished.start()
        end = chunk.rfind(b"\n\n", 0, cut) + 2
        if end < 2:
            return 0
        frames = chunk.count(b"\n\n", 0, end)
        if chunk.count(b"\n", 0, end) != 2 * frames or chunk.count(b"\n\ndata: ", 0, end) != (
            frames - 1
        ):
            return 0
        text = chunk[:end].decode("utf-8", "replace")
        self.events += frames
        self._deferred_chunks.append(text)
        self._deferred_chars += len(text)
        if self._deferred_chars > _DEFERRED_CHARS:
            self._count_deferred()
        return end

    def _take(self, chunk: bytes) -> list[bytes]:
        """The bytes to forward for ``chunk``, in order: a plain run whole, the rest by frame."""
        out: list[bytes] = []
        start = 0
        # The id and model come with the first events (Azure's first one may
        # have neither): decoded one by one, they let the rest of the same
        # read take the plain path. A few at most: an upstream that never
        # sends an id is simply read frame by frame.
        for _ in range(_SPLIT_EVENTS):
            if self.response_id is not None or not self._decoder.between_frames:
                break
            end = chunk.find(b"\n\n", start) + 2
            if end < 2 or chunk.find(b"\r", start, end) >= 0:
                break
            out += self._feed(self._decoder.feed(chunk[start:end]))
            start = end
        if start:
            chunk = chunk[start:]
        plain = self._plain_prefix(chunk) if chunk else 0
        if plain:
            out.append(chunk[:plain])
            chunk = chunk[plain:]
        if chunk:
            out += self._feed(self._decoder.feed(chunk))
        return out

    def _count_deferred(self) -> None:
        """Add the deferred chunks' delta text to ``output_chars``."""
        for text in self._deferred_chunks:
            self._deferred.extend(frame[6:] for frame in text.split("\n\n") if frame)
        self._deferred_chunks.clear()
        for data in self._deferred:
            try:
                chunk: Any = jsoncodec.loads(data)
            except ValueError:
                continue
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            if isinstance(choices, list):
                for choice in choices:
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if isinstance(delta, dict):
                        self.output_chars += _delta_chars(delta)
        self._deferred.clear()
        self._deferred_chars = 0

    def _with_cost(self, chunk: dict[str, Any], usage: dict[str, Any]) -> None:
        """The usage chunk the app asked for also says what the call cost.

        A stream has no response header left to carry it; an extra field in
        ``usage`` reaches the app through the SDK (its models keep unknown
        fields: ``chunk.usage.openai_runtime_cost_usd``).
        """
        if self._price is None or self.usage is None:
            return
        cost = self._price(
            self.usage, model=self.response_model, fallback_model=self._request_model
        )
        if cost.priced:
            usage[COST_FIELD] = round(cost.usd, 10)
            self._rewritten = b"data: " + jsoncodec.dumps(chunk) + b"\n\n"

    def _feed(self, frames: list[SSEFrame]) -> list[bytes]:
        out = []
        for frame in frames:
            if self._process(frame):
                out.append(self._rewritten or frame.raw)
                self._rewritten = None
        return out

    # -- lifecycle ---------------------------------------------------------

    async def prime(self) -> None:
        """Read until the first event; raise (retryably) if the stream fails before it."""
        try:
            while self.events == 0:
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    self._buffered.extend(self._feed(self._decoder.flush()))
                    break
                self._buffered.extend(self._take(chunk))
            # An error as the very first event means nothing useful was sent:
            # retryable. After real events it belongs to the committed stream.
            if self.error is not None and self.error_event == 1:
                raise self.error
            if self.events == 0:
                raise TransportError("upstream stream ended before its first event")
        except BaseException:
            self.close()
            raise

    async def forward(self) -> AsyncIterator[bytes]:
        """The bytes to send on, as they arrive; raises if the stream fails or is cut."""
        if self._buffered:
            out, self._buffered = b"".join(self._buffered), []
            yield out
        async for chunk in self._chunks:
            forward = self._take(chunk)
            if forward:
                yield b"".join(forward)
        tail = self._feed(self._decoder.flush())
        if tail:
            yield b"".join(tail)
        if self.error is not None:
            raise self.error
        if not self.done:
            raise TransportError("upstream stream ended before [DONE]")

    def close(self) -> None:
        """Release the connection: back to the pool when finished, dropped otherwise."""
        if self._closed:
            return
        self._closed = True
        if self.done:
            self._response.release()
        else:
            self._response.close()

    def estimate_usage(self, prompt_estimate: int) -> Usage:
        """Usage for a stream cut before upstream reported it."""
        self._count_deferred()
        completion = (self.output_chars + 3) // 4 if self.output_chars else 0
        return Usage(
            prompt_tokens=prompt_estimate,
            completion_tokens=completion,
            total_tokens=prompt_estimate + completion,
        )


def _delta_chars(delta: dict[str, Any]) -> int:
    chars = 0
    for key in ("content", "refusal", "reasoning_content"):
        value = delta.get(key)
        if isinstance(value, str):
            chars += len(value)
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    value = function.get(key)
                    if isinstance(value, str):
                        chars += len(value)
    return chars


async def open_stream(
    response: UpstreamResponse,
    *,
    now: float,
    usage_requested: bool = False,
    price: Pricer | None = None,
    request_model: str | None = None,
) -> StreamAttempt:
    """Check the answer to a stream request and read up to its first event."""
    # Errors keep a copy of the headers; a stream's StreamAttempt takes its own.
    if not 200 <= response.status < 300:
        body = await response.read()
        raise classify_response(response.status, CIMultiDict(response.headers), body, now=now)
    content_type = response.headers.get("Content-Type", "")
    if "text/event-stream" not in content_type:
        body = await response.read()
        error = classify_response(response.status, CIMultiDict(response.headers), body, now=now)
        if error.payload.get("error", {}).get("type") != "upstream_error":
            raise error  # an OpenAI-shaped error object delivered with a 2xx status
        raise TransportError(f"upstream answered a stream request with {content_type or 'no type'}")
    attempt = StreamAttempt(
        response,
        now,
        usage_requested=usage_requested,
        price=price,
        request_model=request_model,
    )
    await attempt.prime()
    return attempt


class ChatStream:
    """Upstream's SSE bytes, frame by frame, as they should be forwarded.

    Iterate it for the bytes to send to the client; read :attr:`outcome` when
    the iteration ended. Always iterate to the end or call :meth:`aclose`
    (the upstream connection is closed, the rate-limit slot freed and the
    outcome built there).
    """

    def __init__(
        self,
        runner: OpenAiRunner,
        attempt: StreamAttempt,
        ledger: CallLedger,
        rate_permit: RatePermit,
        prompt_estimate: int,
    ) -> None:
        self._runner = runner
        self._attempt = attempt
        self._ledger = ledger
        self.status = attempt.status
        self.headers = attempt.headers
        self.attempts = ledger.attempts
        """Upstream attempts it took to open the stream."""
        self.outcome: CallOutcome | None = None
        """What the call came to: set when the stream ended or was closed."""
        self._rate_permit = rate_permit
        self._prompt_estimate = prompt_estimate
        self._error: RunnerError | None = None
        self._iterator = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterator

    @property
    def finished(self) -> bool:
        """Upstream's ``[DONE]`` has been read: nothing but its end should follow."""
        return self._attempt.done

    async def _run(self) -> AsyncGenerator[bytes, None]:
        attempt = self._attempt
        try:
            async for data in attempt.forward():
                yield data
        except RunnerError as err:
            self._error = err
            raise
        finally:
            self._close()

    def _close(self) -> None:
        if self.outcome is not None:
            return
        attempt, ledger = self._attempt, self._ledger
        attempt.close()
        usage = attempt.usage
        if usage is None:
            usage = attempt.estimate_usage(self._prompt_estimate)
            ledger.usage_estimated = True
        answered = Answered(attempt.response_model, attempt.response_id, attempt.finish_reasons)
        self.outcome = self._runner._conclude(
            ledger, self._rate_permit, usage, self._error, answered
        )

    async def aclose(self) -> None:
        """Stop early (the client went away): close upstream, settle the books."""
        await self._iterator.aclose()
        self._close()
