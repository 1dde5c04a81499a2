"""The practical limit of a Python proxy: aiohttp in, aiohttp out, bytes forwarded.

No validation, no policy, no telemetry, no logging: method, path, headers and
body go to the upstream over one shared client session, and the answer's
status, headers and body come back, streamed chunk by chunk as they arrive.

Run: ``python bench/bareproxy.py PORT UPSTREAM_URL`` (prints ``ready``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import aiohttp
from aiohttp import web

_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)


def with_session(app: web.Application) -> dict[str, aiohttp.ClientSession]:
    """The one upstream session of ``app`` (``["session"]``), opened and closed with it."""
    state: dict[str, aiohttp.ClientSession] = {}

    async def start(_: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=256)
        state["session"] = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )

    async def stop(_: web.Application) -> None:
        await state["session"].close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return state


def build(upstream: str) -> web.Application:
    app = web.Application()
    state = with_session(app)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        async with state["session"].request(
            request.method, upstream + request.path_qs, headers=headers, data=body
        ) as upstream_response:
            out_headers = {
                k: v for k, v in upstream_response.headers.items() if k.lower() not in _HOP
            }
            response = web.StreamResponse(status=upstream_response.status, headers=out_headers)
            length = upstream_response.content_length
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def main(port: int, upstream: str, builder: Callable[[str], web.Application] = build) -> None:
    runner = web.AppRunner(builder(upstream.rstrip("/")), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
