"""kopf in-process on the caller's event loop, for the operator tests and the webhook benchmark.

kopf runs as a task beside the test (or benchmark) against the Kubernetes
emulator. Two of its habits need care: it cancels every task spawned while it
ran that it does not own ("hung" tasks), which would include the caller's own
teardown and the emulator's request handlers, so those are declared ignored
when it stops; and its admission server only listens once kopf has discovered
its resources, so :meth:`InProcessKopf.wait_listening` waits for the port.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

__all__ = ["InProcessKopf"]


class InProcessKopf:
    """Start kopf with a registry and settings; stop it, leaving others' tasks alone.

    kopf leaves alone the tasks alive when this object is created and, at
    :meth:`close`, the closing task and the emulator's request handlers.
    """

    def __init__(self) -> None:
        self.stop_flag = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._ignored: set[asyncio.Task[Any]] = set(asyncio.all_tasks())

    async def start(self, registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings) -> None:
        tasks = await kopf.spawn_tasks(
            registry=registry,
            settings=settings,
            clusterwide=True,
            standalone=True,
            stop_flag=self.stop_flag,
        )
        self.task = asyncio.create_task(kopf.run_tasks(tasks, ignored=self._ignored))

    async def wait_listening(self, port: int, *, within: float = 5.0) -> None:
        """Until something accepts on ``127.0.0.1:port`` (kopf's webhook server)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline or self.task is None or self.task.done():
                    raise AssertionError("the webhook server did not start") from None
                await asyncio.sleep(0.02)
            else:
                writer.close()
                await writer.wait_closed()
                return

    async def close(self) -> None:
        # Not kopf's to cancel: this teardown and the emulator's connection handlers.
        self._ignored.update(
            t
            for t in asyncio.all_tasks()
            if t is asyncio.current_task()
            or getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
        )
        self.stop_flag.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=10)
