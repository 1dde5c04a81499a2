"""A Secret volume written the way kubelet writes it, for demos and tests.

kubelet's AtomicWriter never rewrites a projected file in place: each
version goes into a new timestamped directory, ``..data`` is a symlink to the
current one, and every visible file (``api-key``) is a symlink through
``..data``. An update renames a fresh ``..data`` link over the old one, so a
reader sees the old key or the new key, never a mix. The sidecar's key
watcher has to notice exactly this kind of swap; this class performs it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["SecretVolume"]


class SecretVolume:
    """A directory holding one Secret key, updated atomically like kubelet does."""

    def __init__(self, root: str | os.PathLike[str], key: str = "api-key") -> None:
        self.root = Path(root)
        self.key = key
        self.generation = 0
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        """The file a pod reads: ``<root>/<key>``."""
        return self.root / self.key

    def write(self, value: str) -> None:
        """Publish a new version of the key with one atomic rename."""
        self.generation += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        version = self.root / f"..{stamp}.{os.getpid()}{self.generation:06d}"
        version.mkdir()
        (version / self.key).write_text(value + "\n", encoding="utf-8")
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(version.name, tmp)
        os.replace(tmp, data_link)
        if not self.path.is_symlink():
            os.symlink(f"..data/{self.key}", self.path)
        if old is not None:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()
