"""Helpers shared by tests: test keys, a Secret volume written the kubelet way, JSON patches,
an aiohttp app served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from openai_runtime_sidecar.fakes.secretvolume import SecretVolume

OLD_KEY = "sk-test-old-0000000000000000"
NEW_KEY = "sk-test-new-1111111111111111"


__all__ = [
    "NEW_KEY",
    "OLD_KEY",
    "SecretVolume",
    "apply_patch",
    "free_port",
    "on_loopback",
    "points",
    "unaccepting_port",
    "until",
]


@contextlib.asynccontextmanager
async def on_loopback(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port, as its base URL (``http://127.0.0.1:PORT``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader holds, by metric name."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A minimal RFC 6902 applier (add, remove, replace) for the ops kopf emits."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            doc = copy.deepcopy(op["value"])
            continue
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            else:
                raise AssertionError(f"unexpected op {op}")
        elif kind in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise AssertionError(f"unexpected op {op}")
    return doc


def free_port() -> int:
    """A loopback port free a moment ago (another process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(predicate: Callable[[], object]) -> None:
    """Let the loop run (no wall-clock sleep) until ``predicate()`` holds."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose connects hang: the connect phase, with no real network.

    A listener with a full accept queue drops new SYNs, so connecting to it
    neither succeeds nor fails until the client gives up.
    """
    server = socket.socket()
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        for _ in range(4):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in [*fillers, server]:
            sock.close()
