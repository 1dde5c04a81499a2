"""Tests for the rotating API key store (openai_runtime_sidecar.runner.credentials)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from openai_runtime_sidecar.runner.config import SecretRef
from openai_runtime_sidecar.runner.credentials import (
    MAX_KEY_LENGTH,
    CredentialSnapshot,
    CredentialStore,
    ReloadOutcome,
    fingerprint,
    key_problem,
)
from openai_runtime_sidecar.runner.errors import CredentialUnavailable

KEY_A = "sk-proj-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
KEY_B = "sk-proj-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def file_store(path: Path) -> CredentialStore:
    return CredentialStore(SecretRef(file=str(path)), wall_clock=FakeClock())


def test_fingerprint_format() -> None:
    fp = fingerprint(KEY_A)
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", fp)
    assert fp == "sha256:" + hashlib.sha256(KEY_A.encode()).hexdigest()[:12]
    assert fingerprint(KEY_A) == fp
    assert fingerprint(KEY_B) != fp
    assert KEY_A not in fp


def test_env_source() -> None:
    store = CredentialStore(
        SecretRef(env="OPENAI_API_KEY"),
        environ={"OPENAI_API_KEY": f"  {KEY_A}\n"},
        wall_clock=lambda: 123.0,
    )
    before = store.current
    snapshot = store.load()
    assert before is None
    assert snapshot.value == KEY_A
    assert snapshot.fingerprint == fingerprint(KEY_A)
    assert snapshot.source == "env:OPENAI_API_KEY"
    assert snapshot.loaded_at == 123.0
    assert store.current is snapshot
    assert store.require() is snapshot
    assert store.rotations == 0


def test_env_source_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_RUNTIME_TEST_KEY", KEY_B)
    store = CredentialStore(SecretRef(env="OPENAI_RUNTIME_TEST_KEY"))
    assert store.load().value == KEY_B


def test_env_missing_raises_on_load() -> None:
    store = CredentialStore(SecretRef(env="OPENAI_API_KEY"), environ={})
    with pytest.raises(CredentialUnavailable, match="OPENAI_API_KEY is not set"):
        store.load()
    assert store.current is None
    with pytest.raises(CredentialUnavailable, match="env:OPENAI_API_KEY"):
        store.require()


def test_env_empty_raises_on_load() -> None:
    store = CredentialStore(SecretRef(env="K"), environ={"K": "  \n"})
    with pytest.raises(CredentialUnavailable, match="empty"):
        store.load()


def test_file_source_strips_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A + "\n")
    snapshot = file_store(path).load()
    assert snapshot.value == KEY_A
    assert snapshot.source == f"file:{path}"
    assert snapshot.fingerprint == fingerprint(KEY_A)


def test_reload_after_change_swaps_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    first = store.load()

    path.write_text(KEY_B + "\n")
    outcome = store.reload()
    assert outcome.changed is True
    assert outcome.error is None
    assert outcome.previous is first
    assert outcome.snapshot is store.current
    assert store.current is not None
    assert store.current.value == KEY_B
    assert store.current.loaded_at > first.loaded_at
    assert store.rotations == 1
    # The old snapshot is untouched: in-flight calls keep using it.
    assert first.value == KEY_A

    path.write_text(KEY_A)
    assert store.reload().changed is True
    assert store.rotations == 2


def test_first_reload_is_a_change_but_not_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    outcome = store.reload()
    assert outcome.changed is True
    assert outcome.previous is None
    assert store.rotations == 0


def test_unchanged_key_keeps_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    first = store.load()
    path.write_text(KEY_A + "\n\n")  # whitespace differences are not a rotation
    outcome = store.reload()
    assert outcome == ReloadOutcome(False, first, first)
    assert store.current is first
    assert store.rotations == 0


def _make_missing(path: Path) -> None:
    path.unlink()


def _make_empty(path: Path) -> None:
    path.write_text("")


def _make_blank(path: Path) -> None:
    path.write_text(" \n\t\n")


def _make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_invalid_utf8(path: Path) -> None:
    path.write_bytes(b"sk-\xff\xfe" + KEY_B.encode())


def _writer(value: str) -> Callable[[Path], None]:
    # newline="": the bytes of ``value`` exactly, CR included.
    return lambda path: path.write_text(value + "\n", encoding="utf-8", newline="")


BREAKERS = {
    "line-feed-inside": (_writer("sk-a\nsk-b"), "control character"),
    "carriage-return-inside": (_writer("sk-a\rb"), "control character"),
    "nul-inside": (_writer("sk-a\x00b"), "control character"),
    "tab-inside": (_writer("sk-a\tb"), "control character"),
    "space-inside": (_writer("sk a b"), "whitespace"),
    "non-ascii": (_writer("sk-\u00e9" + KEY_B), "non-ASCII"),
    "too-long": (_writer("sk-" + "x" * 10240), "at most 4096"),
    "missing": (_make_missing, "does not exist"),
    "empty": (_make_empty, "is empty"),
    "whitespace-only": (_make_blank, "is empty"),
    "directory": (_make_directory, "unreadable (IsADirectoryError)"),
    "invalid-utf8": (_make_invalid_utf8, "unreadable (UnicodeDecodeError)"),
}


@pytest.mark.parametrize("breaker", list(BREAKERS), ids=list(BREAKERS))
def test_bad_file_keeps_the_previous_snapshot(tmp_path: Path, breaker: str) -> None:
    make_bad, message = BREAKERS[breaker]
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    first = store.load()

    make_bad(path)
    outcome = store.reload()
    assert outcome.changed is False
    assert outcome.snapshot is first
    assert outcome.previous is first
    assert outcome.error is not None
    assert message in outcome.error
    assert str(path) in outcome.error
    assert KEY_A not in outcome.error
    assert KEY_B not in outcome.error
    assert store.current is first
    assert store.require() is first
    assert store.rotations == 0
    # Once the file is good again the store recovers.
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    path.write_text(KEY_B)
    assert store.reload().changed is True
    assert store.rotations == 1


@pytest.mark.parametrize("breaker", list(BREAKERS), ids=list(BREAKERS))
def test_load_raises_on_first_failure(tmp_path: Path, breaker: str) -> None:
    make_bad, message = BREAKERS[breaker]
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    make_bad(path)
    store = file_store(path)
    with pytest.raises(CredentialUnavailable) as info:
        store.load()
    assert message in str(info.value)
    assert KEY_A not in str(info.value)
    assert KEY_B not in str(info.value)
    assert info.value.http_status() == 503
    assert store.current is None


def test_load_after_a_good_load_returns_the_kept_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    first = store.load()
    path.unlink()
    assert store.load() is first


def test_snapshot_repr_and_str_hide_the_key() -> None:
    snapshot = CredentialSnapshot(KEY_A, fingerprint(KEY_A), 1.0, "env:OPENAI_API_KEY")
    for text in (repr(snapshot), str(snapshot), f"{snapshot}", f"{snapshot!r}"):
        assert KEY_A not in text
        assert fingerprint(KEY_A) in text
    assert str(snapshot) == f"credential {fingerprint(KEY_A)} from env:OPENAI_API_KEY"
    outcome = ReloadOutcome(True, snapshot, None)
    assert KEY_A not in repr(outcome)


def _kubelet_publish(directory: Path, key: str, stamp: str) -> None:
    """Write ``key`` the way kubelet's AtomicWriter updates a Secret volume."""
    data_dir = directory / f"..{stamp}"
    data_dir.mkdir()
    (data_dir / "api-key").write_text(key)
    tmp_link = directory / "..data_tmp"
    os.symlink(data_dir.name, tmp_link)
    os.replace(tmp_link, directory / "..data")
    user_link = directory / "api-key"
    if not user_link.is_symlink():
        os.symlink("..data/api-key", user_link)


