"""Connection limits for the sidecar's listeners: header deadline, cap, quiet accept errors.

aiohttp closes a keep-alive connection that stays idle after a response, but
not one that never completes its first request: its keep-alive timer is armed
at connect yet only acts on a connection that already answered a request. So
an idle or trickling client held a socket (one file descriptor) forever, and
enough of them on the admin port starved the API of descriptors. This module
sits between asyncio and aiohttp's per-connection protocol, so it works for
any aiohttp server (the API's own :class:`~.server.ApiRunner` included)
without touching it:

* a connection must have its first request's line and headers parsed within
  ``header_timeout`` seconds of connecting, else it is closed (later requests
  on a kept-alive connection are bounded by aiohttp's ``keepalive_timeout``,
  which closes a connection still waiting for a whole request when it fires);
* at most ``limit`` connections stay open per listener: a new one over the cap
  replaces the longest-open connection that is not inside a request, or is
  closed at once when every connection is busy, so a flood of idle sockets can
  neither exhaust descriptors nor lock out a probe;
* asyncio's "socket.accept() out of system resource" error, logged once per
  failed accept retry per listener, is let through once per interval with a
  count of the ones held back (:class:`AcceptErrorThrottle`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .meters import ListenerReading

__all__ = [
    "ACCEPT_ERROR_MESSAGE",
    "FILE_RESERVE",
    "AcceptErrorThrottle",
    "ConnectionGuard",
    "api_connection_limit",
]

log = logging.getLogger("openai_runtime.sidecar")

ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"
FILE_RESERVE = 64
"""Descriptors kept for everything but client connections: config and key files,
the event loop, logs, telemetry export, the listening sockets themselves."""


def api_connection_limit(admin_limit: int, nofile: int | None = None) -> int:
    """How many API connections fit under ``RLIMIT_NOFILE`` next to the admin cap.

    Each API call holds two descriptors (the app's connection and one to
    upstream), so the API gets half of what is left after the admin cap and
    :data:`FILE_RESERVE`; never fewer than 16 so a tight limit still serves.
    """
    if nofile is None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(16, (nofile - admin_limit - FILE_RESERVE) // 2)


class ConnectionGuard:
    """One listener's open connections: counted, capped and held to a header deadline.

    Install with :meth:`wrap` after the runner's ``setup()`` and before its
    site starts; then every accepted connection goes through a
    :class:`_GuardedProtocol` wrapping aiohttp's own.
    """

    def __init__(self, name: str, *, limit: int, header_timeout: float) -> None:
        self.name = name
        self.limit = limit
        self.header_timeout = header_timeout
        # Insertion-ordered: the first idle entry is the longest-open idle one.
        self._open: dict[_GuardedProtocol, None] = {}
        self._by_handler: dict[RequestHandler, _GuardedProtocol] = {}
        self.refused = 0
        """Connections closed at accept because every slot was busy."""
        self.evicted = 0
        """Idle connections closed to make room for a new one."""
        self.timed_out = 0
        """Connections closed for not sending a whole request in time."""

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def reading(self) -> ListenerReading:
        """What the connection metrics show of this listener."""
        closed = {"refused": self.refused, "evicted": self.evicted, "timed_out": self.timed_out}
        return ListenerReading(self.name, len(self._open), closed)

    def wrap(self, runner: web.BaseRunner) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to serve ``runner`` through this guard."""
        server = runner.server
        if server is None:
            raise RuntimeError("call wrap() after the runner's setup()")
        handle = server.request_handler

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            # Knowing which connections are inside a request is what lets a
            # full listener drop an idle one rather than a call in flight.
            guarded = self._by_handler.get(request.protocol)
            if guarded is None:
                return await handle(request)
            guarded.request_started()
            try:
                return await handle(request)
            finally:
                guarded.request_ended()

        server.request_handler = tracked

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(self, server)

        return factory

    def admit(self, conn: _GuardedProtocol) -> bool:
        if len(self._open) >= self.limit:
            idle = next((c for c in self._open if c.busy == 0), None)
            if idle is None:
                self.refused += 1
                return False
            self.evicted += 1
            idle.close()
        self._open[conn] = None
        return True

    def register(self, conn: _GuardedProtocol, handler: RequestHandler) -> None:
        self._by_handler[handler] = conn

    def forget(self, conn: _GuardedProtocol) -> None:
        self._open.pop(conn, None)
        if conn.handler is not None:
            self._by_handler.pop(conn.handler, None)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; closes the connection on our limits."""

    def __init__(self, guard: ConnectionGuard, server: web.Server) -> None:
        self._guard = guard
        self._server = server
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        self._had_request = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._guard.admit(self):
            # Closed before aiohttp ever sees it: no handler, no task, no timer.
            transport.abort()
            return
        self.handler = self._server()
        self._guard.register(self, self.handler)
        self._deadline = asyncio.get_running_loop().call_later(
            self._guard.header_timeout, self._header_timeout
        )
        self.handler.connection_made(transport)

    def _header_timeout(self) -> None:
        self._deadline = None
        if not self._had_request:
            self._guard.timed_out += 1
            self.close()

    def request_started(self) -> None:
        self.busy += 1
        if not self._had_request:
            self._had_request = True
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

    def request_ended(self) -> None:
        self.busy -= 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        # aiohttp's returns None: asyncio then closes the transport, as unwrapped.
        if self.handler is not None:
            self.handler.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._guard.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)
        self.transport = None


class AcceptErrorThrottle:
    """An event-loop exception handler that lets one accept error through per interval.

    When descriptors run out, asyncio logs "socket.accept() out of system
    resource" (with a traceback) every time it retries an accept on each
    listener: tens of thousands of lines that bury everything else and cost
    disk. One line per ``interval`` says it is still happening and how many
    were held back; every other error goes to the loop's default handler.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_ERROR_MESSAGE:
            loop.default_exception_handler(context)
            return
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return
        self._last = now
        held_back, self.suppressed = self.suppressed, 0
        exc = context.get("exception")
        log.error(
            "cannot accept connections: out of file descriptors or memory",
            extra={
                "fields": {
                    "error": str(exc) if exc is not None else None,
                    "suppressed": held_back,
                    "interval_s": self.interval,
                }
            },
        )
