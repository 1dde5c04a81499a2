"""The API key as an immutable snapshot that can be swapped while traffic flows.

A call takes :attr:`CredentialStore.current` once, when it starts, and uses
that snapshot for all its attempts: in-flight requests finish with the key
they began with while new requests take the rotated one. Swapping is a
single reference assignment, so readers never see a half-written key.

The store reads a :class:`~.config.SecretRef`: an environment variable (fixed
for the life of the process) or a file (a mounted Secret that kubelet
rotates by swapping its ``..data`` symlink). A missing, empty, whitespace-only,
unreadable or invalid file keeps the previous snapshot: a rotation that is half
done, or a Secret pasted with a stray newline, must never take the key away from
running traffic.

A key is one printable ASCII token of at most :data:`MAX_KEY_LENGTH`
characters once surrounding whitespace is stripped. Anything else (a line
break, CR or NUL inside, internal spaces, non-ASCII, a pasted file) cannot go
into an ``Authorization`` / ``api-key`` header, so taking it would break every
call; it is rejected like an empty file, and only its fingerprint is reported.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import SecretRef
from .errors import CredentialUnavailable

__all__ = [
    "MAX_KEY_LENGTH",
    "CredentialSnapshot",
    "CredentialStore",
    "ReloadOutcome",
    "fingerprint",
    "key_problem",
]

MAX_KEY_LENGTH = 4096
"""Longest key accepted, in characters. Real keys are under 200; anything near
this is a wrong file mounted as the key (a kubeconfig, a certificate bundle)."""


def fingerprint(value: str) -> str:
    """A short, stable, non-reversible name for a key: ``sha256:`` + 12 hex digits."""
    # surrogatepass: a key from the environment may hold undecodable bytes
    # (surrogate escapes); naming it must not raise. Valid text is unaffected.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest[:12]


def key_problem(value: str) -> str | None:
    """Why ``value`` (already stripped) cannot be a key, or ``None`` when it can.

    The reason names the kind of character, never the key or where in it.
    """
    if len(value) > MAX_KEY_LENGTH:
        return f"is {len(value)} characters long (at most {MAX_KEY_LENGTH})"
    if value.isascii() and value.isprintable() and " " not in value:
        return None  # the common case, one pass each: printable ASCII without spaces
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "contains a control character (line break, carriage return, NUL...)"
    if not value.isascii():
        return "contains non-ASCII characters"
    return "contains whitespace"


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
        store._current = store._snapshot(store._checked(value.strip(), source), source)
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
                # newline="": a CR inside the key stays a CR (and its
                # fingerprint that of the bytes written), not a translated LF.
                with open(ref.file, encoding="utf-8", newline="") as handle:
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
        return self._checked(value, ref.describe())

    @staticmethod
    def _checked(value: str, source: str) -> str:
        """``value`` if it can be a key; :class:`CredentialUnavailable` naming its fingerprint."""
        problem = key_problem(value)
        if problem is not None:
            # The fingerprint lets an operator tell which Secret version was
            # refused without the key ever reaching a log or /status.
            raise CredentialUnavailable(
                f"key from {source} ({fingerprint(value)}) {problem}; a key is one printable token"
            )
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
