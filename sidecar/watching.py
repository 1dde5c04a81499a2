"""Following the key and config files as kubelet updates them.

kubelet never rewrites a mounted Secret or ConfigMap file in place: it
renames a new ``..data`` symlink over the old one (see ``fakes/secretvolume.py``).
Watching the inode first opened would miss that, and inotify watches on the
file would follow the old target. So this module polls: every ``interval``
it ``stat``s the path *through* its symlinks and compares (device, inode,
size, mtime) with what it saw last. A swap changes the target inode, a plain
rewrite changes size or mtime; either triggers the callback, which does the
real work (re-read, compare, swap). Polling a couple of files twice a second
costs nothing measurable and behaves the same on every filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["FileWatcher", "file_signature"]

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int] | None


def file_signature(path: str | os.PathLike[str]) -> Signature:
    """What identifies this version of the file, or ``None`` when it is not there."""
    try:
        st = os.stat(path)  # follows ..data and the file's own symlink
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Calls ``on_change`` when the file at ``path`` becomes a different file.

    ``check()`` is the whole logic and can be called directly (tests do, and
    so does the sidecar right after a 401); ``start()`` runs it every
    ``interval`` seconds in a task until ``stop()``.
    """

    def __init__(
        self, path: str | os.PathLike[str], on_change: Callable[[], None], *, interval: float
    ) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.interval = interval
        self._seen = file_signature(self.path)
        self._task: asyncio.Task[None] | None = None
        self.changes = 0

    def check(self) -> bool:
        """Look once; call ``on_change`` if the file changed since the last look."""
        current = file_signature(self.path)
        if current == self._seen:
            return False
        self._seen = current
        self.changes += 1
        try:
            self.on_change()
        except Exception:  # a failing callback must not stop the watching
            log.exception("file change handler failed", extra={"fields": {"path": str(self.path)}})
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"watch {self.path.name}"
            )

    def cancel(self) -> None:
        """Stop the loop without waiting for it (for synchronous callers)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
