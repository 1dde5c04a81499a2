"""A Secret updated with something that is not a key never replaces the key in use.

A key with a line break, CR or NUL inside cannot go into an ``Authorization``
header: taken as the key it broke every call (a 500 from the HTTP layer, not
OpenAI's shape). Each bad version is written the kubelet way onto a running
sidecar, and refused like an empty file: calls keep the key they had, the
refusal shows in ``/status`` and ``/metrics`` with a fingerprint but never the
key, and the next good version is taken as usual. Reloads are awaited through
the credential store's own listener, never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from openai_runtime_sidecar.runner.credentials import ReloadOutcome, fingerprint
from tests.support import NEW_KEY, OLD_KEY, SecretVolume

from .harness import NEW_FP, OLD_FP, Rig, assert_openai_error, running

BAD_KEYS = {
    "line feed": "sk-a\nsk-b",
    "carriage return": "sk-a\rb",
    "NUL": "sk-a\x00b",
    "10 KiB": "sk-" + "k" * (10 * 1024),
    "internal spaces": "sk a b",
    "tab": "sk-a\tb",
    "non-ASCII": "sk-a\u00e9b",
}
"""Each bad key, as an operator might paste it into the Secret."""

REASONS = {
    "line feed": "control character",
    "carriage return": "control character",
    "NUL": "control character",
    "10 KiB": "characters long",
    "internal spaces": "whitespace",
    "tab": "control character",
    "non-ASCII": "non-ASCII",
}

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Reloads:
    """Every reload outcome of the sidecar's credential store, awaitable."""

    def __init__(self, rig: Rig) -> None:
        self.seen: list[ReloadOutcome] = []
        self._changed = asyncio.Event()
        rig.sidecar.credentials.subscribe(self._record)

    def _record(self, outcome: ReloadOutcome) -> None:
        self.seen.append(outcome)
        self._changed.set()

    async def next(self, within: float = 10.0) -> ReloadOutcome:
        """The first reload after this call (the watcher polls every 20 ms)."""
        count = len(self.seen)
        try:
            async with asyncio.timeout(within):
                while len(self.seen) == count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no key reload within {within}s") from None
        return self.seen[count]


async def failed_reloads(rig: Rig) -> float:
    """``openai_runtime_credential_reloads_total{result="failed"}`` as /metrics shows it."""
    async with rig.http.get(rig.sidecar.admin_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != "openai_runtime_credential_reloads_total":
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        if labels.get("result") == "failed" and labels.get("runtime") == "team-a/chat":
            total += float(match["value"])
    return total


async def served_with(rig: Rig, expected_fp: str, content: str) -> None:
    """A call succeeds, and upstream saw it carry the key ``expected_fp``."""
    answer = await rig.chat(content)
    assert answer.status == 200, answer.raw[:300]
    assert answer.text == f"Echo: {content}"
    assert rig.upstream.requests[-1].key_fingerprint == expected_fp


def assert_no_key_text(document: Any, bad: str) -> None:
    text = str(document)
    for key in (bad, bad.strip(), OLD_KEY, NEW_KEY, "sk-a", "sk a"):
        assert key not in text, f"key text {key!r} leaked"


@pytest.mark.parametrize("name", list(BAD_KEYS), ids=list(BAD_KEYS))
async def test_a_bad_key_keeps_the_good_one_until_a_good_one_comes(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = BAD_KEYS[name]
    caplog.set_level(logging.INFO, logger="openai_runtime")
    async with running(tmp_path) as rig:
        reloads = Reloads(rig)
        await served_with(rig, OLD_FP, "before")
        failed_before = await failed_reloads(rig)

        rig.volume.write(bad)
        outcome = await reloads.next()
        assert outcome.error is not None and not outcome.changed
        assert outcome.snapshot is not None and outcome.snapshot.fingerprint == OLD_FP
        # The refusal names the bad version by fingerprint, so an operator can
        # tell which Secret version it was without the key being shown.
        assert fingerprint(bad) in outcome.error
        assert REASONS[name] in outcome.error

        await served_with(rig, OLD_FP, "during")
        document = await rig.status()
        credential = document["credential"]
        assert credential["fingerprint"] == OLD_FP
        assert credential["lastError"] == outcome.error
        assert document["ready"] is True, "a key in hand is enough to stay ready"
        assert_no_key_text(document, bad)
        assert await failed_reloads(rig) == failed_before + 1

        rig.volume.write(NEW_KEY)
        outcome = await reloads.next()
        assert outcome.changed and outcome.error is None
        await served_with(rig, NEW_FP, "after")
        assert (await rig.status())["credential"]["lastError"] is None

    assert {r.outcome for r in rig.upstream.requests} == {"ok"}
    refusals = [r for r in caplog.records if r.getMessage().startswith("API key not reloaded")]
    assert len(refusals) == 1
    fields = getattr(refusals[0], "fields", {})
    assert fields["fingerprint"] == OLD_FP, "the log says which key stays"
    assert fingerprint(bad) in fields["reason"]
    for record in caplog.records:
        assert_no_key_text((record.getMessage(), getattr(record, "fields", None)), bad)


async def test_bad_keys_one_after_another_never_dislodge_the_key(tmp_path: Path) -> None:
    """Every bad version in a row on the same sidecar: one failed reload each."""
    async with running(tmp_path) as rig:
        reloads = Reloads(rig)
        failed = await failed_reloads(rig)
        for name, bad in BAD_KEYS.items():
            rig.volume.write(bad)
            outcome = await reloads.next()
            assert outcome.error is not None, name
            await served_with(rig, OLD_FP, name)
            failed += 1
            assert await failed_reloads(rig) == failed, name
            assert (await rig.status())["credential"]["lastError"] == outcome.error
        assert rig.sidecar.credentials.rotations == 0
        rig.volume.write(NEW_KEY)
        assert (await reloads.next()).changed
        await served_with(rig, NEW_FP, "good again")
        assert rig.sidecar.credentials.rotations == 1


async def test_a_bad_key_at_start_up_leaves_the_sidecar_without_one(tmp_path: Path) -> None:
    """As a missing key does: unready, 503 credential_unavailable, until a good one comes."""
    volume = SecretVolume(tmp_path / "bad-secret")
    volume.write(BAD_KEYS["line feed"])
    async with running(tmp_path, apiKey={"file": str(volume.path)}) as rig:
        reloads = Reloads(rig)
        answer = await rig.chat("no key")
        assert answer.status == 503, answer.raw[:300]
        assert_openai_error(answer.json, "credential_unavailable")
        assert rig.upstream.requests == [], "nothing is sent without a key"
        document = await rig.status()
        assert document["ready"] is False
        assert document["credential"]["fingerprint"] is None
        assert fingerprint(BAD_KEYS["line feed"]) in document["credential"]["lastError"]
        assert_no_key_text(document, BAD_KEYS["line feed"])
        async with rig.http.get(rig.sidecar.admin_url + "/readyz") as response:
            assert response.status == 503

        volume.write(OLD_KEY)
        assert (await reloads.next()).changed
        await served_with(rig, OLD_FP, "key arrived")
        assert (await rig.status())["ready"] is True
