"""The API key as an immutable snapshot that can be swapped while traffic flows.

A call takes :attr:`CredentialStore.current` once, when it starts, and uses
that snapshot for all its attempts: in-flight requests finish with the key
they began with while new requests take the rotated one. Swapping is a
single reference assignment, so readers never see a half-written key.

The store reads a :class:`~.config.SecretRef`: an environment variable (fixed
for the life of the process) or a file (a mounted Secret that kubelet
rotates by swapping its ``..data`` symlink). A missing, empty, whitespace-only
or unreadable file keeps the previous snapshot: a rotation that is half done
must never take the key away from running traffic.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import SecretRef
from .errors import CredentialUnavailable

__all__ = ["CredentialSnapshot", "CredentialStore", "ReloadOutcome", "fingerprint"]


def fingerprint(value: str) -> str:
    """A short, stable, non-reversible name for a key: ``sha256:`` + 12 hex digits."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class CredentialSnapshot:
    """One version of the key. ``repr`` and ``str`` never show the value."""

    value: str = field(repr=False)
    fingerprint: str
    loaded_at: float
    """Wall-clock seconds since the epoch when this version was read."""
    source: str
    """Where it was read from (``env:NAME`` / ``file:PATH``)."""

    def __str__(self) -> str:
        return f"credential {self.fingerprint} from {self.source}"


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload found: a new key, the same key, or a problem (old key kept)."""

    changed: bool
    snapshot: CredentialSnapshot | None
    previous: CredentialSnapshot | None
    error: str | None = None


class CredentialStore:
    """Holds the current :class:`CredentialSnapshot` and replaces it on reload."""

    def __init__(
        self,
        ref: SecretRef,
        *,
        environ: Mapping[str, str] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ref = ref
        self._environ = environ if environ is not None else os.environ
        self._wall_clock = wall_clock
        self._current: CredentialSnapshot | None = None
        self.rotations = 0
        """How many times the key changed after the first load."""
        self._listeners: list[Callable[[ReloadOutcome], None]] = []

    @classmethod
    def from_value(cls, value: str, *, source: str = "inline") -> CredentialStore:
        """A store holding a fixed key (tools and tests; nothing to reload)."""
        store = cls(SecretRef(env="__unused__"), environ={})
        store._current = store._snapshot(value.strip(), source)
        return store

    @property
    def current(self) -> CredentialSnapshot | None:
        return self._current

    def require(self) -> CredentialSnapshot:
        """The current snapshot, or :class:`CredentialUnavailable` when there is none."""
        snapshot = self._current
        if snapshot is None:
            raise CredentialUnavailable(f"no API key loaded from {self.ref.describe()}")
        return snapshot

    def subscribe(self, listener: Callable[[ReloadOutcome], None]) -> None:
        """Call ``listener`` after every reload (metrics, logs)."""
        self._listeners.append(listener)

    def _snapshot(self, value: str, source: str) -> CredentialSnapshot:
        return CredentialSnapshot(value, fingerprint(value), self._wall_clock(), source)

    def _read(self) -> str:
        ref = self.ref
        if ref.env is not None:
            raw = self._environ.get(ref.env)
            if raw is None:
                raise CredentialUnavailable(f"environment variable {ref.env} is not set")
        else:
            assert ref.file is not None
            try:
                with open(ref.file, encoding="utf-8") as handle:
                    raw = handle.read()
            except FileNotFoundError as exc:
                raise CredentialUnavailable(f"key file {ref.file} does not exist") from exc
            except (OSError, UnicodeDecodeError) as exc:
                reason = type(exc).__name__
                raise CredentialUnavailable(
                    f"key file {ref.file} is unreadable ({reason})"
                ) from exc
        value = raw.strip()
        if not value:
            raise CredentialUnavailable(f"key from {ref.describe()} is empty")
        return value

    def reload(self) -> ReloadOutcome:
        """Read the key again; swap the snapshot when it changed, keep it otherwise.

        Never raises for a bad source: the problem is in the outcome's ``error``
        and the previous snapshot stays in place.
        """
        previous = self._current
        try:
            value = self._read()
        except CredentialUnavailable as exc:
            outcome = ReloadOutcome(False, previous, previous, error=exc.message)
        else:
            if previous is not None and previous.value == value:
                outcome = ReloadOutcome(False, previous, previous)
            else:
                snapshot = self._snapshot(value, self.ref.describe())
                self._current = snapshot
                if previous is not None:
                    self.rotations += 1
                outcome = ReloadOutcome(True, snapshot, previous)
        for listener in self._listeners:
            listener(outcome)
        return outcome

    def load(self) -> CredentialSnapshot:
        """The first read: unlike :meth:`reload`, a bad source is an error here."""
        outcome = self.reload()
        if outcome.snapshot is None:
            raise CredentialUnavailable(outcome.error or f"no key from {self.ref.describe()}")
        return outcome.snapshot
