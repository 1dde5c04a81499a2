"""The one I/O seam: send a request upstream, read the answer within its deadlines.

Everything above this module is pure logic that deals in bytes, headers and
the runner's exception tree. Here, and only here, aiohttp and asyncio
exceptions are translated into :class:`~.errors.TransportError` and
:class:`~.errors.UpstreamTimeout` (``raise ... from exc``), and the timeouts of
:class:`~.config.TimeoutSettings` are enforced against the event loop's clock:

- ``connect``: TCP and TLS connect (aiohttp's ``sock_connect``);
- ``first_byte``: streams only, until the first body bytes arrive (a
  non-streaming answer is generated before upstream sends anything, so only
  ``total`` bounds it);
- ``stream_idle``: the longest gap between two stream chunks;
- ``total``: the budget the runner passes in, what is left of the whole call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType

import aiohttp
from multidict import CIMultiDictProxy

from .config import TimeoutSettings
from .errors import TransportError, UpstreamTimeout

__all__ = ["Body", "Transport", "UpstreamResponse"]

Body = bytes | AsyncIterable[bytes] | None
"""A request body: bytes, or an upload streamed through as it arrives."""

_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.IncompleteReadError)


class UpstreamResponse:
    """An upstream answer whose body has not been read yet."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        timeouts: TimeoutSettings,
        deadline: float,
        first_byte_deadline: float,
    ) -> None:
        self._response = response
        self._timeouts = timeouts
        self._deadline = deadline
        self._first_byte_deadline = first_byte_deadline
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers

    def _budget(self, phase_deadline: float, phase: str) -> tuple[float, str]:
        if self._deadline <= phase_deadline:
            phase_deadline, phase = self._deadline, "total"
        return max(0.0, phase_deadline - asyncio.get_running_loop().time()), phase

    async def read(self) -> bytes:
        """The whole body, within what is left of the total budget."""
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await self._response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream took too long to answer", phase="total") from exc
        except _TRANSPORT_ERRORS as exc:
            raise TransportError(f"reading the upstream response failed: {_describe(exc)}") from exc
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: the first by ``first_byte``, then ``stream_idle`` apart."""
        content = self._response.content
        loop = asyncio.get_running_loop()
        phase_deadline, phase = self._first_byte_deadline, "first_byte"
        while True:
            budget, which = self._budget(phase_deadline, phase)
            try:
                async with asyncio.timeout(budget):
                    data = await content.readany()
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"upstream sent nothing in time ({which})", phase=which
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                raise TransportError(f"upstream stream broke: {_describe(exc)}") from exc
            if not data:
                return
            yield data
            phase_deadline, phase = loop.time() + self._timeouts.stream_idle, "stream_idle"

    def close(self) -> None:
        """Drop the connection (used when the caller goes away mid-stream)."""
        self._response.close()

    def release(self) -> None:
        """Return the connection to the pool once the body was read."""
        self._response.release()


def _describe(exc: BaseException) -> str:
    # Class names only: messages of foreign exceptions may echo URLs or headers.
    return type(exc).__name__


class Transport:
    """An aiohttp client session with the runner's timeouts and error translation."""

    def __init__(
        self,
        timeouts: TimeoutSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        pool_size: int = 256,
    ) -> None:
        self.timeouts = timeouts
        self._session = session
        self._owns_session = session is None
        self._pool_size = pool_size

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        stream: bool,
        budget: float,
    ) -> UpstreamResponse:
        """POST ``body`` to ``url`` and wait for the response headers (see :meth:`request`)."""
        return await self.request("POST", url, headers, body, stream=stream, budget=budget)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        *,
        stream: bool,
        budget: float,
    ) -> UpstreamResponse:
        """Send ``method url`` with ``body`` and wait for the response headers.

        ``body`` may be an async iterable (an upload passed through as it
        arrives). ``budget`` is what is left of the call's total time. For
        streams the wait for headers also counts against ``first_byte``. A
        :class:`TransportError` whose connection was never made says
        ``sent=False``: nothing reached upstream.
        """
        # The loop's clock, not the runner's injected Clock: asyncio.timeout
        # fires on loop time only, so the budget (seconds, whatever clock the
        # runner counts them on) becomes a loop deadline here.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, budget)
        # A non-streaming answer is generated before its first byte, so only
        # the total budget applies to it, or the attempt's bound if one is set.
        if stream:
            first_byte, phase = self.timeouts.first_byte, "first_byte"
        elif self.timeouts.attempt is not None:
            first_byte, phase = self.timeouts.attempt, "attempt"
        else:
            first_byte, phase = budget, "total"
        first_byte_deadline = loop.time() + first_byte
        wait = min(budget, first_byte)
        if first_byte >= budget:
            phase = "total"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, connect=self.timeouts.connect
        )
        session = self._get_session()
        try:
            async with asyncio.timeout(max(0.0, wait)):
                response = await session.request(
                    method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError) as exc:
            # Before TimeoutError: aiohttp's timeouts are subclasses of it.
            raise UpstreamTimeout("connecting upstream timed out", phase="connect") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response headers within {wait:g}s", phase=phase) from exc
        except aiohttp.ClientConnectorError as exc:
            # Refused, unreachable, DNS: no byte of the request left this process.
            raise TransportError(
                f"connecting upstream failed: {_describe(exc)}", sent=False
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise TransportError(f"upstream request failed: {_describe(exc)}") from exc
        return UpstreamResponse(response, self.timeouts, deadline, first_byte_deadline)

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