def test_kubelet_atomic_swap_is_picked_up(tmp_path: Path) -> None:
    volume = tmp_path / "secret"
    volume.mkdir()
    _kubelet_publish(volume, KEY_A + "\n", "2024_01_01_00_00_00.000000001")
    path = volume / "api-key"
    store = file_store(path)
    assert store.load().value == KEY_A
    assert os.readlink(volume / "..data") == "..2024_01_01_00_00_00.000000001"

    _kubelet_publish(volume, KEY_B + "\n", "2024_01_02_00_00_00.000000002")
    assert os.readlink(volume / "..data") == "..2024_01_02_00_00_00.000000002"
    outcome = store.reload()
    assert outcome.changed is True
    assert outcome.snapshot is not None
    assert outcome.snapshot.value == KEY_B
    assert outcome.snapshot.source == f"file:{path}"
    assert store.rotations == 1

    # kubelet then removes the old timestamped directory; nothing changes.
    old = volume / "..2024_01_01_00_00_00.000000001"
    (old / "api-key").unlink()
    old.rmdir()
    assert store.reload().changed is False


def test_listeners_receive_every_outcome(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    seen: list[ReloadOutcome] = []
    also: list[ReloadOutcome] = []
    store.subscribe(seen.append)
    store.subscribe(also.append)

    store.load()
    store.reload()
    path.write_text(KEY_B)
    store.reload()
    path.unlink()
    store.reload()

    assert [o.changed for o in seen] == [True, False, True, False]
    assert [o.error is None for o in seen] == [True, True, True, False]
    assert seen[2].snapshot is not None
    assert seen[2].snapshot.value == KEY_B
    assert also == seen


def test_listener_called_when_first_load_fails() -> None:
    store = CredentialStore(SecretRef(env="MISSING"), environ={})
    seen: list[ReloadOutcome] = []
    store.subscribe(seen.append)
    with pytest.raises(CredentialUnavailable):
        store.load()
    assert len(seen) == 1
    assert seen[0].snapshot is None
    assert seen[0].error == "environment variable MISSING is not set"


def test_from_value() -> None:
    store = CredentialStore.from_value(f" {KEY_A}\n")
    snapshot = store.require()
    assert snapshot.value == KEY_A
    assert snapshot.source == "inline"
    assert snapshot.fingerprint == fingerprint(KEY_A)
    assert CredentialStore.from_value(KEY_B, source="test").require().source == "test"
    # Nothing to reload from: the fixed key stays.
    outcome = store.reload()
    assert outcome.changed is False
    assert outcome.error is not None
    assert store.require() is snapshot


@pytest.mark.parametrize(
    "value",
    [KEY_A, "k", "x" * MAX_KEY_LENGTH, "sk-proj-Ab_9.-~+/="],
    ids=["key", "one-char", "longest", "punctuation"],
)
def test_printable_tokens_are_keys(value: str) -> None:
    assert key_problem(value) is None
    assert CredentialStore.from_value(value).require().value == value


def test_a_bad_key_is_named_by_fingerprint_only(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text(KEY_A)
    store = file_store(path)
    store.load()
    bad = f"{KEY_B}\n{KEY_A}"
    path.write_text(bad + "\n")
    error = store.reload().error
    assert error is not None
    assert fingerprint(bad) in error, "which version was refused"
    assert KEY_A not in error and KEY_B not in error


def test_a_bad_env_key_is_refused_like_a_missing_one() -> None:
    store = CredentialStore(SecretRef(env="OPENAI_API_KEY"), environ={"OPENAI_API_KEY": "sk a"})
    with pytest.raises(CredentialUnavailable, match=r"env:OPENAI_API_KEY .* whitespace"):
        store.load()
    assert store.current is None


def test_from_value_refuses_a_bad_key() -> None:
    with pytest.raises(CredentialUnavailable, match="control character"):
        CredentialStore.from_value("sk-a\x00b")


def test_an_undecodable_env_key_is_refused_not_a_crash() -> None:
    # os.environ holds bytes that are not UTF-8 as surrogate escapes.
    store = CredentialStore(SecretRef(env="K"), environ={"K": "sk-\udcff"})
    outcome = store.reload()
    assert outcome.snapshot is None
    assert outcome.error is not None and "non-ASCII" in outcome.error
