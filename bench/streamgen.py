"""Streaming load generator: time to first token and whole-stream latency.

wrk measures whole responses only; this one reads the answer chunk by chunk
over raw asyncio streams (HTTP/1.1 keep-alive, one connection per worker) and
notes when the first SSE bytes of the body arrive. It runs in its own process,
so its cost is not charged to the proxy being measured.

Run: ``python bench/streamgen.py URL CONCURRENCY SECONDS`` with the JSON body in
``BENCH_BODY``; prints one JSON object: requests, errors, elapsed, and the
samples in microseconds (``ttft_us``, ``total_us``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader, started: float) -> tuple[int, float, bool]:
    """(status, first body bytes time, keep-alive) after the whole body was read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif lname == b"connection" and b"close" in value.lower():
            keep_alive = False
    first = 0.0
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readline()
                break
            await reader.readexactly(size + 2)
            if not first:
                first = time.perf_counter()
    elif length is not None:
        if length:
            await reader.readexactly(length)
        first = time.perf_counter()
    else:
        await reader.read()
        first = time.perf_counter()
        keep_alive = False
    return status, (first or time.perf_counter()) - started, keep_alive


async def _worker(
    host: str, port: int, request: bytes, until: float, out: dict[str, list[int]]
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < until:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        assert reader is not None
        started = time.perf_counter()
        try:
            writer.write(request)
            status, ttft, keep_alive = await _read_response(reader, started)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            out["errors"].append(1)
            writer.close()
            writer = None
            continue
        total = time.perf_counter() - started
        if status != 200:
            out["errors"].append(status)
        else:
            out["ttft_us"].append(int(ttft * 1e6))
            out["total_us"].append(int(total * 1e6))
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def run(url: str, concurrency: int, seconds: float, body: bytes) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Authorization: Bearer sk-bench-7f3a9c2e5b1d4f6a8e0c3b5d7f9a1c3e\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out: dict[str, list[int]] = {"ttft_us": [], "total_us": [], "errors": []}
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_worker(host, port, request, until, out) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(out["total_us"]),
        "errors": len(out["errors"]),
        "elapsed": elapsed,
        "ttft_us": out["ttft_us"],
        "total_us": out["total_us"],
    }


if __name__ == "__main__":
    result = asyncio.run(
        run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), os.environ["BENCH_BODY"].encode())
    )
    print(json.dumps(result))
