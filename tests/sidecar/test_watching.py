"""FileWatcher on real files: kubelet swaps, plain rewrites, removal, failing handlers.

Every test but the last calls ``check()`` by hand, so nothing waits for the
polling interval; the last runs the background loop with a tiny interval and
waits on the callback itself, never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from openai_runtime_sidecar.watching import FileWatcher, file_signature
from tests.support import NEW_KEY, OLD_KEY, SecretVolume


class Calls:
    """A change handler that counts calls and can be told to fail."""

    def __init__(self, fail: int = 0) -> None:
        self.count = 0
        self.fail = fail

    def __call__(self) -> None:
        self.count += 1
        if self.count <= self.fail:
            raise RuntimeError(f"handler failure {self.count}")


def watch(path: Path, handler: Calls) -> FileWatcher:
    # A long interval: these tests drive check() themselves.
    return FileWatcher(path, handler, interval=3600)


def test_signature_follows_symlinks_and_is_none_when_missing(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "secret")
    assert file_signature(volume.path) is None
    volume.write(OLD_KEY)
    target = volume.path.resolve()
    assert volume.path.is_symlink() and target != volume.path
    assert file_signature(volume.path) == file_signature(target)


def test_kubelet_data_swap_is_a_change(secret_dir: SecretVolume) -> None:
    handler = Calls()
    watcher = watch(secret_dir.path, handler)
    link_before = os.readlink(secret_dir.path)

    assert watcher.check() is False, "the file seen at construction is the baseline"
    secret_dir.write(NEW_KEY)
    # The visible path is the same symlink as before; only ..data moved.
    assert os.readlink(secret_dir.path) == link_before
    assert secret_dir.path.read_text().strip() == NEW_KEY

    assert watcher.check() is True
    assert handler.count == 1
    assert watcher.check() is False, "one swap, one call"
    assert handler.count == 1

    secret_dir.write(OLD_KEY)
    assert watcher.check() is True
    assert (handler.count, watcher.changes) == (2, 2)


def test_plain_rewrite_of_the_same_path_is_a_change(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text(OLD_KEY + "\n")
    handler = Calls()
    watcher = watch(key, handler)
    inode = key.stat().st_ino

    key.write_text(NEW_KEY)  # in place: same inode, different size
    assert key.stat().st_ino == inode
    assert watcher.check() is True
    assert handler.count == 1

    # Same size and same inode: the modification time alone tells. Set it
    # explicitly so the test does not depend on the filesystem's clock tick.
    stat = key.stat()
    key.write_text(OLD_KEY)
    os.utime(key, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert key.stat().st_ino == inode and key.stat().st_size == stat.st_size
    assert watcher.check() is True
    assert handler.count == 2
    assert watcher.check() is False


def test_unchanged_file_is_not_a_change(secret_dir: SecretVolume) -> None:
    handler = Calls()
    watcher = watch(secret_dir.path, handler)
    for _ in range(5):
        assert watcher.check() is False
    secret_dir.path.read_text()  # reading (atime) is not a change either
    assert watcher.check() is False
    assert (handler.count, watcher.changes) == (0, 0)


def test_removal_and_reappearance_are_changes(secret_dir: SecretVolume) -> None:
    handler = Calls()
    watcher = watch(secret_dir.path, handler)

    secret_dir.path.unlink()  # the visible symlink goes away
    assert watcher.check() is True
    assert handler.count == 1
    assert watcher.check() is False, "still missing is not another change"

    secret_dir.write(NEW_KEY)  # kubelet puts it back
    assert watcher.check() is True
    assert handler.count == 2
    assert watcher.check() is False


def test_a_file_that_did_not_exist_at_start_appearing_is_a_change(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "later")
    handler = Calls()
    watcher = watch(volume.path, handler)
    assert watcher.check() is False
    volume.write(OLD_KEY)
    assert watcher.check() is True
    assert handler.count == 1


def test_a_failing_handler_does_not_stop_later_checks(
    secret_dir: SecretVolume, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Calls(fail=1)
    watcher = watch(secret_dir.path, handler)

    secret_dir.write(NEW_KEY)
    with caplog.at_level(logging.ERROR, logger="openai_runtime_sidecar.watching"):
        assert watcher.check() is True  # the exception is swallowed and logged
    assert handler.count == 1
    assert any("handler failed" in record.getMessage() for record in caplog.records)

    assert watcher.check() is False, "the failed change is not retried forever"
    secret_dir.write(OLD_KEY)
    assert watcher.check() is True
    assert (handler.count, watcher.changes) == (2, 2)


async def test_the_background_loop_calls_the_handler(secret_dir: SecretVolume) -> None:
    changed = asyncio.Event()
    watcher = FileWatcher(secret_dir.path, changed.set, interval=0.005)
    watcher.start()
    watcher.start()  # idempotent: still one task
    try:
        secret_dir.write(NEW_KEY)
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert watcher.changes == 1

        changed.clear()
        secret_dir.path.unlink()
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert watcher.changes == 2
    finally:
        await watcher.stop()
    await watcher.stop()  # stopping twice is harmless

    # Stopped, the watcher still works when asked directly.
    secret_dir.write(OLD_KEY)
    assert watcher.check() is True
    assert watcher.changes == 3


async def test_cancel_stops_the_loop_from_synchronous_code(secret_dir: SecretVolume) -> None:
    watcher = FileWatcher(secret_dir.path, Calls(), interval=0.005)
    watcher.start()
    task = watcher._task
    assert task is not None
    watcher.cancel()  # what the sidecar does when a reload replaces a key watcher
    assert watcher._task is None
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
    assert task.cancelled()
    watcher.cancel()  # a second cancel is harmless
    await watcher.stop()
